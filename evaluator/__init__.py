"""Shopping MMLU evaluator: load the benchmark, render the official prompts, score exactly as the official code."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`load_results` and `rescore` (evaluator.notebook), imported when first asked for: the command line
    does not pay for them."""
    if name in ("load_results", "rescore"):
        from evaluator import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'evaluator' has no attribute {name!r}")
