"""Why a score is what it is: per-task differences between two models, the per-question view of one task,
and the leaderboard as a chart."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from evaluator.cache.responses import ResponseCache
from evaluator.errors import InputError
from evaluator.runs.runner import RunConfig, load_and_plan
from evaluator.scoring import ScoringOptions, questions_frame, score_rows
from evaluator.scoring.embeddings import EmbeddingConfig

KEYS = ["data", "protocol", "rendering", "skill", "task"]


def compare(scores: pl.DataFrame, a: str, b: str) -> pl.DataFrame:
    """Per-task score of `a` minus `b` on the runs both have (same data, protocol, rendering), largest first."""
    left = scores.filter(pl.col("model") == a).select(*KEYS, "metric", score_a=pl.col("score"))
    right = scores.filter(pl.col("model") == b).select(*KEYS, score_b=pl.col("score"))
    for name, frame in ((a, left), (b, right)):
        if frame.is_empty():
            raise InputError(f"no scores for model '{name}' in the cache (run or rescore it first)")
    both = left.join(right, on=KEYS, how="inner")
    if both.is_empty():
        raise InputError(f"'{a}' and '{b}' share no scored run (same data, protocol and rendering)")
    return (both.with_columns(difference=pl.col("score_a") - pl.col("score_b"))
            .sort(pl.col("difference").abs(), descending=True, nulls_last=True))


def print_compare(diff: pl.DataFrame, a: str, b: str, console: Console) -> None:
    table = Table(title=f"{a} vs {b}: per-task differences, largest first")
    for column in ("skill", "task", "metric", a, b, "difference"):
        table.add_column(column, justify="right" if column in (a, b, "difference") else "left")
    for r in diff.iter_rows(named=True):
        table.add_row(r["skill"], r["task"], r["metric"], _num(r["score_a"]), _num(r["score_b"]),
                      "-" if r["difference"] is None else f"{r['difference']:+.4f}")
    console.print(table)


def inspect(config: RunConfig, task: str) -> pl.DataFrame:
    """Every question of `task`: input, truth, cached answer (or error), per-question score."""
    questions, planned = load_and_plan(config)
    if task not in {q.task for q in questions}:
        raise InputError(f"no task '{task}' in {config.data} (tasks: "
                         f"{', '.join(sorted({q.task for q in questions})[:12])})", field="--task")
    cache = ResponseCache(config.cache_folder / "responses")
    try:
        keys = [p.key for p, q in zip(planned, questions) if q.task == task]
        answers = cache.answers(keys)
        errors = dict(cache.db.execute(
            f"SELECT key, kind || coalesce(' ' || status, '') FROM errors WHERE key IN ({','.join('?' * len(keys))})",
            keys).fetchall()) if keys else {}
    finally:
        cache.close()
    rows = [(p.row, answers[p.key].text) for p, q in zip(planned, questions) if q.task == task and p.key in answers]
    options = ScoringOptions(protocol=config.protocol, embeddings=EmbeddingConfig(cache_dir=config.cache_folder))
    table = pl.DataFrame({"row": pl.Series([r for r, _ in rows], dtype=pl.UInt32),
                          "output": pl.Series([t for _, t in rows], dtype=pl.String)})
    scored = score_rows(table, questions_frame(questions, options), options) if rows else None
    by_row = {r["row"]: r for r in scored.iter_rows(named=True)} if scored is not None else {}
    records = []
    for p, q in zip(planned, questions):
        if q.task != task:
            continue
        hit = by_row.get(p.row)
        records.append({"row": p.row, "qid": q.qid, "input": q.input, "truth": str(q.truth),
                        "answer": answers[p.key].text if p.key in answers else None,
                        "score": hit["score"] if hit else None,
                        "tp_fp_fn": f"{hit['tp']}/{hit['fp']}/{hit['fn']}" if hit and hit["tp"] is not None else None,
                        "error": errors.get(p.key) or (None if p.key in answers else "no answer cached")})
    return pl.DataFrame(records)


def print_inspect(rows: pl.DataFrame, model: str, task: str, console: Console) -> None:
    table = Table(title=f"{model} on {task}: {rows.height} questions", show_lines=True)
    for column in ("row", "input", "truth", "answer", "score", "error"):
        table.add_column(column, overflow="fold")
    for r in rows.iter_rows(named=True):
        score = r["tp_fp_fn"] and f"tp/fp/fn {r['tp_fp_fn']}" or _num(r["score"])
        table.add_row(str(r["row"]), _clip(r["input"]), _clip(r["truth"]), _clip(r["answer"]), score,
                      r["error"] or "")
    console.print(table)


def chart(board: pl.DataFrame, path: Path) -> Path:
    """Per-skill bars per model (PNG), best overall first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skills = [c for c in board.columns if c not in ("model", "data", "protocol", "rendering", "overall",
                                                      "questions", "errors", "prompt_tokens", "completion_tokens",
                                                      "cost")]
    labels = [f"{r['model']}\n{r['protocol']}/{r['rendering']}" for r in board.iter_rows(named=True)]
    width = 0.8 / max(1, len(skills) + 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * (len(skills) + 1) * 0.5), 4.5))
    for i, column in enumerate([*skills, "overall"]):
        values = [v if v is not None else 0 for v in board[column].to_list()]
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=column)
    ax.set_xticks([x + width * len(skills) / 2 for x in range(len(labels))], labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Shopping MMLU: per-skill scores")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _clip(text: str | None, limit: int = 160) -> str:
    if text is None:
        return "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"
