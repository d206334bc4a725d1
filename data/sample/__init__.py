"""Our own small Shopping MMLU-style sample set (skill-file format), shipped as package data."""
