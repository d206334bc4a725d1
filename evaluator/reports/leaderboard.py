"""The leaderboard: every model's latest scores from the cache, per skill and overall, best first."""

from __future__ import annotations

import json
import os

import polars as pl
from rich.console import Console
from rich.table import Table

KEYS = ["model", "data", "protocol", "rendering"]


def leaderboard(scores: pl.DataFrame, prices: dict[str, tuple[float, float]] | None = None) -> pl.DataFrame:
    """One row per (model, data, protocol, rendering): overall, one column per skill, questions, errors,
    tokens, and the cost where `prices` (USD per million input, output tokens) names the model."""
    if scores.is_empty():
        return pl.DataFrame(schema={"model": pl.String, "overall": pl.Float64})
    skills = (scores.filter(pl.col("n") > 0)
              .group_by(*KEYS, "skill").agg(score=pl.col("score").mean()))
    wide = skills.pivot(on="skill", index=KEYS, values="score", sort_columns=True)
    skill_columns = [c for c in wide.columns if c not in KEYS]
    totals = scores.group_by(KEYS).agg(
        questions=(pl.col("n") + pl.col("errors")).sum(), errors=pl.col("errors").sum(),
        prompt_tokens=pl.col("prompt_tokens").sum(), completion_tokens=pl.col("completion_tokens").sum())
    prices = prices or {}
    price_in = pl.col("model").replace_strict({m: p[0] for m, p in prices.items()}, default=None,
                                              return_dtype=pl.Float64)
    price_out = pl.col("model").replace_strict({m: p[1] for m, p in prices.items()}, default=None,
                                               return_dtype=pl.Float64)
    return (wide.with_columns(overall=pl.mean_horizontal(skill_columns))
            .join(totals, on=KEYS)
            .with_columns(cost=(pl.col("prompt_tokens") * price_in + pl.col("completion_tokens") * price_out) / 1e6)
            .select(*KEYS, "overall", *skill_columns, "questions", "errors", "prompt_tokens", "completion_tokens",
                    "cost")
            .sort("overall", descending=True, nulls_last=True))


def render(board: pl.DataFrame, fmt: str, console: Console) -> None:
    if fmt == "json":
        print(json.dumps(board.to_dicts(), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        print(board.write_csv(), end="")
    elif fmt == "md":
        columns = board.columns
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join(" --- " for _ in columns) + "|")
        for row in board.iter_rows():
            print("| " + " | ".join(_cell(v) for v in row) + " |")
    else:
        console.print(_terminal_table(board))


def _terminal_table(board: pl.DataFrame) -> Table:
    """Narrow enough for a terminal: data, protocol and rendering in one column, token counts left out, and
    the skills' common prefix (e.g. 'amazon-kdd-cup-24-') dropped from their headers."""
    table = Table(title="Shopping MMLU leaderboard")
    skills = [c for c in board.columns if c not in (*KEYS, "overall", "questions", "errors", "prompt_tokens",
                                                    "completion_tokens", "cost")]
    prefix = os.path.commonprefix(skills) if len(skills) > 1 else ""
    table.add_column("model")
    table.add_column("run", no_wrap=True)
    for column in ["overall", *(s[len(prefix):] for s in skills), "n", "err"]:
        table.add_column(column, justify="right", overflow="fold")
    for row in board.iter_rows(named=True):
        run = f"{row['data'].rsplit('/', 1)[-1]} {row['protocol']}/{row['rendering']}"
        table.add_row(row["model"], run, *(_cell(row[c]) for c in ["overall", *skills, "questions", "errors"]))
    return table


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
