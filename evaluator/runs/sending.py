"""Sending what the cache lacks: the endpoint (a vLLM server started when the profile needs one), pre-flight,
then the fan-out under the breaker, each reply kept in the cache the moment it arrives."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from evaluator.cache.responses import Answer, CacheFull, ResponseCache, process_owner
from evaluator.client.http import Endpoint, Halt, Reply, fan_out
from evaluator.errors import InputError
from evaluator.paths import safe_name
from evaluator.prompts import Rendering
from evaluator.redact import redact, strip_url_credentials
from evaluator.runs.breaker import Breaker
from evaluator.runs.preflight import PreflightFailed, preflight
from evaluator.runs.progress import LiveText, Throughput, clock_left
from evaluator.runs.settings import Planned, RunConfig, Sending
from servers import demo_model
from servers.profiles import ModelProfile
from servers.vllm_server import ServerStartError, VLLMServer
from servers.weights import ensure_weights


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
         server_factory: Callable = start_server, known: Planned | None = None) -> Sending:
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
    outcome = Sending()
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
        remaining = list(todo)
        mine = cache.claim([p.key for p in remaining], owner, config.refresh)
        probes = [p for p in remaining if p.key in mine][:PREFLIGHT_PROBES] if config.preflight else []
        remaining = _preflight(config, endpoint, remaining, probes, keep, known, outcome)
        if remaining is None:
            return outcome
        renewer.start()
        since = time.time()
        with progress.bar:
            _fan_out(config, endpoint, remaining, cache, owner, keep, outcome, console, since)
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


def _preflight(config: RunConfig, endpoint: Endpoint, remaining: list[Planned], probes: list[Planned],
               keep: Callable, known: Planned | None, outcome: Sending) -> list[Planned] | None:
    """Pre-flight over `probes` until one is answered: what is left to send, or None where the model fails
    (`outcome.stopped` says why)."""
    profile = config.profile
    served = profile.name if profile.is_local else profile.model
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
            return None
        keep(probe.key, reply, check=False)
        remaining = [p for p in remaining if p is not probe]
        break
    return remaining


def _fan_out(config: RunConfig, endpoint: Endpoint, remaining: list[Planned], cache: ResponseCache, owner: str,
             keep: Callable, outcome: Sending, console: Console, since: float) -> None:
    """Send what this run claims until nothing is left: questions another live run on this cache is fetching
    are waited for (its answers, or its claims' end); the breaker's halt stops it (`outcome.stopped`)."""
    told = False
    while remaining:
        mine = cache.claim([p.key for p in remaining], owner, config.refresh)
        batch = [p for p in remaining if p.key in mine]
        if batch:
            try:
                outcome.seconds += asyncio.run(fan_out(endpoint, ((p.key, p.body) for p in batch), keep,
                                                       config.retry, cancel=config.cancel))
            except Halt as halt:
                outcome.stopped = str(halt)
                return
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


def serve(model: str, port: int | None, host: str, cache_folder: Path, device: str, console: Console) -> None:
    """`serve`: one local model on vLLM until Ctrl-C or SIGTERM; its base URL printed once it is ready."""
    import signal

    from servers.profiles import get_profile

    profile = get_profile(model)
    if not profile.is_local:
        raise InputError(f"'{model}' is an API model ({profile.provider}); nothing to serve")
    stop = threading.Event()
    # while it starts, SIGTERM is an interrupt (as everywhere): the start is abandoned and the server stopped
    server = start_server(profile, cache_folder, console, port=port, device=device, host=host)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(server.base_url, flush=True)
    try:
        while not stop.is_set() and server.process is not None and server.process.poll() is None:
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        console.print("server stopped")
