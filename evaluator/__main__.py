"""`python -m evaluator` is the `shopping-mmlu` command."""

from evaluator.cli import main

main()
