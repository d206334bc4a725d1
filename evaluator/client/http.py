"""One async client for any OpenAI-compatible endpoint (vLLM, OpenAI, Anthropic's compatible API, ...).

aiohttp, not httpx: against a zero-latency stub on these cores aiohttp sustains ~10k req/s where httpx's
pool tops out at a few hundred with hundreds of connections (benchmarks/RESULTS.md).

A fixed pool of workers (the in-flight cap) pulls requests from a queue; an optional requests-per-minute
throttle sits in front of every send. Failures are classified: 429, 5xx, timeouts and dropped connections
are retried with exponential backoff and jitter (Retry-After honoured), bounded by attempts and total time;
anything else, and the last failure, becomes an error `Reply`, never an empty answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

import aiohttp
from asyncio_throttle import Throttler


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # .../v1
    chat: bool  # /chat/completions (messages) or /completions (prompt)
    api_key: str | None = None  # sent as a bearer token, never stored
    timeout_s: float = 300.0
    concurrency: int = 64
    requests_per_minute: int | None = None
    rate_period_s: float = 60.0  # the throttle's window (a minute; shorter only in tests)
    replicas: tuple[str, ...] = ()  # more base URLs serving the same model (other nodes)

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + ("/chat/completions" if self.chat else "/completions")


class Replicas:
    """Round-robin over the endpoint's base URLs; one that stops answering (refused, reset, timed out) is
    left alone for a cool-down that doubles while it keeps failing."""

    def __init__(self, urls: list[str], cooldown_s: float = 10.0) -> None:
        self.urls = urls
        self.cooldown_s = cooldown_s
        self.down_until = {u: 0.0 for u in urls}
        self.strikes = {u: 0 for u in urls}
        self.turn = 0

    def pick(self) -> str:
        now = time.monotonic()
        for _ in range(len(self.urls)):
            url = self.urls[self.turn % len(self.urls)]
            self.turn += 1
            if self.down_until[url] <= now:
                return url
        return min(self.urls, key=self.down_until.get)  # all resting: the one back soonest

    def failed(self, url: str) -> None:
        if len(self.urls) > 1:
            self.strikes[url] += 1
            self.down_until[url] = time.monotonic() + self.cooldown_s * 2 ** (self.strikes[url] - 1)

    def answered(self, url: str) -> None:
        self.strikes[url] = 0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    max_total_s: float = 900.0
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:  # the server's word; the total-time bound still applies
            return retry_after
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)


@dataclass(frozen=True)
class Reply:
    """An answer (ok) or the final error of one request."""

    ok: bool
    attempts: int
    latency_s: float
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_kind: str | None = None  # rate_limited, server_error, timeout, connection, http_error, malformed, empty
    status: int | None = None
    message: str = ""


class Fault(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind, self.status, self.retryable, self.retry_after = kind, status, retryable, retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def parse_reply(payload: bytes, chat: bool) -> tuple[str, str | None, int | None, int | None]:
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Fault("malformed", f"response is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Fault("malformed", "response is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise Fault("empty", "response has no choices")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise Fault("malformed", "the choice's text is not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return text, choice.get("finish_reason"), usage.get("prompt_tokens"), usage.get("completion_tokens")


async def _send_once(session: aiohttp.ClientSession, endpoint: Endpoint, url: str, body: dict) -> Reply:
    try:
        async with session.post(endpoint.url(url), data=json.dumps(body, ensure_ascii=False).encode("utf-8")) as response:
            payload = await response.read()
            status, headers = response.status, response.headers
    except asyncio.TimeoutError:
        raise Fault("timeout", f"no answer within {endpoint.timeout_s:g} s", retryable=True) from None
    except aiohttp.ClientError as exc:  # refused, reset, dropped mid-response
        raise Fault("connection", f"{type(exc).__name__}: {exc}", retryable=True) from None
    if status == 429:
        raise Fault("rate_limited", "HTTP 429", status, True, _retry_after(headers.get("retry-after")))
    if status >= 500:
        raise Fault("server_error", f"HTTP {status}: {payload[:300].decode('utf-8', 'replace')}", status, True,
                    _retry_after(headers.get("retry-after")))
    if status != 200:
        raise Fault("http_error", f"HTTP {status}: {payload[:500].decode('utf-8', 'replace')}", status)
    text, finish, prompt_tokens, completion_tokens = parse_reply(payload, endpoint.chat)
    return Reply(True, 1, 0.0, text, finish, prompt_tokens, completion_tokens)


async def request(session: aiohttp.ClientSession, endpoint: Endpoint, body: dict, policy: RetryPolicy,
                  rng: random.Random, throttler: Throttler | None = None, replicas: Replicas | None = None) -> Reply:
    """Send one request with retries; always returns a Reply."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            if throttler is not None:
                async with throttler:
                    pass
            url = replicas.pick() if replicas else endpoint.base_url
            try:
                reply = await _send_once(session, endpoint, url, body)
            except Fault as fault:
                if replicas and fault.kind in ("connection", "timeout"):
                    replicas.failed(url)
                raise
            if replicas:
                replicas.answered(url)
            return Reply(**{**reply.__dict__, "attempts": attempt, "latency_s": time.monotonic() - started})
        except Fault as fault:
            elapsed = time.monotonic() - started
            wait = policy.delay(attempt, fault.retry_after, rng)
            if not fault.retryable or attempt >= policy.max_attempts or elapsed + wait > policy.max_total_s:
                return Reply(False, attempt, elapsed, error_kind=fault.kind, status=fault.status,
                             message=str(fault))
            await asyncio.sleep(wait)


def make_session(endpoint: Endpoint) -> aiohttp.ClientSession:
    """A connection pool exactly as wide as the in-flight cap."""
    headers = {"content-type": "application/json"}
    if endpoint.api_key:
        headers["authorization"] = f"Bearer {endpoint.api_key}"
    connector = aiohttp.TCPConnector(limit=endpoint.concurrency, limit_per_host=endpoint.concurrency)
    timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s, connect=min(endpoint.timeout_s, 30.0))
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


async def fan_out(endpoint: Endpoint, items: Iterable[tuple[str, dict]],
                  on_reply: Callable[[str, Reply], Awaitable[None] | None],
                  policy: RetryPolicy = RetryPolicy(), seed: int = 0) -> float:
    """Send every (key, body) with at most `endpoint.concurrency` in flight; `on_reply` sees each result as
    it arrives. Returns the wall time from the first send to the last reply."""
    queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    if queue.empty():
        return 0.0
    throttler = (Throttler(rate_limit=endpoint.requests_per_minute, period=endpoint.rate_period_s)
                 if endpoint.requests_per_minute else None)
    rng = random.Random(seed)
    replicas = Replicas([endpoint.base_url, *endpoint.replicas]) if endpoint.replicas else None

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                key, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            reply = await request(session, endpoint, body, policy, rng, throttler, replicas)
            result = on_reply(key, reply)
            if asyncio.iscoroutine(result):
                await result

    started = time.monotonic()
    async with make_session(endpoint) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(min(endpoint.concurrency, queue.qsize()))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
    return time.monotonic() - started
