"""Terminal tables: scores per task, skill and overall; one run's outcome; profiles; data summaries.

Every table reads at 80 columns (a terminal, a log file): names fold rather than vanish behind an ellipsis,
numbers never wrap, and how complete a score is travels with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table, box

from evaluator.reports import leaderboard
from evaluator.reports.leaderboard import METRIC_LABELS, short_skill
from evaluator.reports.screen import Name
from evaluator.scoring.aggregate import Scores

if TYPE_CHECKING:
    from evaluator.data.loaders import Dataset
    from evaluator.runs.record import RunResult



def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=0, title_justify="left")


def _missing(row: dict) -> str:
    parts = []
    if row["errors"]:
        parts.append(f"{row['errors']} err")
    if row["unscored"]:
        parts.append(f"{row['unscored']} uns")
    return ", ".join(parts)


def print_scores(scores: Scores, console: Console, model: str = "", groups: str = "skill") -> None:
    """Per task under its skill (or task type), then each skill's mean and the overall mean, with counts."""
    tasks = scores.tasks.filter(pl.col("model") == model)
    skills = {r["skill"]: r for r in scores.skills.filter(pl.col("model") == model).iter_rows(named=True)}
    table = _table("Shopping MMLU scores" + (f": {escape(model)}" if model else ""))
    table.add_column("task", ratio=1)
    table.add_column("metric", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("±s.e.", justify="right", no_wrap=True)
    table.add_column("missing", justify="right", no_wrap=True)
    for skill, part in tasks.group_by("skill", maintain_order=True):
        name = skill[0]
        label = short_skill(name)
        summary = skills.get(name)
        title = f"{groups} {label}" + (f" ({name})" if label != name else "")
        table.add_row(Name(title, "bold"), "", "", "", "", "")
        for row in part.iter_rows(named=True):
            flag = " †" if row["official"] else ""
            table.add_row(Name(row["task"] + flag, indent=2), METRIC_LABELS.get(row["metric"], row["metric"]),
                          f"{row['n']:,}", _num(row["score"]), _se(row["stderr"]), _missing(row))
        if summary:
            coverage = f"mean of {summary['tasks']}/{summary['tasks_total']} tasks"
            table.add_row(f"  [italic]{coverage}[/]", "", f"{summary['n']:,}", f"[bold]{_num(summary['score'])}[/]",
                          _se(summary["stderr"]), _missing(summary))
        table.add_section()
    overall = scores.overall.filter(pl.col("model") == model)
    for row in overall.iter_rows(named=True):
        table.add_row(f"[bold]overall[/] (mean of {row['skills']}/{row['skills_total']} {groups}s)", "",
                      f"{row['n']:,}", f"[bold]{_num(row['score'])}[/]", _se(row["stderr"]), _missing(row))
    console.print(table)
    print_notes(scores, console, model)


def print_notes(scores: Scores, console: Console, model: str = "") -> None:
    """What was not scored, and where the official code gives no number (NaN or a crash) but we do."""
    for row in scores.unscored.filter(pl.col("model") == model).iter_rows(named=True):
        console.print(f"[yellow]not scored:[/] {row['n']} question(s) of {escape(row['task'])} ({row['metric']}): "
                      f"{escape(row['reason'])}")
    for row in scores.tasks.filter((pl.col("model") == model) & pl.col("official").is_not_null()).iter_rows(named=True):
        console.print(f"[yellow]† {escape(row['task'])}:[/] {escape(row['official'])}")


def print_run(result: "RunResult", console: Console) -> None:
    """One run: its scores, how complete it is, what was sent, and whether the saved scores changed."""
    name = result.config.profile.name
    if result.status != "failed" or result.answered:  # a model that answered nothing has a reason, not a table
        print_scores(result.scores, console, name, result.dataset.groups)
    total = len(result.questions)
    colour = {"complete": "green", "incomplete": "yellow"}.get(result.status, "red")
    line = f"[{colour}]{result.status}[/]: {result.answered:,}/{total:,} answered"
    if result.unscored:
        line += f", {result.unscored:,} not scored"
    console.print(line)
    if result.reason:
        console.print(f"[{colour}]reason:[/] {escape(result.reason)}")  # wrapped at spaces
    if result.config.choice_probs:
        view = result.choice_probabilities()
        console.print("choice probabilities (ours, not the official score): " + (
            f"overall {_num(view['score'])}{_se(view['stderr'])} (official {_num(result.overall)}) with "
            f"multiple choice read from the most probable valid choice, other tasks as scored; mass on valid "
            f"choices {_num(view['valid_mass'])}; log-probabilities for {view['n']:,}/{view['questions']:,} "
            "multiple-choice questions" if view["available"] else view["note"]), highlight=False)
    console.print(f"requests: {result.sent:,} sent, {result.cached:,} cached, {result.errors:,} without an answer"
                  + (f", fan-out {result.seconds:.1f} s" if result.sent else ""))
    if result.kept is not None:
        kept = result.kept
        console.print(f"[yellow]saved scores kept:[/] the saved run of '{escape(name)}' covers {kept['questions']:,} "
                      f"questions with {kept['answered']:,} answered; this one {total:,} with {result.answered:,}. "
                      "Rerun or rescore all of them to replace it.")


def print_leaderboard(board: pl.DataFrame, console: Console) -> None:
    """One table per ranking at any width from 80 columns: every score column and `done` whole (numbers never
    wrap), model names folded at '/' or '-' when the terminal is narrow; each score with its standard error
    (`0.192±.031`) where the width allows, the overall's always; how complete each row is in notes below."""
    if board.is_empty():
        console.print("No runs saved in this cache yet: `run`, `suite` or `demo` save them.")
        return
    skills = leaderboard.skill_columns(board)
    for _, group in board.group_by(leaderboard.GROUP, maintain_order=True):
        present = [s for s in skills if group[leaderboard.skill_key(s)].is_not_null().any()]
        labels = leaderboard.skill_labels(present)
        table = _table(f"Shopping MMLU leaderboard: {escape(group['group'][0])}")
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("model")
        for header in ["overall", *(escape(labels[s]) for s in present)]:
            table.add_column(header, justify="right", no_wrap=True)
        table.add_column("done", justify="right", no_wrap=True)
        # every score with its error where that leaves the names 30 columns; else the overall's alone
        need = 4 + 31 + 12 + sum(max(len(labels[s]), 11) + 1 for s in present) + 5
        wide = console.width >= need
        shown = False  # a ± written anywhere in the table
        for row in group.iter_rows(named=True):
            errors = leaderboard.saved_stderr(row["details"])
            shown = shown or errors.get("overall") is not None or (wide and any(
                v is not None for v in errors.get("skills", {}).values()))
            table.add_row(leaderboard.rank_text(row["rank"]), Name(row["model"]),
                          _with_se(row["overall"], errors.get("overall"), leaderboard.short_of(row)),
                          *(_with_se(row[leaderboard.skill_key(s)], errors.get("skills", {}).get(s) if wide else None)
                            for s in present),
                          leaderboard._done(row))
        console.print(table)
        for note in leaderboard.notes(list(group.iter_rows(named=True)), names_shown=6):
            console.print(escape(note), highlight=False)
        if any(leaderboard.short_of(r) for r in group.iter_rows(named=True)):
            console.print("~ averaged over fewer tasks or skills than the data has (see the notes)", highlight=False)
        if not shown:  # never a legend for a sign no row carries
            console.print("no ± here: no score shown has a known standard error (a part with one question has "
                          "none)", highlight=False)
            continue
        console.print("± standard error" + ("" if wide else f" (of the overall; every score's at {need} columns "
                                                             "or more, and in the csv, json and md)"),
                      highlight=False)


def _with_se(value, stderr, partial: bool = False) -> str:
    """A leaderboard score with its standard error and its `~` mark: `0.192±.031~`."""
    if value is None:
        return "-"
    return leaderboard._score(value) + leaderboard.se_text(stderr) + ("~" if partial else "")


def print_profiles(profiles: dict, fmt: str, console: Console) -> None:
    """Every profile: name, where it comes from (a hub id, or the provider's model at its endpoint), size,
    rendering and prices; names and ids fold at '/' and '-' on a narrow terminal."""
    from evaluator.redact import strip_url_credentials

    def endpoint(p) -> str | None:
        return strip_url_credentials(p.api_base)[0] if p.api_base else None

    rows = [{"name": p.name, "provider": p.provider, "model": p.model, "api_base": endpoint(p),
             "params_b": p.params_b, "rendering": p.rendering, "dtype": p.dtype, "tp": p.tensor_parallel_size,
             "price_input": p.price_input, "price_output": p.price_output, "key_env": p.api_key_env,
             "retired": p.retired}
            for p in profiles.values()]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    if fmt in ("csv", "md"):
        frame = pl.DataFrame(rows)
        if fmt == "csv":
            print(frame.write_csv(), end="")
        else:
            print("| " + " | ".join(frame.columns) + " |\n|" + "|".join(" --- " for _ in frame.columns) + "|")
            for row in frame.iter_rows():
                print("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
        return
    table = _table(f"{len(rows)} model profiles (add your own with $SHOPPING_MMLU_PROFILES); size: parameters, "
                   "price: USD per million tokens in/out")
    for column in ("name", "hub id, or API: model", "size/price", "render"):
        table.add_column(column, no_wrap=True)  # a short name and a hub id whole, to type or copy
    for p in profiles.values():
        source = p.model if p.is_local else f"{p.provider}: {p.model}"
        if endpoint(p):
            source += f"\n{endpoint(p)}"
        if p.retired:
            source += f"\nretired {p.retired}: re-scoring only"
        if p.is_local:
            size = (f"{p.params_b:g}B" if p.params_b else "-") + (f" tp{p.tensor_parallel_size}"
                                                                 if p.tensor_parallel_size > 1 else "")
        else:
            size = "-" if p.price_input is None else f"${p.price_input:g}/{p.price_output:g}"
        table.add_row(escape(p.name), escape(source), size, p.rendering)
    console.print(table)


def print_data_info(dataset: "Dataset", path: Path, as_json: bool, console: Console) -> None:
    summary: dict[tuple, int] = {}
    for q in dataset.questions:
        key = (q.skill, q.task, q.task_type.value, q.metric.value)
        summary[key] = summary.get(key, 0) + 1
    rows = [dict(zip(("skill", "task", "type", "metric"), key), questions=n) for key, n in summary.items()]
    if as_json:
        print(json.dumps({"files": [str(f.path) for f in dataset.files], "tasks": rows, "sha256": dataset.sha256,
                          "groups": dataset.groups, "questions": len(dataset.questions)}, indent=2,
                         ensure_ascii=False))
        return
    table = _table(f"{escape(str(path))}: {len(dataset.questions):,} questions, {len(dataset.files)} file(s)")
    table.add_column("task", ratio=1)
    table.add_column("type", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("questions", justify="right", no_wrap=True)
    types = {"multiple-choice": "choice", "retrieval": "retrieval", "ranking": "ranking",
             "named_entity_recognition": "ner", "generation": "generation"}
    for skill in dict.fromkeys(r["skill"] for r in rows):
        label = short_skill(skill)
        table.add_row(Name(f"{dataset.groups} {label}" + (f" ({skill})" if label != skill else ""), "bold"),
                      "", "", "")
        for row in (r for r in rows if r["skill"] == skill):
            table.add_row(Name(row["task"], indent=2), types.get(row["type"], row["type"]),
                          METRIC_LABELS.get(row["metric"], row["metric"]), f"{row['questions']:,}")
        table.add_section()
    console.print(table)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _se(value) -> str:
    """A standard error beside a four-decimal score; '' where it is unknown (one question)."""
    return "" if value is None else f"±{value:.4f}"
