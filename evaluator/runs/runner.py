"""`run` and `rescore`: plan the requests, answer what the cache lacks (starting a server only if needed),
keep every reply the moment it arrives, then score from the cache alone.

A run that cannot succeed stops early and says why: pre-flight (key, endpoint, model, one real request)
before the fan-out, a circuit breaker during it, a full disk at once. Every result says how complete it is:
`complete` (every question answered and scored), `incomplete`, or `failed` (with the reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text

from evaluator.cache.responses import Answer, CacheFull, ResponseCache, process_owner, request_key, run_key
from evaluator.client.http import (LOGPROBS_REFUSED, Endpoint, Halt, Reply, RetryPolicy, fan_out, logprob_fields,
                                   logprobs_unavailable)
from evaluator.data import loaders
from evaluator.data.records import Question, TaskType
from evaluator.errors import InputError
from evaluator.paths import safe_name
from evaluator.prompts import PromptOptions, Protocol, Rendering, draw_shots, render, shot_shortfall
from evaluator.provenance import git_commit, iso, server_kind
from evaluator.redact import redact, strip_url_credentials
from evaluator.runs.breaker import Breaker, BreakerPolicy
from evaluator.runs.preflight import PreflightFailed, ServerFacts, preflight
from evaluator.scoring import ScoringOptions, questions_frame, score_rows, task_totals
from evaluator.scoring.aggregate import Scores, aggregate
from evaluator.scoring.embeddings import Embedder, EmbeddingConfig, default_cache_dir, prepare
from servers import demo_model
from servers.profiles import ModelProfile
from servers.vllm_server import ServerStartError, VLLMServer, cpu_dtype
from servers.weights import ensure_weights

MIN_FREE_BYTES = 64 * 2**20  # below this the cache cannot keep a night of answers: do not buy any


@dataclass(frozen=True)
class Planned:
    row: int
    qid: str
    key: str
    body: dict
    shots: int = 0  # solved examples in its prompt (fewer than asked where its task has fewer)


MAX_SHOTS = 64
SHOT_PARTS = re.compile(r"^(?:(\d+)-shot|seed-(\d+)|pool-([0-9a-f]{12}))$")  # the variant's k-shot parts


@dataclass
class RunConfig:
    profile: ModelProfile
    data: Path
    protocol: Protocol = Protocol.SKILL
    rendering: Rendering | None = None  # None: the profile's
    base_url: str | None = None
    started_s: float | None = None  # `base_url` is a vLLM server a suite started for this run, in this many s
    concurrency: int | None = None  # None: 64, or 256 for a vLLM server this run starts (it queues the rest)
    limit: int | None = None
    cache_dir: Path | None = None
    refresh: bool = False
    timeout_s: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    device: str = "auto"  # where a started vLLM server runs: auto (GPU if nvidia-smi lists one), gpu or cpu
    progress: bool = True  # the live progress bar (off when several runs share a terminal)
    letter_choices: bool = False  # task-wise --use_letter_choices
    task_specific_prompt: bool = False  # task-wise --use_task_specific_prompt
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    preflight: bool = True
    label: str = ""  # printed before each line (a suite names the model)
    observer: Callable[[Reply], None] | None = None  # sees every reply (a suite's overall progress)
    on_plan: Callable[[int], None] | None = None  # told how many requests it will send (a suite's progress)
    batch: bool = False  # through the provider's batch API (also when the profile says batch = true)
    batch_poll_s: float = 30.0
    batch_limit: int | None = None  # fewer requests per batch than the provider allows
    cancel: threading.Event | None = None  # set from elsewhere (a lost Ray node) to stop the fan-out at once
    order: str = "speed"  # "speed": longest expected answers first, shared prefixes together; "data": as loaded
    shots: int = 0  # solved examples before each question (k-shot prompting; 0: the official zero-shot prompt)
    shot_seed: int = 0  # which examples are drawn
    shot_pool: Path | None = None  # the data the examples come from (None: the run's own data, never the question)
    choice_probs: bool = False  # multiple-choice requests also ask for the first token's top log-probabilities

    def __post_init__(self) -> None:
        if not 0 <= self.shots <= MAX_SHOTS:
            raise InputError(f"--shots takes 0 to {MAX_SHOTS} examples, not {self.shots}", field="--shots")
        if not 0 <= self.shot_seed < 2**63:
            raise InputError(f"--shot-seed takes 0 to 2^63-1, not {self.shot_seed}", field="--shot-seed")
        if not self.shots and (self.shot_seed or self.shot_pool is not None):
            raise InputError("--shot-seed and --shot-pool choose the examples of a k-shot prompt: give --shots K",
                             field="--shots")
        if self.protocol is Protocol.SKILL and (self.letter_choices or self.task_specific_prompt):
            raise InputError("--letter-choices and --task-specific-prompt are options of the task-wise protocol "
                             "(--protocol task)")
        if self.uses_batch and self.profile.provider not in ("openai", "anthropic"):
            raise InputError(f"batch mode needs an OpenAI or Anthropic profile; '{self.profile.name}' is "
                             f"{self.profile.provider}")

    @property
    def uses_batch(self) -> bool:
        return self.batch or self.profile.batch

    @property
    def render_mode(self) -> Rendering:
        return self.rendering or Rendering(self.profile.rendering)

    @property
    def cache_folder(self) -> Path:
        return self.cache_dir or default_cache_dir()

    @property
    def prompt_options(self) -> PromptOptions:
        return PromptOptions(number_only=self.profile.number_only, letter_choices=self.letter_choices,
                             task_specific_prompt=self.task_specific_prompt)

    @property
    def variant(self) -> str:
        """The prompt options beyond the protocol's defaults, as they name a run ('' for none): a k-shot run
        adds '3-shot', 'seed-7' (a seed other than 0) and 'pool-<its data's sha256, 12 hex>' (a named pool), so
        runs ranked together asked the same examples."""
        parts = [n for n, on in (("letters", self.letter_choices), ("task-prompt", self.task_specific_prompt)) if on]
        if self.shots:
            parts.append(f"{self.shots}-shot")
            if self.shot_seed:
                parts.append(f"seed-{self.shot_seed}")
            if self.shot_pool is not None:
                parts.append(f"pool-{self.pool_data.sha256[:12]}")
        if self.choice_probs:  # other requests (so other answers' keys): a run of its own, rebuilt by rescore
            parts.append("probs")
        return "+".join(parts)

    @functools.cached_property
    def pool_data(self) -> loaders.Dataset:
        """The named shot pool, read once (bad input: one line naming the file)."""
        assert self.shot_pool is not None
        pool = loaders.load(self.shot_pool, self.protocol.value)
        if not pool.questions:
            raise InputError("the shot pool has no questions", path=self.shot_pool, field="--shot-pool")
        return pool

    @property
    def scoring(self) -> ScoringOptions:
        embeddings = self.embeddings
        if embeddings.cache_dir is None:
            embeddings = dataclasses.replace(embeddings, cache_dir=self.cache_folder)
        return ScoringOptions(protocol=self.protocol, letter_choices=self.letter_choices, embeddings=embeddings)

    def served_dtype(self) -> str | None:
        """The dtype vLLM-CPU computes in where the profile leaves it to the machine (part of the answers'
        identity: bfloat16 and float32 may answer differently); None where the profile decides."""
        if self.profile.is_local and self.profile.dtype == "auto" and VLLMServer.device_for(self.device) == "cpu":
            return cpu_dtype()
        return None

    def say(self, console: Console, message: str) -> None:
        console.print(f"{self.label}{message}" if self.label else message)


@dataclass
class RunResult:
    """Everything one run did and scored; `status` is complete, incomplete or failed."""

    config: RunConfig
    dataset: loaders.Dataset
    questions: list[Question]
    planned: list[Planned]
    scores: Scores
    rows: pl.DataFrame  # one per question: row, qid, skill, task, metric, answered, score, ... (samples)
    tasks: list[dict]
    status: str
    reason: str | None
    sent: int
    cached: int
    errors: int
    unscored: int
    seconds: float  # the fan-out: first send to last reply
    timings: dict[str, float]
    started_at: float
    finished_at: float
    server: ServerFacts | None
    dtype: str | None
    kept: dict | None = None  # the saved run that was kept instead of this one (it covered more)
    answering: dict = field(default_factory=dict)  # when its answers arrived and the sessions that sent them

    @property
    def overall(self) -> float | None:
        return self.scores.overall_score(self.config.profile.name)

    @property
    def answered(self) -> int:
        return len(self.questions) - self.errors

    @property
    def prompt_tokens(self) -> int:
        return int(sum(t["prompt_tokens"] for t in self.tasks))

    @property
    def completion_tokens(self) -> int:
        return int(sum(t["completion_tokens"] for t in self.tasks))

    def cost(self) -> float | None:
        """USD at the prices of when it ran: live answers at the live rate, batch answers at the batch rate."""
        profile = self.config.profile
        if profile.prices() is None:
            return None
        total = 0.0
        for batch, part in self.rows.filter(pl.col("answered")).group_by(pl.col("source").is_not_null()):
            prices = profile.prices(batch=bool(batch[0]))
            total += (part["prompt_tokens"].fill_null(0).sum() * prices[0]
                      + part["completion_tokens"].fill_null(0).sum() * prices[1]) / 1e6
        return total

    def document(self) -> dict:
        """The `--json` document: the `score` document plus completeness and request totals."""
        doc = self.scores.for_model(self.config.profile.name)
        doc.update(status=self.status, reason=self.reason, errors=self.errors, unscored=self.unscored,
                   requests={"sent": self.sent, "cached": self.cached, "errors": self.errors,
                             "seconds": round(self.seconds, 3)})
        if self.config.choice_probs:
            doc["choice_probabilities"] = self.choice_probabilities()
        return doc

    def choice_probabilities(self) -> dict:
        """The multiple-choice view from log-probabilities (`--choice-probs`), beside the official scores and
        aggregated as they are."""
        from evaluator.scoring.choice_probs import view

        found = view(self.rows, self.config.protocol.value)
        why = _no_logprobs(self.config.profile, self.rows)
        if why is not None and not found["available"]:
            return {**found, "note": f"not available for this model: {why}"}
        return found

    def write_json(self, path: Path) -> None:
        from evaluator.scoring.aggregate import write_json_atomic

        write_json_atomic(path, self.document())


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


class Throughput:
    """Replies per second over the last `window_s` seconds, timed from the first reply in that window to the
    last: a server's start-up (or a pause between models) before the replies is never averaged in, so the
    rate is the fan-out's. Counted per second, so memory stays small at any rate. `amount` counts replies
    (1 each) or what they carry (tokens)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.seconds: list[list] = []  # [whole second, amount in it, time and amount of its first reply]
        self.last = 0.0

    def add(self, now: float | None = None, amount: int = 1) -> None:
        now = time.monotonic() if now is None else now
        if self.seconds and self.seconds[-1][0] == int(now):
            self.seconds[-1][1] += amount
        else:
            self.seconds.append([int(now), amount, now, amount])
        self.last = now
        while self.seconds[0][0] < now - self.window_s:
            self.seconds.pop(0)

    def rate(self, now: float | None = None) -> float | None:
        """Per second after the window's first reply; None until replies are a moment apart. With `now` (the
        clock when shown) the span runs to now, so a stalled fan-out's rate falls instead of standing still."""
        end = self.last if now is None else max(now, self.last)
        if not self.seconds or self.last - self.seconds[0][2] < 0.05:
            return None
        return (sum(s[1] for s in self.seconds) - self.seconds[0][3]) / (end - self.seconds[0][2])


STALL_S = 30.0  # no reply for this long: the time left says so instead of a guess


def clock_left(left: int, throughput: Throughput, now: float) -> str:
    """The time left as the clock sees it now, not as the last reply left it: a stall is named."""
    quiet = now - throughput.last if throughput.seconds else 0.0
    text = time_left(left, throughput.rate(now))
    return f"{text} (no reply for {quiet:.0f} s)" if left > 0 and quiet >= STALL_S else text


class LiveText(ProgressColumn):
    """A column drawn from the clock at each refresh, not from the last update."""

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self.text = text

    def render(self, task) -> Text:
        return Text(self.text())


def time_left(left: int, rate: float | None) -> str:
    """How long `left` replies take at `rate`: '~40 s left', '~12 min left', '~2 h 05 min left'; 'all done';
    'time left unknown yet' before the replies give a rate."""
    if left <= 0:
        return "all done"
    if not rate:
        return "time left unknown yet"
    seconds = left / rate
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s left"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min left"
    return f"~{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min left"


class _Progress:
    """done/total, the fan-out's req/s and output tok/s, errors, and the sending time left, on one rich bar."""

    def __init__(self, total: int, console: Console, enabled: bool = True, label: str = "requests") -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} req/s"), TextColumn("{task.fields[tps]} tok/s"),
                            TextColumn("{task.fields[errors]} errors"),
                            LiveText(lambda: "sending: " + clock_left(self.total - self.done, self.throughput,
                                                                      time.monotonic())),
                            console=console, transient=False, disable=not enabled)
        self.task = self.bar.add_task(label, total=total, rate="-", tps="-", errors=0)
        self.total = total
        self.throughput = Throughput()
        self.tokens = Throughput()
        self.errors = 0
        self.done = 0

    def update(self, reply: Reply) -> None:
        now = time.monotonic()
        self.done += 1
        self.throughput.add(now)
        self.tokens.add(now, reply.completion_tokens or 0)
        self.errors += 0 if reply.ok else 1
        rate, tps = self.throughput.rate(), self.tokens.rate()
        self.bar.update(self.task, advance=1, rate="-" if rate is None else f"{rate:.1f}",
                        tps="-" if tps is None else f"{tps:.0f}", errors=self.errors)


LOCAL_CONCURRENCY = 256  # a server we started serves only us: let its scheduler see the whole queue
REMOTE_CONCURRENCY = 64


def endpoint_for(config: RunConfig, base_url: str, started_here: bool = False) -> Endpoint:
    profile = config.profile
    concurrency = config.concurrency or (LOCAL_CONCURRENCY if started_here else REMOTE_CONCURRENCY)
    url, user, password = strip_url_credentials(base_url)  # credentials in a URL go as auth, never stored
    basic = (user or "", password or "") if user or password else None
    return Endpoint(base_url=url, chat=config.render_mode is Rendering.CHAT, api_key=profile.api_key(),
                    basic_auth=basic,
                    timeout_s=config.timeout_s, concurrency=concurrency,
                    requests_per_minute=None if profile.is_local else profile.requests_per_minute,
                    reasoning=profile.reasoning,
                    replicas=tuple(strip_url_credentials(u)[0] for u in profile.replicas))


def start_server(profile: ModelProfile, cache_folder: Path, console: Console, port: int | None = None,
                 device: str = "auto", gpu_ids: list[int | str] | None = None, host: str = "127.0.0.1") -> VLLMServer:
    weights = (str(demo_model.ensure_demo_model(cache_folder, say=console.print)) if profile.source == "demo"
               else profile.model)
    log = cache_folder / "logs" / f"{safe_name(profile.name)}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if profile.source == "hub":  # a first download must not count against the start-up limit
        weights = ensure_weights(profile, log, say=lambda line: console.print(line, markup=False, highlight=False))
    server = VLLMServer(profile, weights, log, device=device, port=port, gpu_ids=gpu_ids, host=host,
                        compile_cache=cache_folder / "vllm-compile")
    console.print(f"Starting vLLM ({server.resolved_device()}, {server.dtype()}) for '{profile.name}'; log {log}")
    started = time.monotonic()
    server.__enter__()
    server.startup_s = time.monotonic() - started
    console.print(f"Server ready at {server.base_url} after {server.startup_s:.0f} s")
    return server


@dataclass
class _Sending:
    sent: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    stopped: str | None = None
    server: ServerFacts | None = None


def _free_bytes(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free


PREFLIGHT_PROBES = 3  # questions pre-flight asks at most, while each is refused


def _endpoint_answers(config: RunConfig, endpoint: Endpoint, known: Planned) -> bool:
    """Whether the endpoint still answers a question it answered before (the reply is not kept)."""
    profile = config.profile
    try:
        preflight(profile, endpoint, profile.name if profile.is_local else profile.model, known.body, config.retry)
    except PreflightFailed:
        return False
    return True


def send(config: RunConfig, todo: list[Planned], cache: ResponseCache, console: Console,
         server_factory: Callable = start_server, known: Planned | None = None) -> _Sending:
    """Answer `todo` (starting and stopping a server if the profile needs one): pre-flight, then the fan-out
    under the breaker, sending only what no other live run is already fetching. Pre-flight proves the
    endpoint, not a question. It asks up to three questions until one is answered; a refusal of a question
    (a 400 such as a content filter or a prompt too long) is that question's error row, and the fan-out goes
    on under the breaker. Any other failure fails the model, unless the model has answers already and still
    answers `known` (one answered before, asked again and not kept): then only these questions fail, and the
    model stays resumable."""
    profile = config.profile
    if profile.retired_by():
        raise InputError(f"'{profile.name}' ({profile.model}) was retired by its provider on {profile.retired}: "
                         f"its {len(todo)} missing answer(s) cannot be asked; its cached ones can still be "
                         "re-scored (rescore, report)")
    outcome = _Sending()
    if config.uses_batch:
        from evaluator.runs.batch import send_batch

        send_batch(config, todo, cache, console, outcome)
        return outcome
    server = None
    base_url = config.base_url or profile.api_base
    if base_url is None and not profile.is_local:
        raise InputError(f"model '{profile.name}' has no api_base; pass --base-url")
    owner = process_owner()
    by_key = {p.key: p for p in todo}
    progress = _Progress(len(todo), console, config.progress, f"{config.label}requests")
    breaker = Breaker(config.breaker)

    def keep(key: str, reply: Reply, check: bool = True) -> None:
        item = by_key[key]
        if reply.ok:
            cache.put_answer(key, profile.name, item.qid, item.body,
                             Answer(reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens,
                                    logprobs=reply.logprobs), reply.latency_s, reply.attempts)
        else:
            cache.put_error(key, profile.name, item.qid, item.body, reply.error_kind or "error", reply.status,
                            redact(reply.message), reply.attempts, reply.latency_s)
        outcome.sent += 1
        progress.update(reply)
        if config.observer is not None:
            config.observer(reply)
        reason = breaker.see(reply) if check else None
        if reason:
            raise Halt(reason)

    renewing = threading.Event()

    def renew() -> None:
        while not renewing.wait(30.0):
            try:
                cache.renew_claims(owner)
            except Exception:  # noqa: BLE001: a missed renewal only shortens the lease
                pass

    renewer = threading.Thread(target=renew, daemon=True)
    try:
        if base_url is None:
            try:
                server = server_factory(profile, config.cache_folder, console, device=config.device)
            except ServerStartError as exc:
                outcome.stopped = f"the vLLM server did not start: {exc}"
                return outcome
            base_url = server.base_url
            outcome.startup_s = getattr(server, "startup_s", 0.0)
        if config.started_s is not None:
            outcome.startup_s = config.started_s
        endpoint = endpoint_for(config, base_url, started_here=server is not None or config.started_s is not None)
        served = profile.name if profile.is_local else profile.model
        remaining = list(todo)
        mine = cache.claim([p.key for p in remaining], owner, config.refresh)
        probes = [p for p in remaining if p.key in mine][:PREFLIGHT_PROBES] if config.preflight else []
        for number, probe in enumerate(probes, 1):  # each answer or refusal is kept like any other
            try:
                outcome.server, reply = preflight(profile, endpoint, served, probe.body, config.retry)
            except PreflightFailed as exc:
                if exc.reply is not None:
                    keep(probe.key, exc.reply, check=False)
                remaining = [p for p in remaining if p is not probe]
                if exc.question_only:  # the endpoint answered, and refused this question only
                    continue
                if exc.reply is not None and known is not None and _endpoint_answers(config, endpoint, known):
                    break  # only these questions fail: the fan-out goes on, under the breaker
                tried = f" ({number} questions tried)" if number > 1 else ""
                outcome.stopped = redact(f"pre-flight: {exc}{tried}")
                return outcome
            keep(probe.key, reply, check=False)
            remaining = [p for p in remaining if p is not probe]
            break
        renewer.start()
        since, told = time.time(), False
        with progress.bar:
            while remaining:
                mine = cache.claim([p.key for p in remaining], owner, config.refresh)
                batch = [p for p in remaining if p.key in mine]
                if batch:
                    try:
                        outcome.seconds += asyncio.run(fan_out(endpoint, ((p.key, p.body) for p in batch), keep,
                                                               config.retry, cancel=config.cancel))
                    except Halt as halt:
                        outcome.stopped = str(halt)
                        return outcome
                    remaining = [p for p in remaining if p.key not in mine]
                    continue
                if not config.refresh:  # answered meanwhile by another run
                    answered = cache.answers([p.key for p in remaining])
                    remaining = [p for p in remaining if p.key not in answered]
                    if not remaining:
                        break
                if not told:  # another live run is fetching these: wait for its answers, or its claims to end
                    config.say(console, f"{len(remaining)} question(s) are being fetched by another run on this "
                                        "cache: waiting")
                    told = True
                time.sleep(1.0)
                keys = [p.key for p in remaining]
                answered = cache.answers(keys)
                failed = {k for k, e in cache.errors(keys).items() if e[3] >= since}
                remaining = [p for p in remaining if p.key not in answered and p.key not in failed]
    except CacheFull as exc:
        outcome.stopped = f"{exc}; requests in flight were lost. Free space and rerun: answers kept so far are reused"
    finally:
        renewing.set()
        if renewer.is_alive():
            renewer.join(10)
        try:
            cache.release_claims(owner)
        except Exception:  # noqa: BLE001: claims lapse on their own
            pass
        if server is not None:
            server.stop()
            config.say(console, f"Stopped the '{profile.name}' server")
    return outcome


def score_from_cache(questions: list[Question], runs: list[tuple[str, list[Planned]]], cache: ResponseCache,
                     options: ScoringOptions, embedder: Embedder | None = None
                     ) -> dict[str, tuple[Scores, pl.DataFrame, list[dict]]]:
    """For each (model, planned) on the same questions: scores over answered questions (a question without a
    cached answer counts as an error of its task), the per-question rows, and the per-task table with counts
    and tokens. Every model's answers are scored in one pass, so texts shared between models (the
    references above all) are encoded once."""
    frame = questions_frame(questions, options)
    found, tables = {}, []
    for model, planned in runs:
        keys = [p.key for p in planned]
        answers = cache.answers(keys)
        errors = cache.errors([k for k in keys if k not in answers])
        found[model] = (answers, errors)
        answered = [p for p in planned if p.key in answers]
        tables.append(pl.DataFrame({
            "model": pl.Series([model] * len(answered), dtype=pl.String),
            "row": pl.Series([p.row for p in answered], dtype=pl.UInt32),
            "output": pl.Series([answers[p.key].text for p in answered], dtype=pl.String),
        }))
    all_rows = score_rows(pl.concat(tables), frame, options, embedder)
    totals = task_totals(frame)
    out = {}
    for model, planned in runs:
        answers, errors = found[model]
        scored_rows = all_rows.filter(pl.col("model") == model)
        scores = aggregate(scored_rows, options.protocol.value, totals, [model])
        out[model] = (scores, *_per_question(frame, planned, answers, errors, scored_rows, scores, model))
    return out


def _per_question(frame: pl.DataFrame, planned: list[Planned], answers: dict, errors: dict,
                  scored_rows: pl.DataFrame, scores: Scores, model: str) -> tuple[pl.DataFrame, list[dict]]:
    def error_of(p: Planned) -> str | None:
        if p.key in answers:
            return None
        if p.key not in errors:
            return "not asked yet"
        kind, status = errors[p.key][0], errors[p.key][1]
        return f"{kind}" + (f" {status}" if status else "")

    def field(name: str) -> list:
        return [getattr(answers[p.key], name) if p.key in answers else None for p in planned]

    meta = pl.DataFrame({
        "row": pl.Series(range(len(planned)), dtype=pl.UInt32),
        "answered": [p.key in answers for p in planned],
        "finish_reason": pl.Series(field("finish_reason"), dtype=pl.String),
        "prompt_tokens": pl.Series(field("prompt_tokens"), dtype=pl.Int64),
        "completion_tokens": pl.Series(field("completion_tokens"), dtype=pl.Int64),
        "latency_s": pl.Series(field("latency_s"), dtype=pl.Float64),
        "source": pl.Series(field("source"), dtype=pl.String),
        "error": pl.Series([error_of(p) for p in planned], dtype=pl.String),
        "error_message": pl.Series([errors[p.key][2] if p.key in errors and p.key not in answers else None
                                    for p in planned], dtype=pl.String),
        **_choice_columns(planned, answers),
    })
    rows = (frame.select("row", "qid", "skill", "task", "metric", "truth_text")
            .join(meta, on="row", how="left")
            .join(scored_rows.select("row", "output", "score", "tp", "fp", "fn", "unscored", "official"),
                  on="row", how="left")
            .sort("row"))
    tokens = rows.group_by("skill", "task").agg(prompt_tokens=pl.col("prompt_tokens").fill_null(0).sum(),
                                                completion_tokens=pl.col("completion_tokens").fill_null(0).sum())
    tasks = (scores.tasks.filter(pl.col("model") == model).drop("model")
             .join(tokens, on=["skill", "task"], how="left", maintain_order="left"))
    return rows, tasks.to_dicts()


def _choice_columns(planned: list[Planned], answers: dict) -> dict[str, pl.Series]:
    """prob_choice and valid_mass (`choice_probs.pick`) for the answers that kept log-probabilities."""
    from evaluator.scoring.choice_probs import labels_of, pick

    picks, refused = [], []
    for p in planned:
        logprobs = answers[p.key].logprobs if p.key in answers else None
        refused.append(logprobs == LOGPROBS_REFUSED)
        if logprobs is None:
            picks.append((None, None))
            continue
        text = p.body["prompt"] if "prompt" in p.body else p.body["messages"][-1]["content"]
        picks.append(pick(logprobs, labels_of(text)))
    return {"prob_choice": pl.Series([c for c, _ in picks], dtype=pl.String),
            "valid_mass": pl.Series([m for _, m in picks], dtype=pl.Float64),
            "logprobs_refused": pl.Series(refused, dtype=pl.Boolean)}


def _no_logprobs(profile: ModelProfile, rows: pl.DataFrame) -> str | None:
    """Why a model's answers carry no log-probabilities: never asked of it, or refused by its endpoint."""
    why = logprobs_unavailable(profile.provider, profile.reasoning, profile.reasoning_effort)
    if why is None and rows["logprobs_refused"].any():
        why = "its endpoint refused them (a 400 naming logprobs); its questions were asked without them"
    return why


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


def _status(stopped: str | None, errors: int, unscored: int, questions: int) -> str:
    if stopped or (questions and errors == questions):
        return "failed"
    return "complete" if errors == 0 and unscored == 0 else "incomplete"


@dataclass
class Answered:
    """A run whose sending is over: what it planned, what it sent, and why it stopped (if it did); scoring
    comes next, in `finish` (a suite's scoring stage, for every model of the night)."""

    config: RunConfig
    dataset: loaders.Dataset
    questions: list[Question]
    planned: list[Planned]
    cached: int
    sending: _Sending
    started_at: float
    clock: float
    answered_at: float = 0.0  # when its sending ended


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
        sending = _Sending()
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
                results[n] = _result(runs[n], *scored[runs[n].config.profile.name], scoring_s, cache, save)
        finally:
            cache.close()
    return results


def _result(run: Answered, scores: Scores, rows: pl.DataFrame, tasks: list[dict], scoring_s: float,
            cache: ResponseCache, save: bool) -> RunResult:
    config, sending = run.config, run.sending
    errors = int(sum(t["errors"] for t in tasks))
    unscored = int(sum(t["unscored"] for t in tasks))
    status = _status(sending.stopped, errors, unscored, len(run.questions))
    reason = redact(sending.stopped) if sending.stopped else (  # the breaker's reason quotes a reply
        f"no question answered ({errors} errors)" if status == "failed" else
        _why_incomplete(rows, scores) if status == "incomplete" else None)
    result = RunResult(
        config=config, dataset=run.dataset, questions=run.questions, planned=run.planned, scores=scores, rows=rows,
        tasks=tasks, status=status, reason=reason, sent=sending.sent, cached=run.cached, errors=errors,
        unscored=unscored, seconds=sending.seconds,
        timings={"startup_s": round(sending.startup_s, 3), "fan_out_s": round(sending.seconds, 3),
                 "scoring_s": round(scoring_s, 3), "total_s": round(time.monotonic() - run.clock, 3)},
        started_at=run.started_at, finished_at=time.time(), server=sending.server, dtype=config.served_dtype())
    result.answering = _answering(run, cache)
    if save:
        try:
            result.kept = cache.save_run(_record(result), _task_records(tasks))
        except CacheFull as exc:
            result.status = "failed"
            result.reason = (result.reason + "; " if result.reason else "") + f"scores not saved: {exc}"
    return result


def _why_incomplete(rows: pl.DataFrame, scores: Scores) -> str:
    """Why an incomplete run is: its questions without an answer by error kind, its answers not scored by
    reason (the three most common of each)."""
    parts = []
    missing = rows.filter(pl.col("error").is_not_null())["error"].value_counts(sort=True)
    if missing.height:
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in missing.head(3).iter_rows())
        parts.append(f"{int(missing['count'].sum())} question(s) have no answer ({kinds}"
                     + (", ..." if missing.height > 3 else "") + ")")
    unscored = scores.unscored.group_by("reason").agg(pl.col("n").sum()).sort("n", descending=True)
    if unscored.height:
        why = "; ".join(f"{r} ({n})" for r, n in unscored.select("reason", "n").head(3).iter_rows())  # whole
        parts.append(f"{int(unscored['n'].sum())} answer(s) not scored: {why}")
    return "; ".join(parts) or "not every question was answered and scored"


def _session(run: Answered) -> dict | None:
    """This run's answering session, kept with its run record: when it sent, how many, to what server, by
    which version of ours (None where it sent nothing)."""
    from evaluator import __version__

    sending, config = run.sending, run.config
    if not sending.sent:
        return None
    facts = sending.server
    return {"started_at": iso(run.started_at), "finished_at": iso(run.answered_at or time.time()),
            "sent": sending.sent, "server": server_kind(config), "batch": config.uses_batch,
            "vllm_version": facts.version if facts else None,
            "served_models": facts.models[:20] if facts else None,
            "startup_s": round(sending.startup_s, 3), "fan_out_s": round(sending.seconds, 3),
            "dtype": config.served_dtype(), "shopping_mmlu": __version__, "git_commit": git_commit()}


def _answering(run: Answered, cache: ResponseCache) -> dict:
    """When this run's answers arrived (first and last, from the cache) and the sessions that sent them:
    the saved record's, then this run's."""
    from evaluator.cache.responses import merge_sessions, sessions_of

    count, first, last = cache.answer_span(list({p.key for p in run.planned}))
    saved = cache.saved_run(run_key(run.config.profile.name, run.dataset.sha256, run.config.protocol.value,
                                    run.config.render_mode.value, run.config.variant))
    session = _session(run)
    sessions = merge_sessions(sessions_of(saved["details"]) if saved else [], [session] if session else [])
    return {"answers": count, "first_at": iso(first) if first is not None else None,
            "last_at": iso(last) if last is not None else None, "by": sessions}


def execute(config: RunConfig, console: Console, send_missing: bool = True,
            server_factory: Callable = start_server, save: bool = True,
            dataset: loaders.Dataset | None = None) -> RunResult:
    """`run` (send_missing) or `rescore` (cache only): `answer`, then `finish`. A run that may send loads its
    scoring models meanwhile (`embeddings.prepare`: a first run's one-time costs, off the critical path)."""
    if send_missing:
        dataset = dataset or loaders.load(config.data, config.protocol.value)
        prepare(config.scoring.embeddings, dataset.questions[: config.limit] if config.limit else dataset.questions)
    return finish([answer(config, console, send_missing, server_factory, dataset, read_only=not save)], save)[0]


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


def _shot_settings(cache_folder: Path, variant: list[str]) -> dict | str:
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


def rescore_saved(cache_folder: Path, record: dict) -> RunResult | str:
    """A saved run scored again, per question, without saving anything; or why it cannot be (its data
    moved or changed)."""
    from servers.profiles import get_profile

    data = Path(record["data"])
    if not data.exists():
        return f"its data {data} is no longer there"
    recorded = _profile_of(record)
    if recorded is None:  # a run saved before runs kept their profile: the model's latest
        store = ResponseCache(cache_folder / "responses", read_only=True)
        try:
            recorded = store.model(record["model"])
        finally:
            store.close()
    variant = record["variant"].split("+")
    shots = _shot_settings(cache_folder, variant)
    if isinstance(shots, str):
        return shots
    config = RunConfig(profile=get_profile(record["model"], adhoc=True, recorded=recorded), data=data,
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


def _profile_of(record: dict) -> dict | None:
    """The profile a saved run was answered with, as its record keeps it (the model's name may since have
    been run with other settings)."""
    try:
        profile = json.loads(record.get("details") or "").get("profile")
    except (TypeError, ValueError, AttributeError):
        return None
    return profile if isinstance(profile, dict) else None


def run_key_of(result: RunResult) -> str:
    config = result.config
    return run_key(config.profile.name, result.dataset.sha256, config.protocol.value, config.render_mode.value,
                   config.variant)


def _record(result: RunResult) -> dict:
    from evaluator.scoring.aggregate import finite

    config = result.config
    key = run_key_of(result)
    scored = int(sum(t["n"] for t in result.tasks))
    skills = result.scores.skills.filter(pl.col("model") == config.profile.name)
    skill_scores = finite(dict(zip(skills["skill"].to_list(), skills["score"].to_list())))
    return {"key": key, "model": config.profile.name, "data": str(Path(config.data).resolve()),
            "data_sha256": result.dataset.sha256, "protocol": config.protocol.value,
            "rendering": config.render_mode.value, "variant": config.variant, "questions": len(result.questions),
            "answered": result.answered, "scored": scored, "errors": result.errors, "unscored": result.unscored,
            "status": result.status, "reason": result.reason, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "cost": result.cost(),
            "details": json.dumps({"groups": result.dataset.groups, "prices": config.profile.prices(),
                                   "dtype": result.dtype, "timings": result.timings,
                                   "answered_by": result.answering.get("by", []),
                                   # the run's own aggregation, which every view shows as it is
                                   "skills": skill_scores, "overall": finite(result.overall),
                                   "stderr": _stderr(result), "profile": config.profile.public(),
                                   **({"choice_probs": result.choice_probabilities()}
                                      if result.config.choice_probs else {})}),
            "created_at": result.finished_at}


def _stderr(result: RunResult) -> dict:
    """The standard errors of the run's overall, skill and task scores (aggregate.py), kept with the scores."""
    from evaluator.scoring.aggregate import finite

    name = result.config.profile.name
    skills = result.scores.skills.filter(pl.col("model") == name)
    overall = result.scores.overall.filter(pl.col("model") == name)
    return finite({"overall": overall["stderr"][0] if overall.height else None,
                   "skills": dict(zip(skills["skill"].to_list(), skills["stderr"].to_list())),
                   "tasks": [[t["skill"], t["task"], t.get("stderr")] for t in result.tasks]})


def _task_records(tasks: list[dict]) -> list[dict]:
    return [{"skill": t["skill"], "task": t["task"], "metric": t["metric"], "questions": t["questions"],
             "scored": t["n"], "errors": t["errors"], "unscored": t["unscored"], "score": t["score"],
             "prompt_tokens": t["prompt_tokens"], "completion_tokens": t["completion_tokens"],
             "official": t["official"]} for t in tasks]
