"""Run a suite: API models at once, each under its own limits; local models packed onto the GPUs as the
planner says, the next server starting while others still evaluate; failures isolated; resumable.

Resuming is the response cache's doing: a model whose answers are all cached is scored without a server, a
half-done one sends only what is missing. A model that fails (its server does not start, or it dies mid-run)
is tried once more, then marked failed with the reason; the suite goes on. The night's log, live view and folder
are written above it (`evaluator.night`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from evaluator.data import loaders
from evaluator.errors import clip_words
from evaluator.prompts import PromptOptions, Protocol, Rendering, draw_shots, render
from evaluator.redact import redact
from evaluator.runs import runner
from evaluator.runs.planning import pending
from evaluator.runs.record import RunResult
from evaluator.runs.sending import start_server as start_vllm
from evaluator.runs.settings import Answered, RunConfig
from evaluator.scoring.embeddings import ENGLISH_MODEL, MULTILINGUAL_MODEL, EmbeddingConfig, default_cache_dir
from servers import demo_model
from servers.planner import Gpu, Placement, per_node, plan_node, split_parallel, utilization
from servers.profiles import ModelProfile
from servers.suite import Suite

ATTEMPTS = 2
RAY_ATTEMPTS = 3  # on a cluster a model may lose its node more than once
_live: dict[int, object] = {}  # id -> server running now, stopped if the suite is interrupted
_live_lock = threading.Lock()


@dataclass
class Outcome:
    model: str
    status: str  # "complete", "incomplete", "failed" (or "pending" before it ran)
    overall: float | None = None
    errors: int = 0
    unscored: int = 0
    questions: int = 0
    sent: int = 0
    cached: int = 0
    seconds: float = 0.0
    message: str = ""
    notes: list[str] = field(default_factory=list)  # what was not scored and why; official NaN/crash notes
    result: RunResult | None = None
    gpus: int = 0  # GPUs it held while evaluating
    node: str | None = None  # the Ray node its server ran on (the last one, if it was placed again)
    started_at: float = 0.0  # monotonic times, for overlap checks and reports
    evaluating_at: float = 0.0
    finished_at: float = 0.0
    replied: int = 0  # replies that arrived this night (the progress view's count)
    to_send: int = 0  # requests its run set out to send (0 until it has planned)

    @property
    def wall_s(self) -> float:
        return self.finished_at - self.started_at if self.finished_at and self.started_at else 0.0


class GpuPool:
    """Memory and slots per GPU, shared by the model threads, with the planner's rules: a server may start
    on a GPU whose memory has room and where no other server is waiting to evaluate; a GPU evaluates one
    model at a time; and no server on a GPU stops while another starts there (vLLM measures free memory while
    it starts, and memory freed under it then aborts the start)."""

    def __init__(self, gpus: list[Gpu]) -> None:
        self.free = {g.index: g.memory_gib * 0.9 for g in gpus}
        self.waiting = {g.index: 0 for g in gpus}
        self.starting = {g.index: 0 for g in gpus}
        self.evaluating: set[int] = set()
        self.cond = threading.Condition()

    def starts(self, ids: list[int], delta: int) -> None:
        """A server begins (+1) or ends (-1) its start on these GPUs."""
        with self.cond:
            for i in ids:
                self.starting[i] += delta
            self.cond.notify_all()

    def quiet(self, ids: list[int]) -> None:
        """Wait until no server is starting on these GPUs (before stopping one there)."""
        with self.cond:
            self.cond.wait_for(lambda: all(self.starting[i] == 0 for i in ids))

    def reserve(self, ids: list[int], share: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: all(self.free[i] >= share and self.waiting[i] == 0 for i in ids))
            for i in ids:
                self.free[i] -= share
                self.waiting[i] += 1

    def begin_evaluation(self, ids: list[int]) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not (set(ids) & self.evaluating))
            self.evaluating |= set(ids)
            for i in ids:
                self.waiting[i] -= 1
            self.cond.notify_all()

    def release(self, ids: list[int], share: float, evaluating: bool) -> None:
        with self.cond:
            for i in ids:
                self.free[i] += share
                if not evaluating:
                    self.waiting[i] -= 1
            if evaluating:
                self.evaluating -= set(ids)
            self.cond.notify_all()


def _chars(prompt) -> int:
    """A rendered prompt's characters: the text, or the messages' contents."""
    return len(prompt.prompt) if prompt.prompt is not None else sum(len(m["content"]) for m in prompt.messages)


def _text(prompt) -> str:
    """A rendered prompt's text: the prompt, or the messages' contents (what a tokenizer counts)."""
    return prompt.prompt if prompt.prompt is not None else "\n".join(m["content"] for m in prompt.messages)


def _prompt_sizes(suite: Suite, questions: list) -> Callable[[ModelProfile], list[tuple[int, int, str]]]:
    """(characters, token budget, text) of each prompt a model of the suite sends, its k-shot examples
    included; rendered once per combination of rendering, number_only and shot settings, not once per model."""
    done: dict[tuple, list[tuple[int, int, str]]] = {}

    def sizes(profile: ModelProfile) -> list[tuple[int, int, str]]:
        shots = suite.shot_settings(profile)
        combo = (suite.rendering_for(profile), profile.number_only, shots["shots"], shots["shot_seed"],
                 shots["shot_pool"])
        if combo not in done:
            options = PromptOptions(number_only=profile.number_only, letter_choices=suite.letter_choices,
                                    task_specific_prompt=suite.task_specific_prompt)
            pool = (questions if shots["shot_pool"] is None
                    else loaders.load(shots["shot_pool"], suite.protocol).questions)
            drawn = (draw_shots(questions, pool, shots["shots"], shots["shot_seed"], Protocol(suite.protocol),
                                options) if shots["shots"] else {})
            rendered = (render(q, Protocol(suite.protocol), Rendering(combo[0]), options, drawn.get(q.qid, ()))
                        for q in questions)
            done[combo] = [(_chars(prompt), prompt.max_tokens, _text(prompt)) for prompt in rendered]
        return done[combo]

    return sizes


def request_estimates(suite: Suite, chars_per_token: float) -> dict[str, tuple[int, int, int]]:
    """Model name -> (requests, estimated input tokens, output-token ceiling), k-shot examples counted."""
    sizes = _prompt_sizes(suite, loaders.load(suite.data, suite.protocol).questions)
    out = {}
    for model in suite.models:
        prompts = sizes(model)
        out[model.name] = (len(prompts), round(sum(c for c, _, _ in prompts) / chars_per_token),
                           sum(b for _, b, _ in prompts))
    return out


def fit_context(suite: Suite, say: Callable[[str], None] | None = None) -> Suite:
    """The suite with each local model's `max_model_len` fitted to its data (the longest prompt, counted with
    the model's own tokenizer.json, else bounded per script, plus the generation budget; never past the
    model's context) where the profile leaves it open and the model's shape is known: the plan reserves that
    much KV cache, and vLLM is started with it (a prompt past max_model_len is refused). The shapes and
    tokenizers not known here are fetched from the hub first (config.json and tokenizer.json only); `say`
    hears why not."""
    import dataclasses

    from servers.hub_models import size_suite

    from servers.model_config import fetch_configs, fitted_length, prompt_tokens

    missing = fetch_configs([m for m in suite.models if m.is_local])
    if missing and say is not None:
        reasons = sorted(set(missing.values()))
        say(f"config.json not fetched for {len(missing)} model(s) ({', '.join(sorted(missing)[:4])}"
            f"{', ...' if len(missing) > 4 else ''}): {reasons[0]}" + (f" (and {len(reasons) - 1} other reason(s))"
                                                                      if len(reasons) > 1 else ""))
    suite = size_suite(suite)  # a model named by its hub id alone: its size from the hub's file listing
    local = [m for m in suite.models if m.is_local and m.max_model_len is None]
    if not local:
        return suite
    sizes = _prompt_sizes(suite, loaders.load(suite.data, suite.protocol).questions)
    models, bounded = [], []
    for profile in suite.models:
        if profile in local:
            prompts = sizes(profile)  # a k-shot prompt is several questions long
            tokens, counted_by = prompt_tokens(profile, [t for _, _, t in prompts])
            length = fitted_length(profile, tokens + 64, max(b for _, b, _ in prompts))  # + the chat template's
            if length is not None:
                profile = profile.model_copy(update={"max_model_len": length})
                bounded += [profile.name] if counted_by.startswith("a bound") else []
        models.append(profile)
    if bounded and say is not None:
        say(f"prompt tokens bounded per script for {len(bounded)} model(s) ({', '.join(bounded[:4])}"
            f"{', ...' if len(bounded) > 4 else ''}): no tokenizer.json here, so CJK characters count 3 tokens each")
    return dataclasses.replace(suite, models=models)


def _config(suite: Suite, profile: ModelProfile, cache: Path | None, base_url: str | None = None,
            **settings) -> RunConfig:
    embeddings = EmbeddingConfig(english=suite.embedding_model or ENGLISH_MODEL,
                                 multilingual=suite.multilingual_model or MULTILINGUAL_MODEL)
    return RunConfig(profile=profile, data=suite.data, protocol=Protocol(suite.protocol),
                     rendering=Rendering(suite.rendering_for(profile)), base_url=base_url,
                     concurrency=profile.concurrency or suite.concurrency, cache_dir=cache, progress=False,
                     letter_choices=suite.letter_choices, task_specific_prompt=suite.task_specific_prompt,
                     embeddings=embeddings, label=f"{profile.name}: ", **suite.shot_settings(profile), **settings)


def _scored(result: RunResult, outcome: Outcome) -> None:
    outcome.result = result
    outcome.status = result.status
    outcome.overall = result.overall
    outcome.errors, outcome.unscored, outcome.questions = result.errors, result.unscored, len(result.questions)
    outcome.sent, outcome.cached, outcome.seconds = result.sent, result.cached, result.seconds
    outcome.message = result.reason or ""
    scores = result.scores
    outcome.notes = [f"not scored: {r['n']} question(s) of {r['task']} ({r['metric']}): {r['reason']}"
                     for r in scores.unscored.iter_rows(named=True)]
    outcome.notes += [f"{t['task']}: {t['official']}" for t in result.tasks if t["official"]]


class Watchdog:
    """Says which model's answers stopped moving: a model that has been sending and has had no reply for
    `stall_s` is named in the log (again every `stall_s` while it stays so)."""

    def __init__(self, say: Callable[[str], None], stall_s: float = 120.0) -> None:
        self.say, self.stall_s = say, stall_s
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self.thread.start()

    def saw(self, model: str) -> None:
        with self.lock:
            self.last[model] = time.monotonic()

    def done(self, model: str) -> None:
        with self.lock:
            self.last.pop(model, None)

    def close(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(min(5.0, self.stall_s / 4)):
            now = time.monotonic()
            with self.lock:
                stalled = [(m, now - t) for m, t in self.last.items() if now - t >= self.stall_s]
                for model, _ in stalled:
                    self.last[model] = now  # warn again only after another stall_s
            for model, idle in stalled:
                self.say(f"[yellow]{escape(model)}[/]: no answer for {idle:.0f} s: its endpoint may be stuck "
                         "(answers kept so far stay kept)")


def _metrics(suite: Suite):
    return {q.metric for q in loaders.load(suite.data, suite.protocol).questions}


def run_suite(suite: Suite, gpus: list[Gpu], cache: Path | None, console: Console,
              start_server: Callable = start_vllm, device: str = "auto",
              on_done: Callable[[Outcome], None] | None = None, ray_servers=None, stall_s: float = 120.0,
              on_outcomes: Callable[[dict[str, Outcome]], None] | None = None, **settings) -> list[Outcome]:
    """Run every model of the suite; returns one Outcome per model, in the suite's order. `settings` are
    RunConfig fields shared by every model (timeout, breaker, retry, observer); `on_done` sees each model's
    outcome as it ends; `on_outcomes` the outcomes as they are being filled in (the progress view reads them).

    Ownership: each model's thread answers its questions (the producers); one scoring stage scores every
    model (loading each embedding model once, before any thread starts); the response cache is opened here
    first, so its file is made once, and every write goes through its one writer thread."""
    night = SuiteRun(suite, gpus, cache, console, start_server, device, on_done, ray_servers, stall_s,
                     on_outcomes, settings)
    try:
        night.answer_all(night.plan())
    finally:
        night.watchdog.close()
    night.tell_notes()
    night.close()
    return [night.outcomes[m.name] for m in suite.models]


class SuiteRun:
    """One suite's models on their way through a night, in stages: plan the node (`plan`: a thread per
    model, placed as the planner says), start and answer each model (`run_api`, `run_local`, `run_on_ray`,
    each under `attempt`), hand its answers to the one scoring stage (`score`), then say the night's notes
    once (`tell_notes`)."""

    def __init__(self, suite: Suite, gpus: list[Gpu], cache: Path | None, console: Console,
                 start_server: Callable, device: str, on_done: Callable[[Outcome], None] | None, ray_servers,
                 stall_s: float, on_outcomes: Callable[[dict[str, Outcome]], None] | None, settings: dict) -> None:
        from evaluator.cache.responses import ResponseCache
        from evaluator.runs.stage import ScoringStage

        self.suite, self.gpus, self.cache, self.console = suite, gpus, cache, console
        self.start_server, self.device, self.on_done, self.ray_servers = start_server, device, on_done, ray_servers
        self.outcomes = {m.name: Outcome(m.name, "pending") for m in suite.models}
        if on_outcomes is not None:
            on_outcomes(self.outcomes)
        self.lock = threading.Lock()
        self.noted: dict[str, list[str]] = {}  # a note (not scored, official NaN) -> the models it is about
        self.night_cache = ResponseCache((cache or default_cache_dir()) / "responses")  # held open for the night
        probe = _config(suite, suite.models[0], cache) if suite.models else None
        self.stage = ScoringStage(probe.scoring.embeddings, _metrics(suite)) if probe else None
        self.watchdog = Watchdog(self.say, stall_s)
        self.shared_observer = settings.pop("observer", None)
        self.settings = settings
        self.by_index = {g.index: g for g in gpus}

    def say(self, message: str) -> None:
        with self.lock:
            self.console.print(message)

    def observer_for(self, name: str) -> Callable:
        def see(reply) -> None:
            self.watchdog.saw(name)
            self.outcomes[name].replied += 1
            if self.shared_observer is not None:
                self.shared_observer(reply)
        return see

    def model_config(self, profile: ModelProfile, **extra) -> RunConfig:
        return _config(self.suite, profile, self.cache, observer=self.observer_for(profile.name),
                       on_plan=lambda n: setattr(self.outcomes[profile.name], "to_send", n), **extra, **self.settings)

    def answer(self, config: RunConfig, outcome: Outcome) -> Answered:
        try:
            return runner.answer(config, self.console)
        finally:
            self.watchdog.done(outcome.model)

    def score(self, answered: Answered, outcome: Outcome) -> None:
        _scored(self.stage.score(answered), outcome)

    def from_cache(self, config: RunConfig, outcome: Outcome) -> bool:
        """Score a model whose answers are all cached, without a server (a resumed night); False if it has
        answers to send."""
        if pending(config) != 0:
            return False
        outcome.started_at = outcome.evaluating_at = time.monotonic()
        answered = self.answer(config, outcome)
        outcome.finished_at = time.monotonic()
        self.score(answered, outcome)
        return True

    def attempt(self, profile: ModelProfile, body: Callable[[Outcome], None]) -> None:
        """A local model that fails (its server does not start or dies) is tried once more; an API model
        that fails pre-flight or trips the breaker would only fail again."""
        outcome = self.outcomes[profile.name]
        attempts = (RAY_ATTEMPTS if self.ray_servers is not None else ATTEMPTS) if profile.is_local else 1
        for number in range(1, attempts + 1):
            try:
                body(outcome)
            except Exception as exc:  # isolate: this model fails, the suite goes on
                outcome.status = "failed"
                outcome.message = redact(str(exc).strip()[-1500:] or type(exc).__name__)
            if outcome.status != "failed":
                break
            self.say(f"[red]{escape(profile.name)}[/]: attempt {number} failed: "
                     f"{escape(clip_words(outcome.message.splitlines()[0], 300) if outcome.message else 'failed')}")
        overall = "-" if outcome.overall is None else f"{outcome.overall:.4f}"
        colour = {"complete": "green", "incomplete": "yellow"}.get(outcome.status, "red")
        unscored = f", {outcome.unscored} not scored (see the notes at the end)" if outcome.unscored else ""
        self.say(f"[{colour}]{escape(profile.name)}[/]: {outcome.status}, overall {overall}, "
                 f"{outcome.questions - outcome.errors}/{outcome.questions} answered, {outcome.sent} sent, "
                 f"{outcome.cached} cached, {outcome.errors} errors{unscored}")
        with self.lock:
            for note in outcome.notes:
                self.noted.setdefault(note, []).append(profile.name)
        if self.on_done is not None:
            self.on_done(outcome)

    def run_api(self, profile: ModelProfile) -> None:
        def body(outcome: Outcome) -> None:
            outcome.started_at = outcome.evaluating_at = time.monotonic()
            answered = self.answer(self.model_config(profile), outcome)
            outcome.finished_at = time.monotonic()
            self.score(answered, outcome)

        self.attempt(profile, body)

    def run_local(self, profile: ModelProfile, placement: Placement | None, pool: GpuPool | None) -> None:
        def body(outcome: Outcome) -> None:
            config = self.model_config(profile)
            if self.from_cache(config, outcome):
                return
            ids = placement.gpus if placement else None
            served = profile
            if placement is not None:
                share = placement.share_gib
                memory = min(g.memory_gib for g in self.gpus if g.index in ids)
                served = profile.model_copy(update={"tensor_parallel_size": placement.tp,
                                                    "gpu_memory_utilization": utilization(share, memory)})
                pool.reserve(ids, share)
            evaluating = False
            try:
                outcome.started_at = time.monotonic()
                self.say(f"{escape(profile.name)}: starting its server" + (f" on GPUs {ids}" if ids else ""))
                devices = [self.by_index[i].visible_as for i in ids] if ids else None  # a MIG instance by its UUID
                if pool is not None:
                    pool.starts(ids, +1)
                try:
                    server = self.start_server(served, config.cache_folder, self.console, device=self.device,
                                               gpu_ids=devices)
                finally:
                    if pool is not None:
                        pool.starts(ids, -1)
                with _live_lock:
                    _live[id(server)] = server
                try:
                    if pool is not None:
                        pool.begin_evaluation(ids)
                        evaluating = True
                    outcome.evaluating_at = time.monotonic()
                    outcome.gpus = len(ids or [])
                    answered = self.answer(self.model_config(profile, base_url=server.base_url,
                                                             started_s=getattr(server, "startup_s", None)), outcome)
                    outcome.finished_at = time.monotonic()
                finally:
                    if pool is not None:
                        pool.quiet(ids)  # never free memory under a neighbour's start
                    server.stop()
                    with _live_lock:
                        _live.pop(id(server), None)
            finally:
                if pool is not None:
                    pool.release(ids, placement.share_gib, evaluating)
            self.score(answered, outcome)  # the GPUs are free for the next model meanwhile

        self.attempt(profile, body)

    def run_on_ray(self, profile: ModelProfile, placement: Placement | None) -> None:
        width = per_node(self.gpus)
        tp, pp = split_parallel(placement.tp, width) if placement else (1, 1)

        def body(outcome: Outcome) -> None:
            config = self.model_config(profile)
            if self.from_cache(config, outcome):
                return
            weights = (str(demo_model.ensure_demo_model(config.cache_folder, say=self.say))
                       if profile.source == "demo" else profile.model)
            outcome.started_at = time.monotonic()
            self.say(f"{escape(profile.name)}: placing its server on the Ray cluster ({tp} GPU(s)"
                     + (f" × {pp} nodes" if pp > 1 else "") + ")")
            placed = self.ray_servers.start(profile, weights, tp, pp, device=self.device)
            with _live_lock:
                _live[id(placed)] = placed
            outcome.node = placed.node_id
            self.say(f"{escape(profile.name)}: server on node {placed.node_id[:12]} at {placed.base_url}"
                     + (f", GPUs {placed.gpus}" if placed.gpus else ""))
            placed.lost.reason = "its node was lost (the server's actor died): placing it again"
            try:
                outcome.evaluating_at = time.monotonic()
                outcome.gpus = tp * pp
                answered = self.answer(self.model_config(profile, base_url=placed.base_url, cancel=placed.lost),
                                       outcome)
                outcome.finished_at = time.monotonic()
            finally:
                placed.stop()
                with _live_lock:
                    _live.pop(id(placed), None)
            self.score(answered, outcome)
            if placed.lost.is_set():
                outcome.status = "failed"
                outcome.message = placed.lost.reason

        self.attempt(profile, body)

    def plan(self) -> list[threading.Thread]:
        """A thread per API model; local models placed by the node's plan (on Ray, the cluster places them in
        the planned order), or one after another where there is no GPU. Models that fit nowhere fail here."""
        gpus, outcomes = self.gpus, self.outcomes
        local = [m for m in self.suite.models if m.is_local]
        threads = [threading.Thread(target=self.run_api, args=(p,), name=p.name)
                   for p in self.suite.models if not p.is_local]
        if self.ray_servers is not None:  # Ray places the servers; our plan decides the order and the GPUs
            plan = plan_node(local, gpus) if gpus else None
            ordered = [(p.profile, p) for p in plan.placements] if plan else [(m, None) for m in local]
            for failed in (plan.unplaceable if plan else []):
                outcomes[failed.profile.name].status = "failed"
                outcomes[failed.profile.name].message = (f"needs ~{failed.memory_gib:.0f} GiB: does not fit the "
                                                         "cluster")
            for profile, placement in ordered:
                threads.append(threading.Thread(target=self.run_on_ray, args=(profile, placement),
                                                name=profile.name))
        elif gpus:
            plan = plan_node(local, gpus)
            pool = GpuPool(gpus)
            for failed in plan.unplaceable:
                outcomes[failed.profile.name].status = "failed"
                outcomes[failed.profile.name].message = (f"needs ~{failed.memory_gib:.0f} GiB: does not fit "
                                                         f"{len(gpus)} GPU(s) of {gpus[0].memory_gib:.0f} GiB")
            for placement in plan.placements:  # planned order; each thread waits for its GPUs
                threads.append(threading.Thread(target=self.run_local, args=(placement.profile, placement, pool),
                                                name=placement.profile.name))
        else:  # no GPU: local models one after another (each takes the whole machine)
            def sequential() -> None:
                for profile in local:
                    threading.current_thread().name = profile.name  # the log names the model by its thread
                    self.run_local(profile, None, None)
            threads.append(threading.Thread(target=sequential, name="local"))
        return threads

    def answer_all(self, threads: list[threading.Thread]) -> None:
        """Start the models' threads in the planned order and wait for them; an interrupt stops every server
        running now."""
        try:
            for thread in threads:
                thread.daemon = True  # an interrupt ends the suite; the servers are stopped below
                thread.start()
                time.sleep(0.01)  # keep the planned order when threads compete for the same GPUs
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except KeyboardInterrupt:
            with _live_lock:
                running = list(_live.values())
            for server in running:
                server.stop()
            raise

    def tell_notes(self) -> None:
        for note, models in self.noted.items():  # once a night, naming every model it is about
            named = ", ".join(m.name for m in self.suite.models if m.name in models)
            self.console.print(f"[yellow]note for {len(models)} model(s)[/] ({escape(named)}): {escape(note)}")

    def close(self) -> None:
        if self.stage is not None:
            self.stage.close()
        self.night_cache.close()

