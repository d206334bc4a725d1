"""`run` and `rescore`: plan the requests, answer what the cache lacks (starting a server only if needed),
keep every reply the moment it arrives, then score from the cache alone."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from evaluator.data import loaders
from evaluator.cache.responses import Answer, ResponseCache, request_key
from evaluator.client.http import Endpoint, Reply, RetryPolicy, fan_out
from evaluator.errors import InputError
from evaluator.prompts import PromptOptions, Protocol, Rendering, render
from evaluator.data.records import Question
from evaluator.scoring import ScoringOptions, score
from evaluator.scoring.aggregate import Scores
from evaluator.scoring.embeddings import EmbeddingConfig, default_cache_dir
from servers import demo_model
from servers.profiles import ModelProfile
from servers.vllm_server import VLLMServer


@dataclass(frozen=True)
class Planned:
    row: int
    qid: str
    key: str
    body: dict


@dataclass
class RunConfig:
    profile: ModelProfile
    data: Path
    protocol: Protocol = Protocol.SKILL
    rendering: Rendering | None = None  # None: the profile's
    base_url: str | None = None
    concurrency: int = 64
    limit: int | None = None
    cache_dir: Path | None = None
    refresh: bool = False
    timeout_s: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    device: str = "auto"  # where a started vLLM server runs: auto (GPU if nvidia-smi lists one), gpu or cpu
    progress: bool = True  # the live progress bar (off when several runs share a terminal)

    @property
    def render_mode(self) -> Rendering:
        return self.rendering or Rendering(self.profile.rendering)

    @property
    def cache_folder(self) -> Path:
        return self.cache_dir or default_cache_dir()


@dataclass
class RunResult:
    scores: Scores
    tasks: pl.DataFrame  # skill, task, metric, n, errors, score, tokens
    sent: int
    cached: int
    errors: int
    seconds: float

    def write_json(self, path: Path, model: str) -> None:
        """The `score` document plus the error count and the request totals."""
        self.scores.write_json(path, model, extra={
            "errors": self.errors,
            "requests": {"sent": self.sent, "cached": self.cached, "errors": self.errors,
                         "seconds": round(self.seconds, 3)}})


def weights_of(profile: ModelProfile) -> str | None:
    return demo_model.WEIGHTS_ID if profile.source == "demo" else None


def plan(questions: list[Question], config: RunConfig) -> list[Planned]:
    """The request body for every question and its cache key (model identity + endpoint + body)."""
    profile = config.profile
    rendering = config.render_mode
    options = PromptOptions(number_only=profile.number_only)
    served = profile.name if profile.is_local else profile.model
    identity = profile.identity(weights_of(profile))
    endpoint = "chat" if rendering is Rendering.CHAT else "completions"
    planned = []
    for row, question in enumerate(questions):
        prompt = render(question, config.protocol, rendering, options)
        body: dict = {"model": served, "max_tokens": prompt.max_tokens, "temperature": 0.0}
        if prompt.messages is not None:
            body["messages"] = prompt.messages
        else:
            body["prompt"] = prompt.prompt
        planned.append(Planned(row, question.qid, request_key(identity, endpoint, body), body))
    return planned


class _Progress:
    """done/total, req/s, output tok/s, errors and ETA, on one rich bar."""

    def __init__(self, total: int, console: Console, enabled: bool = True) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]:.1f} req/s"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                            TextColumn("{task.fields[errors]} errors"), TimeRemainingColumn(), console=console,
                            transient=False, disable=not enabled)
        self.task = self.bar.add_task("requests", total=total, rate=0.0, tps=0.0, errors=0)
        self.started = time.monotonic()
        self.tokens = 0
        self.errors = 0
        self.done = 0

    def update(self, reply: Reply) -> None:
        self.done += 1
        self.tokens += reply.completion_tokens or 0
        self.errors += 0 if reply.ok else 1
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, rate=self.done / elapsed, tps=self.tokens / elapsed,
                        errors=self.errors)


def _endpoint(config: RunConfig, base_url: str) -> Endpoint:
    profile = config.profile
    return Endpoint(base_url=base_url, chat=config.render_mode is Rendering.CHAT, api_key=profile.api_key(),
                    timeout_s=config.timeout_s, concurrency=config.concurrency,
                    requests_per_minute=None if profile.is_local else profile.requests_per_minute,
                    replicas=tuple(profile.replicas))


def start_server(profile: ModelProfile, cache_folder: Path, console: Console, port: int | None = None,
                 device: str = "auto", gpu_ids: list[int] | None = None) -> VLLMServer:
    weights = (str(demo_model.ensure_demo_model(cache_folder, say=console.print)) if profile.source == "demo"
               else profile.model)
    log = cache_folder / "logs" / f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    server = VLLMServer(profile, weights, log, device=device, port=port, gpu_ids=gpu_ids)
    console.print(f"Starting vLLM ({server.resolved_device()}) for '{profile.name}'; log {log}")
    started = time.monotonic()
    server.__enter__()
    console.print(f"Server ready at {server.base_url} after {time.monotonic() - started:.0f} s")
    return server


def send(config: RunConfig, todo: list[Planned], cache: ResponseCache, console: Console) -> float:
    """Answer `todo` (starting and stopping a server if the profile needs one); returns the fan-out's seconds."""
    profile = config.profile
    server = None
    base_url = config.base_url or profile.api_base
    if base_url is None:
        if not profile.is_local:
            raise InputError(f"model '{profile.name}' has no api_base; pass --base-url")
        server = start_server(profile, config.cache_folder, console, device=config.device)
        base_url = server.base_url
    by_key = {p.key: p for p in todo}
    progress = _Progress(len(todo), console, config.progress)

    def keep(key: str, reply: Reply) -> None:
        item = by_key[key]
        if reply.ok:
            cache.put_answer(key, profile.name, item.qid, item.body,
                             Answer(reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens),
                             reply.latency_s, reply.attempts)
        else:
            cache.put_error(key, profile.name, item.qid, item.body, reply.error_kind or "error", reply.status,
                            reply.message, reply.attempts, reply.latency_s)
        progress.update(reply)

    try:
        with progress.bar:
            seconds = asyncio.run(fan_out(_endpoint(config, base_url), ((p.key, p.body) for p in todo), keep,
                                          config.retry))
    finally:
        if server is not None:
            server.stop()
            console.print(f"Stopped the '{profile.name}' server")
    return seconds


def score_from_cache(questions: list[Question], planned: list[Planned], cache: ResponseCache,
                     options: ScoringOptions, model: str) -> tuple[Scores, pl.DataFrame]:
    """Scores over answered questions; a question without a cached answer counts as an error of its task."""
    answers = cache.answers([p.key for p in planned])
    answered = [p for p in planned if p.key in answers]
    table = pl.DataFrame({
        "model": [model] * len(answered),
        "row": pl.Series([p.row for p in answered], dtype=pl.UInt32),
        "output": pl.Series([answers[p.key].text for p in answered], dtype=pl.String),
    })
    scores = score(table, questions, options)
    meta = pl.DataFrame({
        "skill": [q.skill for q in questions], "task": [q.task for q in questions],
        "metric": [q.metric.value for q in questions], "answered": [p.key in answers for p in planned],
        "prompt_tokens": [(answers[p.key].prompt_tokens or 0) if p.key in answers else 0 for p in planned],
        "completion_tokens": [(answers[p.key].completion_tokens or 0) if p.key in answers else 0 for p in planned],
    })
    per_task = meta.group_by("skill", "task", maintain_order=True).agg(
        errors=(~pl.col("answered")).sum().cast(pl.Int64), first_metric=pl.col("metric").first(),
        prompt_tokens=pl.col("prompt_tokens").sum(), completion_tokens=pl.col("completion_tokens").sum())
    tasks = (per_task.join(scores.tasks.filter(pl.col("model") == model).drop("model"), on=["skill", "task"], how="left")
             .with_columns(metric=pl.coalesce("metric", "first_metric"), n=pl.col("n").fill_null(0))
             .select("skill", "task", "metric", "n", "errors", "score", "prompt_tokens", "completion_tokens"))
    return scores, tasks


def load_and_plan(config: RunConfig) -> tuple[list[Question], list[Planned]]:
    """The run's questions (the first `limit` of them) and their planned requests."""
    questions = loaders.load(config.data, config.protocol.value).questions
    questions = questions[: config.limit] if config.limit else questions
    return questions, plan(questions, config)


def pending(config: RunConfig) -> int:
    """How many of the run's requests have no cached answer (what a run would send)."""
    _, planned = load_and_plan(config)
    if config.refresh:
        return len(planned)
    cache = ResponseCache(config.cache_folder / "responses")
    try:
        return len(planned) - len(cache.answers([p.key for p in planned]))
    finally:
        cache.close()


def execute(config: RunConfig, console: Console, send_missing: bool = True) -> RunResult:
    """`run` (send_missing) or `rescore` (cache only)."""
    questions, planned = load_and_plan(config)
    cache = ResponseCache(config.cache_folder / "responses")
    try:
        have = {} if config.refresh else cache.answers([p.key for p in planned])
        todo = [p for p in planned if p.key not in have]
        seconds = 0.0
        if send_missing and todo:
            console.print(f"{len(planned)} questions: {len(have)} cached, {len(todo)} to send")
            seconds = send(config, todo, cache, console)
        elif send_missing:
            console.print(f"All {len(planned)} answers are cached: nothing to send")
        options = ScoringOptions(protocol=config.protocol, embeddings=EmbeddingConfig(cache_dir=config.cache_folder))
        scores, tasks = score_from_cache(questions, planned, cache, options, config.profile.name)
        errors = int(tasks["errors"].sum())
        cache.save_scores(config.profile.name, str(Path(config.data).resolve()), config.protocol.value,
                          config.render_mode.value, tasks)
    finally:
        cache.close()
    return RunResult(scores, tasks, sent=len(todo) if send_missing else 0,
                     cached=len(planned) - len(todo), errors=errors, seconds=seconds)
