"""The Python API for notebooks: results folders, nights and the cache's saved runs as Polars frames.

    from evaluator import load_results, rescore

    night = load_results("~/.cache/shopping-mmlu/suites/paper")  # the suite's latest night
    night.runs, night.skills, night.tasks, night.samples        # Polars frames

Every file read is hostile: a field of the wrong type becomes null, an unreadable file or line is skipped and
named in `skipped`, never an exception that loses the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from evaluator.errors import InputError

RUNS = {"model": pl.String, "status": pl.String, "complete": pl.Boolean, "reason": pl.String,
        "overall": pl.Float64, "questions": pl.Int64, "answered": pl.Int64, "errors": pl.Int64,
        "unscored": pl.Int64, "protocol": pl.String, "rendering": pl.String, "variant": pl.String,
        "data": pl.String, "dataset_sha256": pl.String, "answered_first_at": pl.String,
        "answered_last_at": pl.String, "scored_at": pl.String, "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64, "cost_usd": pl.Float64, "overall_stderr": pl.Float64,
        "family": pl.String, "params_b": pl.Float64, "base": pl.String, "source": pl.String}
# `skill` is the short name (concept, reasoning, behavior, multilingual), `track` the data file's own
SKILLS = {"model": pl.String, "skill": pl.String, "track": pl.String, "score": pl.Float64, "stderr": pl.Float64,
          "tasks": pl.Int64, "questions": pl.Int64, "n": pl.Int64, "errors": pl.Int64, "unscored": pl.Int64}
TASKS = {"model": pl.String, "skill": pl.String, "track": pl.String, "task": pl.String, "metric": pl.String,
         "score": pl.Float64, "stderr": pl.Float64, "questions": pl.Int64, "n": pl.Int64, "errors": pl.Int64,
         "unscored": pl.Int64, "official": pl.String}
# `prompt`: the completion prompt, or the chat messages as JSON; `truth` as the data file has it (an int, a
# string, a list), in a column of Python objects
SAMPLES = {"model": pl.String, "row": pl.Int64, "id": pl.String, "skill": pl.String, "track": pl.String,
           "task": pl.String, "metric": pl.String, "prompt": pl.String, "answer": pl.String, "truth": pl.Object,
           "score": pl.Float64,
           "unscored": pl.String, "error": pl.String, "finish_reason": pl.String, "prompt_tokens": pl.Int64,
           "completion_tokens": pl.Int64, "latency_s": pl.Float64}
MAX_JSON_BYTES = 64 * 2**20  # a results.json is scores and settings: far smaller
MAX_LINE_BYTES = 16 * 2**20  # one sample: a prompt and an answer
MAX_SAMPLES_BYTES = 2 * 2**30  # a night's largest samples.jsonl is tens of MB


@dataclass
class Results:
    """Runs (one row per model and run), their skill and task scores, and per-question samples (from results
    folders only: the cache's saved runs keep scores, not samples); `skipped` names what could not be read."""

    runs: pl.DataFrame
    skills: pl.DataFrame
    tasks: pl.DataFrame
    samples: pl.DataFrame
    skipped: list[str] = field(default_factory=list)


def _typed(value, dtype):
    """`value` if it fits the column's type, else None (a hostile file cannot break a frame)."""
    if dtype == pl.Object:
        return value
    if dtype == pl.String:  # a lone surrogate (JSON's "\ud800") cannot enter a frame: it reads as "?"
        return value[:1_000_000].encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else None
    if dtype == pl.Boolean:
        return value if isinstance(value, bool) else None
    if dtype == pl.Int64:
        return value if isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    return pl.DataFrame([{c: _typed(r.get(c), t) for c, t in schema.items()} for r in rows], schema=schema,
                        orient="row")


def _dig(doc, *keys):
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _short(row: dict) -> dict:
    """The row with `skill` as its short name and the data file's own name as `track`."""
    from evaluator.reports.leaderboard import short_skill

    track = row.get("skill")
    return {**row, "track": track, "skill": short_skill(track) if isinstance(track, str) else None}


def _tags(profile) -> dict:
    """family, params_b and base from a saved profile (a hostile one gives nulls)."""
    profile = profile if isinstance(profile, dict) else {}
    return {k: profile.get(k) for k in ("family", "params_b", "base")}


def _prompt(prompt) -> str | None:
    if isinstance(prompt, str) or prompt is None:
        return prompt
    return json.dumps(prompt, ensure_ascii=False)[:1_000_000]


def _from_document(doc: dict, samples: list[dict], source: str) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """One results.json (and its samples) as rows of the four frames."""
    model = _dig(doc, "model", "name")
    model = model if isinstance(model, str) else None
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    scores = doc.get("scores") if isinstance(doc.get("scores"), dict) else {}
    run = {"model": model, "status": doc.get("status"), "complete": doc.get("complete"), "reason": doc.get("reason"),
           "overall": _dig(scores, "overall", "score"), "questions": _dig(doc, "counts", "questions"),
           "answered": _dig(doc, "counts", "answered"), "errors": _dig(doc, "counts", "errors"),
           "unscored": _dig(doc, "counts", "unscored"), "protocol": _dig(doc, "settings", "protocol"),
           "rendering": _dig(doc, "settings", "rendering"), "variant": _dig(doc, "settings", "variant"),
           "data": data.get("path"),
           # format 1 named the dataset digest `sha256`
           "dataset_sha256": data.get("dataset_sha256", data.get("sha256")),
           "answered_first_at": _dig(doc, "answered", "first_at"), "answered_last_at": _dig(doc, "answered", "last_at"),
           "scored_at": _dig(doc, "scored", "at") or _dig(doc, "times", "finished_at"),
           "prompt_tokens": _dig(doc, "tokens", "prompt"), "completion_tokens": _dig(doc, "tokens", "completion"),
           "cost_usd": _dig(doc, "cost", "usd"), "overall_stderr": _dig(scores, "overall", "stderr"),
           **_tags(_dig(doc, "model", "profile")), "source": source}
    skills = scores.get("skills") if isinstance(scores.get("skills"), dict) else {}
    skill_rows = [_short({**(v if isinstance(v, dict) else {}), "model": model, "skill": k})
                  for k, v in skills.items()]
    tasks = scores.get("tasks") if isinstance(scores.get("tasks"), list) else []
    task_rows = [_short({**t, "model": model}) for t in tasks if isinstance(t, dict)]
    sample_rows = [_short({**s, "model": model, "prompt": _prompt(s.get("prompt"))}) for s in samples]
    return run, skill_rows, task_rows, sample_rows


def _read_json(path: Path):
    """A JSON file of ours: a regular file, at most MAX_JSON_BYTES (a FIFO or a device is an OSError)."""
    from evaluator.paths import read_regular

    return json.loads(read_regular(path, MAX_JSON_BYTES))


def _read_samples(path: Path, skipped: list[str]) -> list[dict]:
    from evaluator.paths import open_regular

    out, bad = [], 0
    try:
        with open_regular(path, MAX_SAMPLES_BYTES) as handle:
            while line := handle.readline(MAX_LINE_BYTES):
                if not line.endswith(b"\n") and len(line) == MAX_LINE_BYTES:
                    while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        pass  # the rest of an overlong line
                    bad += 1
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    record = None
                if isinstance(record, dict):
                    out.append(record)
                elif line.strip():
                    bad += 1
    except OSError as exc:
        skipped.append(f"{path}: {exc.strerror or exc}")
    if bad:
        skipped.append(f"{path}: {bad} line(s) unreadable, left out")
    return out


def _results_folders(path: Path) -> list[Path]:
    """A results folder itself, or the results folders of a night (models/*) or of any folder (*/)."""
    from evaluator.paths import night_of

    if (path / "results.json").is_file():
        return [path]
    night = night_of(path)
    for parent in (night / "models", night):
        found = sorted(p.parent for p in parent.glob("*/results.json"))
        if found:
            return found
    return []


def load_results(path: str | Path) -> Results:
    """Read results into frames. `path`: a results folder; a suite's folder (its latest night) or one
    night's folder (its failed models too, from summary.json); a folder of results folders; or a cache
    folder (`--cache`: every saved run's scores, no samples)."""
    from evaluator.paths import night_of

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if (path / "responses" / "responses.sqlite").is_file():
        return _from_cache(path)
    folders = _results_folders(path)
    if not folders:
        raise InputError("holds no results folder (results.json), night or cache", path=path)
    runs, skills, tasks, samples, skipped = [], [], [], [], []
    for folder in folders:
        try:
            doc = _read_json(folder / "results.json")
        except (OSError, ValueError, RecursionError) as exc:
            skipped.append(f"{folder / 'results.json'}: {exc}"[:500])
            continue
        if not isinstance(doc, dict) or doc.get("format") != "shopping-mmlu results":
            skipped.append(f"{folder / 'results.json'}: not a shopping-mmlu results file")
            continue
        run, s, t, rows = _from_document(doc, _read_samples(folder / "samples.jsonl", skipped), str(folder))
        runs.append(run)
        skills += s
        tasks += t
        samples += rows
    runs += _failed_in_night(night_of(path), {r["model"] for r in runs}, skipped)
    return Results(_frame(runs, RUNS), _frame(skills, SKILLS), _frame(tasks, TASKS), _frame(samples, SAMPLES),
                   skipped)


def _failed_in_night(night: Path, present: set, skipped: list[str]) -> list[dict]:
    """A night's models that left no results folder (failed before scoring), from its summary.json."""
    summary_path = night / "summary.json"
    if not summary_path.exists() and not summary_path.is_symlink():
        return []  # a results folder or a folder of them: no night
    try:
        summary = _read_json(summary_path)
    except (OSError, ValueError, RecursionError) as exc:
        skipped.append(f"{summary_path}: {exc}"[:500])
        return []
    failed = summary.get("failed") if isinstance(summary, dict) else None
    return [{"model": f.get("model"), "status": "failed", "complete": False, "reason": f.get("reason"),
             "source": str(summary_path)} for f in (failed if isinstance(failed, list) else [])
            if isinstance(f, dict) and isinstance(f.get("model"), str) and f["model"] not in present]


def _from_cache(folder: Path) -> Results:
    """The cache's saved runs (read-only) as frames."""
    from evaluator.cache.responses import ResponseCache
    from evaluator.provenance import iso

    store = ResponseCache(folder / "responses", read_only=True)
    try:
        saved, scores, forgotten = store.runs(), store.task_scores(), store.forgotten()
    finally:
        store.close()
    runs, skills, skipped, task_errors = [], [], [], {}
    skipped += [f"{name} ({'every run' if variant is None else f'variant {variant!r}'}): forgotten "
                "(shopping-mmlu forget --undo puts it back)" for name, variant in forgotten]
    for record in saved.iter_rows(named=True):
        try:
            details = json.loads(record["details"] or "{}")
        except (ValueError, RecursionError):
            details = None
        if not isinstance(details, dict):
            skipped.append(f"run {record['key']} ({record['model']}): its details are unreadable")
            details = {}
        stderr = details.get("stderr") if isinstance(details.get("stderr"), dict) else {}
        runs.append({**record, "complete": record["status"] == "complete", "overall": details.get("overall"),
                     "dataset_sha256": record["data_sha256"], "scored_at": iso(record["created_at"]),
                     "cost_usd": record["cost"], "overall_stderr": stderr.get("overall"),
                     **_tags(details.get("profile")), "source": f"cache:{record['key']}"})
        per_skill = details.get("skills") if isinstance(details.get("skills"), dict) else {}
        skill_errors = stderr.get("skills") if isinstance(stderr.get("skills"), dict) else {}
        skills += [_short({"model": record["model"], "skill": k, "score": v, "stderr": skill_errors.get(k)})
                   for k, v in per_skill.items()]
        task_errors[record["key"]] = {(t[0], t[1]): t[2] for t in stderr.get("tasks") or []
                                      if isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t[:2])}
    model_of = dict(zip(saved["key"].to_list(), saved["model"].to_list()))
    tasks = [_short({**t, "model": model_of.get(t["run"]), "n": t["scored"],
                     "stderr": task_errors.get(t["run"], {}).get((t["skill"], t["task"]))})
             for t in scores.iter_rows(named=True)]
    return Results(_frame(runs, RUNS), _frame(skills, SKILLS), _frame(tasks, TASKS), _frame([], SAMPLES), skipped)


def rescore(model: str, data: str | Path, cache: str | Path | None = None, protocol: str = "skill",
            rendering: str | None = None, letter_choices: bool = False, task_specific_prompt: bool = False,
            limit: int | None = None, embedding_model: str | None = None,
            multilingual_model: str | None = None) -> Results:
    """`shopping-mmlu rescore` into frames: `model`'s cached answers on `data` scored again, no server and no
    request, nothing written (a question without a cached answer counts as an error)."""
    from rich.console import Console

    from evaluator.cache.responses import ResponseCache
    from evaluator.prompts import Protocol, Rendering
    from evaluator.reports.results import document, samples
    from evaluator.runs import runner
    from evaluator.runs.settings import RunConfig
    from evaluator.scoring.embeddings import ENGLISH_MODEL, MULTILINGUAL_MODEL, EmbeddingConfig, default_cache_dir
    from evaluator.reports.selection import close_names
    from servers.profiles import get_profile, load_profiles

    cache_dir = Path(cache).expanduser() if cache is not None else default_cache_dir()
    if not isinstance(model, str) or model.encode("utf-8", "replace").decode("utf-8") != model:
        raise InputError(f"the model name must be Unicode text, not {ascii(model)[:100]}")
    store = ResponseCache(cache_dir / "responses", read_only=True)
    try:
        recorded = store.model(model)
        known = [] if recorded is not None else sorted(set(store.runs()["model"].to_list()))
    finally:
        store.close()
    if recorded is None and model not in load_profiles():
        raise InputError(f"no model '{model[:100]}' in this cache and no profile of that name "
                         f"({close_names(model, known)})", path=cache_dir)
    config = RunConfig(
        profile=get_profile(model, adhoc=True, recorded=recorded), data=Path(data).expanduser(),
        protocol=Protocol(protocol), rendering=Rendering(rendering) if rendering else None, limit=limit,
        cache_dir=cache_dir, letter_choices=letter_choices, task_specific_prompt=task_specific_prompt,
        progress=False, embeddings=EmbeddingConfig(english=embedding_model or ENGLISH_MODEL,
                                                   multilingual=multilingual_model or MULTILINGUAL_MODEL))
    result = runner.execute(config, Console(quiet=True), send_missing=False, save=False)
    run, skills, tasks, rows = _from_document(json.loads(json.dumps(document(result))), samples(result),
                                              f"rescore:{cache_dir}")
    return Results(_frame([run], RUNS), _frame(skills, SKILLS), _frame(tasks, TASKS), _frame(rows, SAMPLES))
