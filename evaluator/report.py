"""Rich tables for scores: per task, per skill, overall, and what was not scored."""

from __future__ import annotations

import polars as pl
from rich.console import Console
from rich.table import Table

from evaluator.scoring.aggregate import Scores


def print_scores(scores: Scores, console: Console, model: str = "") -> None:
    tasks = scores.tasks.filter(pl.col("model") == model)
    table = Table(title="Shopping MMLU scores" + (f": {model}" if model else ""), show_lines=False)
    for column, justify in (("skill", "left"), ("task", "left"), ("metric", "left"), ("n", "right"),
                            ("score", "right")):
        table.add_column(column, justify=justify)
    for row in tasks.iter_rows(named=True):
        table.add_row(row["skill"], row["task"], row["metric"], str(row["n"]), f"{row['score']:.4f}")
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
