"""Why a score is what it is: one model's questions on one task, with answers, truths, scores and errors."""

from __future__ import annotations

import re

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table, box

from evaluator.data.records import TaskType
from evaluator.errors import InputError
from evaluator.runs.runner import execute
from evaluator.runs.settings import RunConfig


def inspect(config: RunConfig, task: str) -> pl.DataFrame:
    """Every question of `task`: input, truth, cached answer (or error), per-question score; nothing saved."""
    result = execute(config, Console(quiet=True), send_missing=False, save=False)
    if not result.rows["answered"].any() and (result.rows["error"] == "not asked yet").all():
        raise InputError(f"model '{config.profile.name}' has no answer or error in this cache for {config.data} "
                         "with these settings (--protocol, --render and the prompt options must be the run's)",
                         field="--model")
    if task not in {q.task for q in result.questions}:
        raise InputError(f"no task '{task}' in {config.data} (tasks: "
                         f"{', '.join(sorted({q.task for q in result.questions})[:12])})", field="--task")
    records = []
    for question, row in zip(result.questions, result.rows.iter_rows(named=True)):
        if question.task != task:
            continue
        records.append({"row": row["row"], "qid": question.qid, "input": question.input,
                        "choices": question.choices,
                        "multiple_choice": question.task_type is TaskType.MULTIPLE_CHOICE,
                        "candidates": question.task_type in (TaskType.RANKING, TaskType.RETRIEVAL),
                        "metric": question.metric.value,
                        "truth": str(question.truth), "answer": row["output"], "score": row["score"],
                        "tp_fp_fn": f"{row['tp']}/{row['fp']}/{row['fn']}" if row["tp"] is not None else None,
                        "official": row["official"], "unscored": row["unscored"],
                        "error": row["error"]})
    return pl.DataFrame(records)


def print_inspect(rows: pl.DataFrame, model: str, task: str, console: Console) -> None:
    metric = rows["metric"][0] if rows.height else "-"
    table = Table(title=f"{escape(model)} on {escape(task)}: {rows.height} questions ({escape(metric)})",
                  show_lines=True,
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=0, title_justify="left")
    table.add_column("row", justify="right", no_wrap=True)
    for column in ("input", "truth", "answer"):
        table.add_column(column, overflow="fold", ratio=2 if column == "input" else 1)
    table.add_column("score", justify="right", no_wrap=True)
    for r in rows.iter_rows(named=True):
        if r["error"]:
            score = f"[red]{escape(r['error'])}[/]"
        elif r["unscored"]:
            score = "not scored"
        elif r["tp_fp_fn"]:
            score = f"tp/fp/fn\n{r['tp_fp_fn']}"
        else:
            score = "-" if r["score"] is None else f"{r['score']:.4f}"
        if r["official"]:
            score += f"\nofficial: {escape(r['official'].split(':')[0])}"
        table.add_row(str(r["row"]), escape(_shown_input(r)), escape(_clip(r["truth"])),
                      escape(_clip(r["answer"])), score)
    console.print(table)
    notes = {r["official"] for r in rows.iter_rows(named=True) if r["official"]}
    for note in sorted(notes):
        console.print(f"official: {escape(note)}", highlight=False)


def _shown_input(row: dict, limit: int = 160) -> str:
    """A multiple-choice input keeps every option whole (the truth is checked against them) and clips only
    the question before them; the task files' choices are listed as the prompt lists them. A ranking or
    retrieval input keeps its numbered candidates (each clipped to a line), so an answer `3, 1` can be read
    against them. Any other input is clipped."""
    if row["candidates"]:
        return _numbered_list(row["input"], limit)
    if not row["multiple_choice"]:
        return _clip(row["input"], limit)
    lines = row["input"].rstrip().split("\n")
    first = next((i for i, line in enumerate(lines) if _OPTION.match(line)), len(lines))
    options = lines[first:] + [f"{i}. {choice}" for i, choice in enumerate(row["choices"] or [])]
    return "\n".join([_clip("\n".join(lines[:first]), limit), *options])


_OPTION = re.compile(r"\s*\(?[0-9A-Z]\)?[.)] ")
_CANDIDATE = re.compile(r"\s*[0-9]{1,4}\. ")


def _numbered_list(text: str, limit: int) -> str:
    """The text before the numbered list clipped, every numbered line kept (each clipped to `limit` // 2),
    and the instructions after the list clipped."""
    lines = text.rstrip().split("\n")
    numbered = [i for i, line in enumerate(lines) if _CANDIDATE.match(line)]
    if not numbered:
        return _clip(text, limit)
    first, last = numbered[0], numbered[-1]
    parts = [_clip("\n".join(lines[:first]), limit)] if first else []
    parts += [_clip(line, limit // 2) for line in lines[first:last + 1]]
    if last + 1 < len(lines):
        parts.append(_clip("\n".join(lines[last + 1:]), limit // 2))
    return "\n".join(parts)


def _clip(text: str | None, limit: int = 160) -> str:
    if text is None:
        return "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"
