"""What drives `run` and `rescore` through a run's phases: plan the requests (planning), answer what the cache
lacks (sending: a server started only if needed, every reply kept the moment it arrives), then score from
the cache alone and keep the record (record); and a saved run scored again (`rescore_saved`).

A run that cannot succeed stops early and says why: pre-flight (key, endpoint, model, one real request)
before the fan-out, a circuit breaker during it, a full disk at once. Every result says how complete it is:
`complete` (every question answered and scored), `incomplete`, or `failed` (with the reason).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from rich.console import Console

from evaluator.cache.responses import ResponseCache
from evaluator.data import loaders
from evaluator.errors import InputError
from evaluator.prompts import Protocol, Rendering, shot_shortfall
from evaluator.runs.planning import changed_pool, load_and_plan, remember_pool, shot_settings, speed_order
from evaluator.runs.record import RunResult, result, score_from_cache
from evaluator.runs.sending import send, start_server
from evaluator.runs.settings import Answered, RunConfig, Sending
from evaluator.scoring.embeddings import Embedder, prepare


MIN_FREE_BYTES = 64 * 2**20  # below this the cache cannot keep a night of answers: do not buy any


def _free_bytes(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free


def answer(config: RunConfig, console: Console, send_missing: bool = True,
           server_factory: Callable = start_server, dataset: loaders.Dataset | None = None,
           read_only: bool = False) -> Answered:
    """Plan the run and (with `send_missing`) answer what the cache lacks."""
    started_at = time.time()
    clock = time.monotonic()
    dataset, questions, planned = load_and_plan(config, dataset)
    for task, fewest in shot_shortfall(planned, questions, config.shots).items():
        config.say(console, f"[yellow]warning:[/] task {task} has {fewest} example(s) to draw from, not "
                            f"{config.shots}: its prompts carry {fewest}")
    if config.shot_pool is not None and not send_missing:
        changed = changed_pool(config)
        if changed:
            raise InputError(changed, path=config.shot_pool, field="--shot-pool")
    if config.shot_pool is not None and not read_only:
        remember_pool(config)
    folder = config.cache_folder / "responses"
    if not send_missing and not (folder / "responses.sqlite").is_file():
        raise InputError("no response cache here: nothing has been run with this --cache", path=config.cache_folder)
    cache = ResponseCache(folder, read_only=read_only)
    try:
        have = {} if config.refresh else cache.answers([p.key for p in planned])
        todo = list({p.key: p for p in planned if p.key not in have}.values())  # duplicates asked once
        if config.order == "speed":
            todo = speed_order(todo)
        sending = Sending()
        if send_missing:
            cache.put_model(config.profile.name, config.profile.public())
        if send_missing and todo:
            config.say(console, f"{len(planned)} questions: {len(planned) - len(todo)} cached, {len(todo)} to send")
            if config.on_plan is not None:
                config.on_plan(len(todo))
            if _free_bytes(folder) < MIN_FREE_BYTES:
                sending.stopped = (f"only {_free_bytes(folder) / 2**20:.0f} MiB free where the cache lives "
                                   f"({folder}): free space before buying answers that cannot be kept")
            else:
                known = next((p for p in planned if p.key in have), None)
                sending = send(config, todo, cache, console, server_factory, known)
        elif send_missing:
            config.say(console, f"All {len(planned)} answers are cached: nothing to send")
    finally:
        cache.close()
    return Answered(config, dataset, questions, planned, len(planned) - len(todo), sending, started_at, clock,
                    time.time())


def finish(runs: list[Answered], save: bool = True, embedder: Embedder | None = None) -> list[RunResult]:
    """Score runs from the cache alone, runs on the same questions and scoring options in one pass, and
    (with `save`) keep their scores; `save=False` scores without touching the cache."""
    results: list[RunResult | None] = [None] * len(runs)
    groups: dict[tuple, list[int]] = {}
    for n, run in enumerate(runs):
        key = (run.dataset.sha256, len(run.questions), run.config.scoring, str(run.config.cache_folder))
        groups.setdefault(key, []).append(n)
    for members in groups.values():
        first = runs[members[0]]
        scoring_clock = time.monotonic()
        cache = ResponseCache(first.config.cache_folder / "responses", read_only=not save)
        try:
            scored = score_from_cache(first.questions, [(runs[n].config.profile.name, runs[n].planned)
                                                        for n in members], cache, first.config.scoring, embedder)
            scoring_s = (time.monotonic() - scoring_clock) / len(members)
            for n in members:
                results[n] = result(runs[n], *scored[runs[n].config.profile.name], scoring_s, cache, save)
        finally:
            cache.close()
    return results


def execute(config: RunConfig, console: Console, send_missing: bool = True,
            server_factory: Callable = start_server, save: bool = True,
            dataset: loaders.Dataset | None = None) -> RunResult:
    """`run` (send_missing) or `rescore` (cache only): `answer`, then `finish`. A run that may send loads its
    scoring models meanwhile (`embeddings.prepare`: a first run's one-time costs, off the critical path)."""
    stop, loading = threading.Event(), None
    if send_missing:
        dataset = dataset or loaders.load(config.data, config.protocol.value)
        loading = prepare(config.scoring.embeddings,
                          dataset.questions[: config.limit] if config.limit else dataset.questions, stop)
    try:
        return finish([answer(config, console, send_missing, server_factory, dataset, read_only=not save)], save)[0]
    finally:  # on every way out (a failed pre-flight, the breaker, Ctrl-C): no load left running at exit
        if loading is not None:
            stop.set()
            loading.join()


def rescore_saved(cache_folder: Path, record: dict) -> RunResult | str:
    """A saved run scored again, per question, without saving anything; or why it cannot be (its data
    moved or changed)."""
    data = Path(record["data"])
    if not data.exists():
        return f"its data {data} is no longer there"
    recorded = _profile_of(record)  # None for a run saved before runs kept their profile: the model's latest
    variant = record["variant"].split("+")
    shots = shot_settings(cache_folder, variant)
    if isinstance(shots, str):
        return shots
    config = RunConfig(profile=recorded_profile(record["model"], cache_folder, recorded), data=data,
                       protocol=Protocol(record["protocol"]), rendering=Rendering(record["rendering"]),
                       cache_dir=cache_folder, letter_choices="letters" in variant,
                       task_specific_prompt="task-prompt" in variant, choice_probs="probs" in variant,
                       progress=False, **shots)
    try:
        if config.variant != record["variant"]:
            if config.shot_pool is not None and any(part.startswith("pool-") for part in variant):
                return f"its shot pool {config.shot_pool} has changed since it was scored"
            return f"its prompt options ('{record['variant']}') are not ones this version can rebuild"
    except InputError as exc:
        return f"its shot pool cannot be read: {exc}"
    try:
        dataset = loaders.load(data, config.protocol.value)
    except InputError as exc:
        return f"its data cannot be read: {exc}"
    if record["data_sha256"] not in (dataset.sha256, f"path:{data}"):
        return f"its data {data} has changed since it was scored"
    if record["questions"] < len(dataset.questions):
        config.limit = record["questions"]
    return execute(config, Console(quiet=True), send_missing=False, save=False, dataset=dataset)


def recorded_profile(model: str, cache_folder: Path, recorded: dict | None = None):
    """The profile `model` was run with: `recorded` (a saved run's), else as the cache recorded the model,
    else the registry's, else ad hoc."""
    from servers.profiles import get_profile

    if recorded is None:
        store = ResponseCache(cache_folder / "responses", read_only=True)
        try:
            recorded = store.model(model)
        finally:
            store.close()
    return get_profile(model, adhoc=True, recorded=recorded)


def _profile_of(record: dict) -> dict | None:
    """The profile a saved run was answered with, as its record keeps it (the model's name may since have
    been run with other settings)."""
    try:
        profile = json.loads(record.get("details") or "").get("profile")
    except (TypeError, ValueError, AttributeError):
        return None
    return profile if isinstance(profile, dict) else None
