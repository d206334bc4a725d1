"""Shopping MMLU evaluator: load the benchmark, render the official prompts, score exactly as the official code."""

__version__ = "0.1.0"
