"""A results folder per run: files a colleague can keep, diff and open without us.

    results.json     what was run and how (model, profile without secrets, server, data digest and each data
                     file's own sha256, settings, times, versions, requests, tokens, cost), when its answers
                     arrived and which runs sent them (kept in the cache, so a run scored from the cache says
                     what answered it), when it was scored, and every score with its counts
    samples.jsonl    one line per question: prompt, answer, truth, per-question score, error, tokens, latency
    official/        the official inference-output files (`{"model_output": ...}` per line, in data order), one
                     per data file, which `score` and the official scripts re-score to the same numbers

Everything is written into a temporary folder and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from evaluator import __version__
from evaluator.prompts import TASK_WISE_MAX_TOKENS, SKILL_WISE_MAX_TOKENS, Protocol, shot_shortfall
from evaluator.provenance import git_commit, iso, server_kind
from evaluator.scoring.aggregate import finite, write_json_atomic

if TYPE_CHECKING:
    from evaluator.runs.record import RunResult

FORMAT = "shopping-mmlu results"
FORMAT_VERSION = 2  # 2: data.dataset_sha256 (was data.sha256) and each file's own sha256; answered; scored
DATASET_DIGEST = ("sha256 over each data file's name within the data folder, its size and its bytes, in load "
                  "order: the identity runs are ranked by; not the sha256sum of any one file (see files)")


@lru_cache(maxsize=1)
def software() -> dict:
    """Our version and commit, Python and the platform, and the versions that change numbers."""
    from importlib import metadata

    versions = {}
    for package in ("polars", "sacrebleu", "rouge-score", "sentence-transformers", "torch", "aiohttp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"shopping_mmlu": __version__, "git_commit": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions}


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shot_facts(result: "RunResult") -> dict:
    """The run's k-shot prompting: examples asked per question, the seed, the pool (the run's own data where
    none is named) with its digest, and the tasks that had fewer examples to draw from (the fewest they got)."""
    config = result.config
    if not config.shots:
        return {"k": 0}
    named = config.shot_pool is not None
    return {"k": config.shots, "seed": config.shot_seed,
            "pool": str(Path(config.shot_pool).resolve()) if named else "the run's own data",
            "pool_sha256": config.pool_data.sha256 if named else result.dataset.sha256,
            "short_tasks": shot_shortfall(result.planned, result.questions, config.shots)}


def data_files(result: "RunResult") -> list[dict]:
    """Each data file with its size and its own SHA-256 (what `sha256sum` prints), read now."""
    out = []
    for data_file in result.dataset.files:
        entry: dict = {"path": str(data_file.path), "questions": len(data_file.questions)}
        try:
            stat = data_file.path.stat()
            entry.update(bytes=stat.st_size, sha256=_file_sha256(str(data_file.path), stat.st_size,
                                                                 stat.st_mtime_ns))
        except OSError as exc:
            entry.update(bytes=None, sha256=None, unreadable=exc.strerror or type(exc).__name__)
        out.append(entry)
    return out


def document(result: "RunResult", files: dict | None = None) -> dict:
    """The self-describing results.json."""
    config = result.config
    profile = config.profile
    server = result.server
    prices = profile.prices()
    answering = result.answering or {}
    return finite({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": profile.name, "profile": profile.public(),
                  "served_as": profile.name if profile.is_local else profile.model, "revision": profile.revision,
                  "dtype": result.dtype or profile.dtype},
        "server": {"kind": server_kind(config),
                   "endpoint": "chat" if config.render_mode.value == "chat" else "completions",
                   "vllm_version": server.version if server else None, "served_models": server.models if server
                   else None, "startup_s": result.timings["startup_s"], "sent_this_run": result.sent,
                   "note": None if result.sent else "this run sent nothing (its answers came from the cache): "
                                                    "what answered them is under answered.by"},
        "answered": {"answers": answering.get("answers"), "first_at": answering.get("first_at"),
                     "last_at": answering.get("last_at"), "by": answering.get("by", [])},
        "scored": {"at": iso(result.finished_at), "scoring_s": result.timings.get("scoring_s")},
        "data": {"path": str(Path(config.data).resolve()), "dataset_sha256": result.dataset.sha256,
                 "dataset_sha256_of": DATASET_DIGEST,
                 "questions": len(result.questions), "questions_in_data": len(result.dataset.questions),
                 "files": data_files(result), "groups": result.dataset.groups},
        "settings": {"protocol": config.protocol.value, "rendering": config.render_mode.value,
                     "variant": config.variant, "letter_choices": config.letter_choices,
                     "task_specific_prompt": config.task_specific_prompt, "number_only": profile.number_only,
                     "shots": shot_facts(result),
                     "temperature": 0.0,
                     "max_tokens": ({t.value: n for t, n in TASK_WISE_MAX_TOKENS.items()}
                                    if config.protocol is Protocol.TASK else
                                    {"multiple-choice": 1, "other": SKILL_WISE_MAX_TOKENS}),
                     "concurrency": config.concurrency or "default (64; 256 for a server this run started)",
                     "timeout_s": config.timeout_s, "limit": config.limit,
                     "refresh": config.refresh, "embedding_model": config.embeddings.english,
                     "multilingual_model": config.embeddings.multilingual},
        "times": {"started_at": iso(result.started_at), "finished_at": iso(result.finished_at), **result.timings},
        "software": software(),
        "status": result.status, "complete": result.status == "complete", "reason": result.reason,
        "requests": {"sent": result.sent, "cached": result.cached, "errors": result.errors,
                     "fan_out_s": round(result.seconds, 3)},
        "counts": {"questions": len(result.questions), "answered": result.answered, "errors": result.errors,
                   "unscored": result.unscored},
        "tokens": {"prompt": result.prompt_tokens, "completion": result.completion_tokens},
        "cost": {"usd": result.cost(), "usd_per_million": list(prices) if prices else None},
        "scores": result.scores.for_model(profile.name),
        "choice_probabilities": result.choice_probabilities() if config.choice_probs else None,
        "files": files or {},
    })


def samples(result: "RunResult") -> list[dict]:
    """One record per question, in data order."""
    out = []
    for question, planned, row in zip(result.questions, result.planned, result.rows.iter_rows(named=True)):
        body = planned.body
        out.append({
            "id": question.qid, "row": planned.row, "skill": question.skill, "task": question.task,
            "metric": question.metric.value, "prompt": body.get("prompt", body.get("messages")),
            "answer": row["output"], "truth": question.truth, "score": row["score"],
            "ner": {"tp": row["tp"], "fp": row["fp"], "fn": row["fn"]} if row["tp"] is not None else None,
            "unscored": row["unscored"], "official": row["official"],
            "error": row["error"], "error_message": row["error_message"],
            "finish_reason": row["finish_reason"], "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"], "latency_s": row["latency_s"],
            **({"prob_choice": row["prob_choice"], "valid_mass": row["valid_mass"]}
               if result.config.choice_probs else {})})
    return finite(out)


def official_outputs(result: "RunResult", folder: Path) -> dict:
    """`official/{data file stem}.json` for each data file whose every question has an answer."""
    answers = {row["row"]: row["output"] for row in result.rows.iter_rows(named=True)}
    written, skipped, start = [], {}, 0
    stems = Counter(f.path.stem for f in result.dataset.files)
    for data_file in result.dataset.files:
        rows = range(start, start + len(data_file.questions))
        start += len(data_file.questions)
        missing = sum(1 for r in rows if answers.get(r) is None)
        if rows.stop > len(result.questions) or missing:
            skipped[data_file.path.name] = (f"{missing} of {len(rows)} questions have no answer" if missing
                                            else "outside this run's --limit")
            continue
        if stems[data_file.path.stem] > 1:
            skipped[data_file.path.name] = (f"another data file has the stem '{data_file.path.stem}': its official "
                                            "output file would replace this one's")
            continue
        target = folder / f"{data_file.path.stem}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as handle:
            for r in rows:
                handle.write(json.dumps({"model_output": answers[r]}, ensure_ascii=False) + "\n")
        written.append(target.name)
    return {"folder": "official", "written": written, "skipped": skipped,
            "rescore": "shopping-mmlu score --data DATA --responses official/"
                       + (" --protocol task" if result.config.protocol is Protocol.TASK else "")
                       + (" --letter-choices" if result.config.letter_choices else "")}


def write_folder(result: "RunResult", output: Path, inputs: list[Path | None] | None = None) -> Path:
    """results.json, samples.jsonl and official/ in `output`, replaced as a whole; only a new or empty folder,
    or one we wrote (`paths.check_output_folder`). A link is followed. The folder gets the user's umask."""
    import os

    from evaluator.paths import check_output_folder, record_folder

    output = check_output_folder(output, [*(inputs or []), result.config.data,
                                          result.config.cache_folder / "responses"])
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    scratch.chmod(0o777 & ~umask)  # mkdtemp makes it 0700: a results folder is for colleagues too
    try:
        with (scratch / "samples.jsonl").open("w", encoding="utf-8") as handle:
            for record in samples(result):
                handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        official = official_outputs(result, scratch / "official")
        write_json_atomic(scratch / "results.json", document(result, {"samples": "samples.jsonl",
                                                                       "official_outputs": official}))
        record_folder(scratch, "shopping-mmlu results")  # what a rerun may replace: these files, unchanged
        if output.exists():
            old = output.with_name(f".{output.name}.old-{scratch.name[-8:]}")
            output.rename(old)
            scratch.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            scratch.rename(output)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return output

