"""The leaderboard: every run saved in the cache, per skill and overall, best first within its ranking.

Runs are ranked only against runs of the same data (by content), protocol and prompt options; each such
group is its own ranking. Every row says how complete it is (answered of total, unscored, status), a failed
model keeps its row, and a skill averaged over fewer tasks than it has says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from evaluator.errors import InputError
from evaluator.scoring.aggregate import finite

GROUP = ["data_sha256", "protocol", "variant"]
SKILL_LABELS = (("concept", "concept"), ("reason", "reasoning"), ("behavior", "behavior"),
                ("behaviour", "behavior"), ("multi-lingual", "multilingual"), ("multi_lingual", "multilingual"),
                ("multilingual", "multilingual"),
                ("multiple_choice", "choice"), ("named_entity_recognition", "ner"))
STATUS_ORDER = {"complete": 0, "incomplete": 1, "failed": 2}
# One label per metric on every screen (terminal, compare, HTML): short enough for a narrow column.
METRIC_LABELS = {"accuracy": "accuracy", "hit rate@3": "hit@3", "ndcg": "ndcg", "micro f1": "micro-f1",
                 "rougel": "rouge-l", "bleu": "bleu", "jp-bleu": "jp-bleu", "sent-transformer": "sent-tr",
                 "multilingual-sent-transformer": "m-sent-tr"}


def short_skill(name: str) -> str:
    """concept, reasoning, behavior, multilingual for the official skills and KDD tracks; else the name."""
    lowered = name.lower()
    for needle, label in SKILL_LABELS:
        if needle in lowered:
            return label
    return name


SKILL = "skill:"  # a skill's column in the board: no skill name from a data file can clash with ours


def skill_key(skill: str) -> str:
    """The board's column holding `skill`'s scores."""
    return SKILL + skill


def distinct(labels: list[str]) -> list[str]:
    """`labels` in order, a repeated one numbered (`x (2)`), never equal to another label."""
    taken, out = set(labels), []
    for label in labels:
        if label in out:
            n = 2
            while f"{label} ({n})" in taken:
                n += 1
            label = f"{label} ({n})"
            taken.add(label)
        out.append(label)
    return out


def skill_labels(skills: list[str]) -> dict[str, str]:
    """Each skill's label: its short name (`short_skill`) where no other skill here shares it, else its
    full name; two skills never share a label, and none is labelled `overall` (the views' own column)."""
    short = [short_skill(s) for s in skills]
    return dict(zip(skills, distinct(["overall", *(b if short.count(b) == 1 else s
                                                   for s, b in zip(skills, short))])[1:]))


def leaderboard(runs: pl.DataFrame, tasks: pl.DataFrame) -> pl.DataFrame:
    """One row per saved run: identity, ranking group and rank, status and counts, overall and per-skill
    scores with their coverage, tokens and the cost computed when it ran."""
    # Tasks in the order they were saved (the data's), grouped keeping that order: the same floats summed in
    # the same order as the run's own aggregation, so every view agrees with `rescore` to the last digit.
    skills = (tasks.group_by("run", "skill", maintain_order=True)
              .agg(score=pl.col("score").mean(), tasks_scored=pl.col("score").is_not_null().sum(),
                   tasks_total=pl.len()))
    overall = skills.group_by("run", maintain_order=True).agg(overall=pl.col("score").mean(),
                                         skills_scored=pl.col("score").is_not_null().sum(),
                                         skills_total=pl.len(),
                                         partial_skills=((pl.col("tasks_scored") > 0)
                                                         & (pl.col("tasks_scored") < pl.col("tasks_total"))).sum())
    skills, overall = _as_saved(runs, skills, overall)
    wide = (skills.with_columns(label=SKILL + pl.col("skill")).pivot(on="label", index="run", values="score",
                                                             sort_columns=True)
            if skills.height else pl.DataFrame({"run": []}, schema={"run": pl.String}))
    board = (runs.rename({"key": "run"})
             .join(overall, on="run", how="left")
             .join(wide, on="run", how="left")
             .with_columns(status_order=pl.col("status").replace_strict(STATUS_ORDER, default=3,
                                                                        return_dtype=pl.Int64),
                           group=pl.concat_str([pl.col("data").str.split("/").list.last(),
                                                pl.col("protocol") + "-wise",
                                                pl.when(pl.col("variant") != "").then(pl.col("variant"))],
                                               separator=" · ", ignore_nulls=True))
             .with_columns(unranked=(pl.col("status") == "failed") | pl.col("overall").is_null())
             .sort([*GROUP, "unranked", "status_order", "overall", "model", "run"],
                   descending=[False, False, False, False, False, True, False, False], nulls_last=True))
    return board.with_columns(rank=_ranks(board)).drop("status_order", "unranked")


def _ranks(board: pl.DataFrame) -> pl.Series:
    """Each row's rank in its ranking (board sorted): runs equal at the shown precision (three decimals) share
    one, the next gets its position (1, 2, 2, 4); a failed run, or one without an overall score, has none (its
    rows come after the ranked ones)."""
    ranks, seen = [], {}
    for row in board.select(*GROUP, "unranked", "overall").iter_rows(named=True):
        key = tuple(row[k] for k in GROUP)
        if row["unranked"]:
            ranks.append(None)
            continue
        position, last_shown, last_rank = seen.get(key, (0, None, None))
        shown = _score(row["overall"])
        rank = last_rank if shown == last_shown else position + 1
        seen[key] = (position + 1, shown, rank)
        ranks.append(rank)
    return pl.Series("rank", ranks, dtype=pl.Int64)


def _as_saved(runs: pl.DataFrame, skills: pl.DataFrame, overall: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The skill and overall scores each run saved from its own aggregation, where it saved them (runs scored
    before kept only task scores: theirs are recomputed above), so no view differs from `rescore` in a digit."""
    saved_skills, saved_overall = [], []
    for key, details in runs.select("key", "details").iter_rows():
        try:
            doc = json.loads(details)
        except (TypeError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("skills"), dict):
            saved_skills += [(key, skill, float(score) if isinstance(score, (int, float)) else None)
                             for skill, score in doc["skills"].items()]
            score = doc.get("overall")
            saved_overall.append((key, float(score) if isinstance(score, (int, float)) else None))
    if saved_skills:
        frame = pl.DataFrame(saved_skills, schema={"run": pl.String, "skill": pl.String, "saved": pl.Float64},
                             orient="row")
        skills = (skills.join(frame, on=["run", "skill"], how="left", maintain_order="left")
                  .with_columns(score=pl.when(pl.col("run").is_in(frame["run"].unique().implode()))
                                .then(pl.col("saved")).otherwise(pl.col("score"))).drop("saved"))
    if saved_overall:
        frame = pl.DataFrame(saved_overall, schema={"run": pl.String, "saved": pl.Float64}, orient="row")
        overall = (overall.join(frame, on="run", how="left", maintain_order="left")
                   .with_columns(overall=pl.when(pl.col("run").is_in(frame["run"].implode()))
                                 .then(pl.col("saved")).otherwise(pl.col("overall"))).drop("saved"))
    return skills, overall


CANONICAL = ("concept", "reasoning", "behavior", "multilingual")


def skill_columns(board: pl.DataFrame) -> list[str]:
    """The skills (names as the data has them; `skill_key` names their columns), in the benchmark's order
    (concept, reasoning, behavior, multilingual) where known."""
    skills = [c.removeprefix(SKILL) for c in board.columns if c.startswith(SKILL)]
    order = {label: i for i, label in enumerate(CANONICAL)}
    return sorted(skills, key=lambda s: (order.get(short_skill(s), len(order)), s))


def records(board: pl.DataFrame) -> list[dict]:
    """The leaderboard as plain records (json, csv, md, HTML)."""
    skills = skill_columns(board)
    out = []
    for row in board.iter_rows(named=True):
        errors = saved_stderr(row["details"])
        out.append({
            "group": row["group"], "run": row["run"], "rank": row["rank"], "model": row["model"], "status": row["status"],
            "complete": row["status"] == "complete", "overall": row["overall"],
            "overall_stderr": errors.get("overall"),
            **_choice_view(row["details"]),
            **{f"skill:{s}": row[skill_key(s)] for s in skills},
            **{f"stderr:{s}": errors.get("skills", {}).get(s) for s in skills},
            "questions": row["questions"], "answered": row["answered"], "errors": row["errors"],
            "unscored": row["unscored"], "skills_scored": row["skills_scored"], "skills_total": row["skills_total"],
            "partial_skills": row["partial_skills"], "reason": row["reason"], "data": row["data"],
            "data_sha256": row["data_sha256"], "protocol": row["protocol"], "rendering": row["rendering"],
            "variant": row["variant"], "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"], "cost": row["cost"]})
    return finite(out)


def _number(value) -> float | None:
    """A saved number as a float; anything else (text, a boolean, null) as None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def saved_stderr(details: str | None) -> dict:
    """The standard errors a run saved with its scores ({} for runs scored before they were kept)."""
    try:
        doc = json.loads(details or "")
    except (TypeError, ValueError):
        return {}
    # only beside the scores saved with them (a run whose scores are recomputed has none)
    errors = doc.get("stderr") if isinstance(doc, dict) and "overall" in doc else None
    if not isinstance(errors, dict):
        return {}
    skills = errors.get("skills") if isinstance(errors.get("skills"), dict) else {}
    tasks = errors.get("tasks") if isinstance(errors.get("tasks"), list) else []
    return {"overall": _number(errors.get("overall")), "skills": {str(k): _number(v) for k, v in skills.items()},
            "tasks": {(str(t[0]), str(t[1])): _number(t[2]) for t in tasks if isinstance(t, list) and len(t) == 3}}


def _choice_view(details: str | None) -> dict:
    """A `--choice-probs` run's view (ours, never an official column): its overall score (multiple choice read
    from the most probable valid choice, aggregated as the official score), standard error and mass on valid
    choices, as saved; None for other runs and for runs saved before the view was aggregated so (every record
    has the same keys)."""
    try:
        view = json.loads(details or "").get("choice_probs")
    except (TypeError, ValueError, AttributeError):
        view = None
    if not isinstance(view, dict) or "score" not in view:  # an older run's pooled view is not comparable
        view = {}
    return {"choice_probs_score": _number(view.get("score")), "choice_probs_stderr": _number(view.get("stderr")),
            "choice_probs_valid_mass": _number(view.get("valid_mass")),
            "choice_probs_n": view.get("n") if isinstance(view.get("n"), int) else None}


def render(board: pl.DataFrame, fmt: str) -> None:
    """The leaderboard as json, csv or md on stdout (the terminal table is `tables.print_leaderboard`)."""
    if fmt == "json":
        print(json.dumps(records(board), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        print(write_csv(board), end="")
    else:
        print(markdown(board), end="")


def write_csv(board: pl.DataFrame) -> str:
    rows = records(board)
    return pl.DataFrame(rows).write_csv() if rows else "group,run,rank,model,status,overall\n"


def markdown(board: pl.DataFrame) -> str:
    """Paper-ready: one table per ranking under its own heading, short skill names, three decimals, the
    overall score's standard error, answered of total and a complete mark on every row, notes below; the full
    detail is in the CSV and JSON."""
    if board.is_empty():
        return "_No runs saved in this cache._\n"
    skills = skill_columns(board)
    out = []
    for _, group in board.group_by(GROUP, maintain_order=True):
        present = [s for s in skills if group[skill_key(s)].is_not_null().any()]
        labels = skill_labels(present)
        headers = ["#", "model", "overall", "± s.e.", *(md_text(labels[s]) for s in present), "answered", "complete"]
        out += [f"## Shopping MMLU: {md_text(group['group'][0])}", "",
                "| " + " | ".join(headers) + " |",
                "|" + "|".join("---" if i == 1 else ":---:" if i == len(headers) - 1 else "---:"
                               for i in range(len(headers))) + "|"]
        for row in group.iter_rows(named=True):
            mark = "✓" if row["status"] == "complete" else f"✗ {_done(row)}"
            cells = [rank_text(row["rank"]), md_text(row["model"]), _score(row["overall"], short_of(row)),
                     _score(saved_stderr(row["details"]).get("overall")), *(_score(row[skill_key(s)]) for s in present),
                     f"{row['answered']:,}/{row['questions']:,}", mark]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += _stderr_table(group, present, labels)
        lines = notes(list(group.iter_rows(named=True)))
        if any(short_of(r) for r in group.iter_rows(named=True)):
            lines.append("~ averaged over fewer tasks or skills than the data has")
        out += [f"- {md_text(note.removeprefix('* '))}" for note in lines] + ([""] if lines else [])
    return "\n".join(out)


def _stderr_table(group: pl.DataFrame, present: list[str], labels: dict[str, str]) -> list[str]:
    """The standard error of every score of the table above (same rows, same columns), where any is known."""
    rows = [(row, saved_stderr(row["details"])) for row in group.iter_rows(named=True)]
    if not any(errors.get("overall") is not None for _, errors in rows):
        return []
    headers = ["#", "model", "overall", *(md_text(labels[s]) for s in present)]
    out = ["Standard errors of the scores above:", "", "| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i == 1 else "---:" for i in range(len(headers))) + "|"]
    for row, errors in rows:
        cells = [rank_text(row["rank"]), md_text(row["model"]), _score(errors.get("overall")),
                 *(_score(errors.get("skills", {}).get(s)) for s in present)]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def md_text(text: str) -> str:
    """A cell's text that cannot break the table or turn into markup."""
    text = " ".join(str(text).split())
    for char in "\\|*_`[]<>":
        text = text.replace(char, "\\" + char)
    return text


def write_files(board: pl.DataFrame, folder: Path, stem: str = "leaderboard") -> list[Path]:
    """leaderboard.md, .csv and .json in `folder` (each written whole, then renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in (("md", markdown(board)), ("csv", write_csv(board)),
                         ("json", json.dumps(records(board), indent=2, ensure_ascii=False) + "\n")):
        path = folder / f"{stem}.{suffix}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def _done(row: dict) -> str:
    if row["status"] == "failed":
        return "failed"
    if row["questions"] and row["status"] != "complete":
        return f"{row['scored'] / row['questions']:.0%}*"
    return "all"


def notes(rows: list[dict], names_shown: int | None = None) -> list[str]:
    """Why the rows that are not complete are not, one line per distinct account (`* a, b (incomplete): ...`),
    each naming its runs' models in board order (at most `names_shown`, then how many more)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row["status"] != "complete":
            grouped.setdefault((row["status"], _account(row)), []).append(row["model"])
    out = []
    for (status, account), models in grouped.items():
        named = models if names_shown is None or len(models) <= names_shown else models[:names_shown]
        more = f" and {len(models) - len(named)} more" if len(named) < len(models) else ""
        out.append(f"* {', '.join(named)}{more} ({status}): {account}")
    return out


def _account(row: dict) -> str:
    """A row's answered, not scored, skills scored and reason, whole (a screen wraps it at spaces)."""
    parts = [f"{row['answered']:,}/{row['questions']:,} answered"]
    if row["unscored"]:
        parts.append(f"{row['unscored']:,} not scored")
    if row["skills_scored"] and row["skills_scored"] < row["skills_total"]:
        parts.append(f"{row['skills_scored']}/{row['skills_total']} skills scored")
    if row["skills_scored"] and row["partial_skills"]:
        parts.append(f"{row['partial_skills']} skill(s) scored on part of their tasks")
    if row["reason"]:
        parts.append(" ".join(row["reason"].split()))
    return "; ".join(parts)


def short_of(row: dict) -> bool:
    """Whether a row's overall is averaged over fewer skills, or skills over fewer tasks, than the data has."""
    return row["overall"] is not None and bool(row["partial_skills"]
                                               or (row["skills_scored"] or 0) < (row["skills_total"] or 0))


def _score(value, partial: bool | int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("~" if partial else "")


def se_text(value) -> str:
    """A standard error beside a three-decimal score, compactly (±.031); '' where it is unknown."""
    return "" if value is None else "±" + f"{value:.3f}".removeprefix("0")


def rank_text(rank) -> str:
    """A rank, or nothing for a run that has none (failed, or no overall score)."""
    return "" if rank is None else str(rank)


def from_cache(cache: Path | None, models: list[str] | None = None, exclude: list[str] | None = None) -> pl.DataFrame:
    """The leaderboard of the cache's runs (those of the models `models` and `exclude` choose)."""
    from evaluator.cache.responses import ResponseCache
    from evaluator.reports.selection import choose
    from evaluator.scoring.embeddings import default_cache_dir

    folder = cache or default_cache_dir()
    if not (folder / "responses" / "responses.sqlite").exists():
        if cache is not None:
            raise InputError("no response cache here: nothing has been run with this --cache", path=folder)
        return leaderboard(*_empty_runs())
    store = ResponseCache(folder / "responses", read_only=True)
    try:
        runs = choose(store.runs(), models, exclude)
        tasks = store.task_scores()
    finally:
        store.close()
    return leaderboard(runs, tasks.filter(tasks["run"].is_in(runs["key"].implode())))


def _empty_runs():
    from evaluator.cache.responses import RUN_SCHEMA, TASK_SCHEMA

    return pl.DataFrame(schema=RUN_SCHEMA), pl.DataFrame(schema=TASK_SCHEMA)
