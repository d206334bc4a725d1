"""Prompt templates of the official Shopping MMLU scripts, byte for byte (see README.md beside them)."""
