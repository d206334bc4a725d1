"""Planning a run: each question's request body and cache key (k-shot examples included), the order they are
sent in, where a named shot pool lies, and how many requests a run would send."""

from __future__ import annotations

import os
import threading
from pathlib import Path


from evaluator.cache.responses import ResponseCache, request_key
from evaluator.client.http import logprob_fields, logprobs_unavailable
from evaluator.data import loaders
from evaluator.data.records import Question, TaskType
from evaluator.prompts import Rendering, draw_shots, render
from evaluator.runs.settings import SHOT_PARTS, Planned, RunConfig
from servers import demo_model
from servers.profiles import ModelProfile


def weights_of(profile: ModelProfile) -> str | None:
    return demo_model.WEIGHTS_ID if profile.source == "demo" else None


def speed_order(todo: list[Planned]) -> list[Planned]:
    """The order that finishes soonest: the longest expected answers (the largest token budgets) first, so
    they do not start last and hold up the end; within a budget, prompts sorted by text, so those that share
    a prefix (the system prompt, a task's instructions) arrive together and vLLM's prefix cache hits."""
    def text(item: Planned) -> str:
        body = item.body
        return body["prompt"] if "prompt" in body else "\0".join(m["content"] for m in body["messages"])

    return sorted(todo, key=lambda item: (-budget(item.body), text(item)))


def budget(body: dict) -> int:
    """The request's token budget, whichever field carries it."""
    return body.get("max_tokens") or body.get("max_completion_tokens") or 0


def plan(questions: list[Question], config: RunConfig, pool: list[Question] | None = None) -> list[Planned]:
    """The request body for every question and its cache key (model identity + endpoint + body). With
    `config.shots`, each prompt carries solved examples of its task from `pool` (default: `questions`)."""
    profile = config.profile
    rendering = config.render_mode
    options = config.prompt_options
    served = profile.name if profile.is_local else profile.model
    identity = profile.identity(weights_of(profile), config.served_dtype())
    endpoint = "chat" if rendering is Rendering.CHAT else "completions"
    shots = draw_shots(questions, questions if pool is None else pool, config.shots, config.shot_seed,
                       config.protocol, options) if config.shots else {}
    asks_logprobs = logprobs_unavailable(profile.provider, profile.reasoning, profile.reasoning_effort) is None
    planned = []
    for row, question in enumerate(questions):
        examples = shots.get(question.qid, ())
        prompt = render(question, config.protocol, rendering, options, examples)
        if profile.reasoning:  # no max_tokens and no temperature: such models refuse both
            body: dict = {"model": served, "max_completion_tokens": prompt.max_tokens + profile.reasoning_budget}
            if profile.reasoning_effort:
                body["reasoning_effort"] = profile.reasoning_effort
        else:
            body = {"model": served, "max_tokens": prompt.max_tokens, "temperature": 0.0}
        if prompt.messages is not None:
            body["messages"] = prompt.messages
        else:
            body["prompt"] = prompt.prompt
        if config.choice_probs and question.task_type is TaskType.MULTIPLE_CHOICE and asks_logprobs:
            body.update(logprob_fields(prompt.messages is not None))
        planned.append(Planned(row, question.qid, request_key(identity, endpoint, body), body, len(examples)))
    return planned


def load_and_plan(config: RunConfig, dataset: loaders.Dataset | None = None
                  ) -> tuple[loaders.Dataset, list[Question], list[Planned]]:
    """The run's data (loaded unless given), its questions (the first `limit` of them) and their planned
    requests."""
    dataset = dataset or loaders.load(config.data, config.protocol.value)
    questions = dataset.questions[: config.limit] if config.limit else dataset.questions
    pool = config.pool_data.questions if config.shot_pool is not None else dataset.questions
    return dataset, questions, plan(questions, config, pool)


def pending(config: RunConfig) -> int:
    """How many of the run's requests have no cached answer (what a run would send)."""
    _, _, planned = load_and_plan(config)
    if config.refresh:
        return len(planned)
    cache = ResponseCache(config.cache_folder / "responses")
    try:
        return len(planned) - len(cache.answers([p.key for p in planned]))
    finally:
        cache.close()


POOLS = "shot-pools"  # under the cache folder: <digest>.path holds where a named shot pool was read from


def remember_pool(config: RunConfig) -> None:
    """Note where this run's shot pool lies, under its digest, so a saved run's k-shot prompts can be
    rebuilt from its variant alone (`compare`, the HTML report). One small file per pool, written whole."""
    folder = config.cache_folder / POOLS
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{config.pool_data.sha256[:12]}.path"
    temporary = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
    temporary.write_text(str(Path(config.shot_pool).resolve()), encoding="utf-8")
    temporary.replace(target)


def changed_pool(config: RunConfig) -> str | None:
    """Why scoring `config` from the cache alone would score a run never made: its shot pool's file was run
    with other contents (its path is noted under another digest, this one never). None where it was not."""
    folder = config.cache_folder / POOLS
    digest = config.pool_data.sha256[:12]
    if (folder / f"{digest}.path").exists() or not folder.is_dir():
        return None
    where = str(Path(config.shot_pool).resolve())
    earlier = []
    for pointer in folder.glob("*.path"):
        try:
            if pointer.is_file():
                with pointer.open(encoding="utf-8") as handle:
                    if handle.read(4097) == where:
                        earlier.append((pointer.stat().st_mtime, pointer.stem))
        except (OSError, UnicodeDecodeError):
            continue
    if not earlier:
        return None
    old = max(earlier)[1]
    variant = config.variant.replace(f"pool-{digest}", f"pool-{old}")
    return (f"the shot pool has changed since it was run (variant '{variant}'; it now reads as pool-{digest}): "
            "its k-shot prompts were never asked, so nothing is scored or saved; restore the pool, or `run` to "
            "ask them")


def shot_settings(cache_folder: Path, variant: list[str]) -> dict | str:
    """shots, shot_seed and shot_pool as a saved run's variant names them; or why its pool cannot be found."""
    settings: dict = {}
    for part in variant:
        match = SHOT_PARTS.match(part)
        if match and match.group(1):
            settings["shots"] = int(match.group(1))
        elif match and match.group(2):
            settings["shot_seed"] = int(match.group(2))
        elif match:
            pointer = cache_folder / POOLS / f"{match.group(3)}.path"
            try:
                with pointer.open(encoding="utf-8") as handle:
                    settings["shot_pool"] = Path(handle.read(4096))
            except (OSError, UnicodeDecodeError):
                return f"its shot pool (pool-{match.group(3)}) was never noted in this cache"
            if not settings["shot_pool"].exists():
                return f"its shot pool {settings['shot_pool']} is no longer there"
    return settings
