"""Rich tables for scores: per task, per skill, overall, and what was not scored."""

from __future__ import annotations

import polars as pl
from rich.console import Console
from rich.table import Table

from evaluator.scoring.aggregate import Scores


def print_scores(scores: Scores, console: Console, model: str = "", errors: pl.DataFrame | None = None) -> None:
    """Per task, per skill and overall; `errors` (skill, task, metric, n, errors, score) adds an errors column
    and lists tasks whose every request failed."""
    tasks = scores.tasks.filter(pl.col("model") == model) if errors is None else errors
    table = Table(title="Shopping MMLU scores" + (f": {model}" if model else ""), show_lines=False)
    columns = [("skill", "left"), ("task", "left"), ("metric", "left"), ("n", "right"), ("score", "right")]
    for column, justify in columns + ([("errors", "right")] if errors is not None else []):
        table.add_column(column, justify=justify)
    for row in tasks.iter_rows(named=True):
        cells = [row["skill"], row["task"], row["metric"], str(row["n"]),
                 "-" if row["score"] is None else f"{row['score']:.4f}"]
        table.add_row(*cells, *([str(row["errors"])] if errors is not None else []))
    skills = scores.skills.filter(pl.col("model") == model)
    if skills.height:
        table.add_section()
    for row in skills.iter_rows(named=True):
        table.add_row(f"[bold]{row['skill']}[/]", f"{row['tasks']} tasks", "mean of tasks", str(row["n"]),
                      f"[bold]{row['score']:.4f}[/]")
    overall = scores.overall.filter(pl.col("model") == model)
    for row in overall.iter_rows(named=True):
        table.add_section()
        table.add_row("[bold]overall[/]", f"{row['skills']} skills", "mean of skills", str(row["n"]),
                      f"[bold]{row['score']:.4f}[/]")
    console.print(table)
    print_unscored(scores, console, model)


def print_unscored(scores: Scores, console: Console, model: str = "") -> None:
    unscored = scores.unscored.filter(pl.col("model") == model)
    for row in unscored.iter_rows(named=True):
        console.print(f"[yellow]not scored:[/] {row['n']} question(s) of {row['task']} ({row['metric']}): "
                      f"{row['reason']}")
