"""One async client for any OpenAI-compatible endpoint (vLLM, OpenAI, Anthropic's compatible API, ...).

aiohttp, not httpx: against a zero-latency stub on these cores aiohttp sustains ~10k req/s where httpx's
pool tops out at a few hundred with hundreds of connections (benchmarks/RESULTS.md).

A fixed pool of workers (the in-flight cap) pulls requests from a queue; an optional requests-per-minute
limit spaces the sends evenly. Every reply is hostile until parsed: bodies are read up to a size cap,
parsed defensively (deep nesting, huge integers, lone surrogates, fields of the wrong type), and whatever
happens ends as a `Reply`, an answer or an error, never as an exception that stops the fan-out. 429, 5xx,
timeouts, dropped connections and a 200 that carries an error object are retried with exponential backoff
and jitter (Retry-After honoured above a floor), bounded by attempts and total time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Iterable

import aiohttp

from evaluator.errors import clip_words
from evaluator.redact import redact

MAX_REPLY_BYTES = 2**20  # a 128-token answer is a few KiB; anything near this is not an answer
MAX_TOKENS_FIELD = 2**31 - 1  # usage counts above this are not token counts


TOP_LOGPROBS = 5  # log-probabilities asked per request (OpenAI's chat allows 0-20; vLLM's default cap is 20)
LOGPROBS_KEPT = 20  # kept per answer at most, whatever the server sends
MAX_TOKEN_CHARS = 64  # a kept token's length at most


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # .../v1
    chat: bool  # /chat/completions (messages) or /completions (prompt)
    api_key: str | None = None  # sent as a bearer token, never stored
    basic_auth: tuple[str, str] | None = None  # user and password from the URL, where there is no key
    timeout_s: float = 300.0
    concurrency: int = 64
    requests_per_minute: int | None = None
    rate_period_s: float = 60.0  # the limit's window (a minute; shorter only in tests)
    replicas: tuple[str, ...] = ()  # more base URLs serving the same model (other nodes)
    max_reply_bytes: int = MAX_REPLY_BYTES
    reasoning: bool = False  # a reasoning model: an empty answer cut by the budget is an error

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.requests_per_minute is not None and self.requests_per_minute < 1:
            raise ValueError(f"requests per minute must be at least 1, not {self.requests_per_minute}")

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
            self.strikes[url] = min(self.strikes[url] + 1, 20)
            self.down_until[url] = time.monotonic() + self.cooldown_s * 2 ** (self.strikes[url] - 1)

    def answered(self, url: str) -> None:
        self.strikes[url] = 0


class RateLimit:
    """At most `rate` sends per `period`, spread evenly (one every period/rate seconds): a provider that
    counts per minute never sees the whole minute's quota arrive at once."""

    def __init__(self, rate: int, period_s: float = 60.0) -> None:
        self.interval = period_s / rate
        self.next_slot = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    max_total_s: float = 900.0
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:  # the server's word, above a floor (Retry-After: 0 must not spin)
            return max(retry_after, self.base_delay_s)
        return min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt - 1, 30)) * rng.uniform(0.5, 1.5)


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
    # rate_limited, server_error, api_error, timeout, connection, http_error, malformed, empty, oversized, client_error
    error_kind: str | None = None
    status: int | None = None
    message: str = ""
    logprobs: str | None = None  # the first token's top log-probabilities (JSON), where the request asked


class Fault(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.status, self.retryable, self.retry_after = kind, status, retryable, retry_after
        self.param = param  # the request field an OpenAI-shaped error names (`error.param`)


class Halt(Exception):
    """Raised by an `on_reply` callback to stop the fan-out (a circuit breaker); in-flight requests are
    cancelled, everything already handed to `on_reply` is kept."""


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date); None for anything else, whatever it is."""
    if not value or len(value) > 100:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if parsed is None:
            return None
        try:
            seconds = parsed.timestamp() - time.time()
        except (OverflowError, OSError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _reasoned(usage: dict, choice: dict) -> bool:
    """Signs that the model thought before answering: OpenAI's reasoning token count, or the reasoning text
    that vLLM's reasoning parsers and DeepSeek-style APIs return beside the answer."""
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and (_count(details.get("reasoning_tokens")) or 0) > 0:
        return True
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    return any(isinstance(message.get(k), str) and message.get(k) for k in ("reasoning_content", "reasoning"))


def _count(value) -> int | None:
    """A token count, or None where the field is not one (wrong type, negative, absurd)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_FIELD:
        return None
    return value


MAX_INT_DIGITS = 400  # a longer JSON integer is no count or log-probability of ours: read as ±inf, never raised


def _integer(digits: str) -> int | float:
    if len(digits) <= MAX_INT_DIGITS:
        return int(digits)
    return -math.inf if digits.startswith("-") else math.inf


def loads(payload: bytes | str):
    """`json.loads` of a reply, where an integer too long for Python's `int` (4,300 digits) is ±inf instead
    of an error: one absurd number in an optional field (usage, log-probabilities) never costs the answer."""
    return json.loads(payload, parse_int=_integer)


def parse_reply(payload: bytes, chat: bool, reasoning: bool = False) -> tuple[str, str | None, int | None, int | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens), or a Fault for anything that is not an answer.
    An empty text cut by the token budget is a Fault where the model reasons (the profile says so, or the
    reply shows reasoning tokens or reasoning text): the budget went to thinking, and "" is not its answer."""
    try:
        data = loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise Fault("malformed", f"response is not JSON we can read: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise Fault("malformed", "response is not a JSON object")
    choices = data.get("choices")
    error = data.get("error")
    upstream = Fault("api_error", "HTTP 200 with an error: " + str(error.get("message") if isinstance(error, dict)
                                                                   else error)[:300], 200, retryable=True)
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        if error is not None:  # a 200 carrying an error object: the provider failed upstream
            raise upstream
        raise Fault("empty", "response has no choices")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if error and not text:  # an error object beside an empty choice is the error, not the answer ""
        raise upstream
    if text is None:
        raise Fault("empty", "the reply has no text (null)")
    if not isinstance(text, str):
        raise Fault("malformed", f"the choice's text is a {type(text).__name__}, not a string")
    if _has_lone_surrogate(text):
        raise Fault("malformed", "the text holds a lone surrogate (not Unicode text)")
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) and len(finish) <= 64 and not _has_lone_surrogate(finish) else None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if text == "" and finish == "length" and (reasoning or _reasoned(usage, choice)):
        raise Fault("reasoning_budget", "the whole token budget went to reasoning, no answer came (finish_reason "
                    "'length'): raise the profile's reasoning_budget", 200)
    return text, finish, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def logprob_fields(chat: bool) -> dict:
    """What a request adds to ask for its first token's top log-probabilities (OpenAI's and vLLM's fields)."""
    return {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if chat else {"logprobs": TOP_LOGPROBS}


LOGPROBS_FIELDS = ("logprobs", "top_logprobs")
LOGPROBS_REFUSED = "refused"  # an answer's log-probabilities where the endpoint refused to give any (no JSON)


def logprobs_unavailable(provider: str, reasoning: bool, reasoning_effort: str | None) -> str | None:
    """Why a model cannot give log-probabilities, so they are never asked (None where it may): OpenAI refuses
    them from a reasoning model unless its reasoning effort is `none` (a 400 naming the parameter; a profile
    that leaves the effort to the model's default is taken as reasoning); Anthropic's API has none."""
    if provider == "anthropic":
        return "Anthropic's API returns no log-probabilities"
    if reasoning and reasoning_effort != "none":
        return (f"a reasoning model (reasoning effort {reasoning_effort or 'left to its default'}) gives "
                "log-probabilities only with reasoning effort none")
    return None


def _refuses_logprobs(fault: Fault, body: dict) -> bool:
    """A 400 naming the log-probability fields (OpenAI's `param`, or its message) to a request carrying them."""
    return (fault.status == 400 and any(field in body for field in LOGPROBS_FIELDS)
            and (fault.param in LOGPROBS_FIELDS or "logprobs" in str(fault).lower()))


def _logprobs_oversized(fault: Fault, body: dict) -> bool:
    """A reply over the size cap to a request carrying the log-probability fields."""
    return fault.kind == "oversized" and any(field in body for field in LOGPROBS_FIELDS)


def _error_param(payload: bytes) -> str | None:
    try:
        error = loads(payload).get("error")
        param = error.get("param") if isinstance(error, dict) else None
    except (ValueError, RecursionError, AttributeError):
        return None
    return param if isinstance(param, str) and len(param) <= 64 else None


def first_token(payload: bytes, chat: bool) -> str | None:
    """The first generated token's top log-probabilities as compact JSON (token -> log-probability, most
    probable first), bounded; None where the reply carries none (Anthropic's API has none) or anything in them
    is not a log-probability (a huge integer, a string, a positive number, a wrong shape). It never raises: the
    view is optional, and nothing in it may cost the answer beside it."""
    try:
        choice = loads(payload)["choices"][0]
        logprobs = choice.get("logprobs")
        if chat:
            raw = logprobs["content"][0]["top_logprobs"]
            pairs = [(item.get("token"), item.get("logprob")) for item in raw if isinstance(item, dict)]
        else:
            raw = logprobs["top_logprobs"][0]
            pairs = list(raw.items()) if isinstance(raw, dict) else []
    except (ValueError, RecursionError, KeyError, IndexError, TypeError, AttributeError):
        return None
    kept: dict[str, float] = {}
    for token, value in pairs[:LOGPROBS_KEPT * 4]:
        number = log_probability(value)
        if number is None:  # one unreadable value: the distribution is not one we can trust
            return None
        if isinstance(token, str) and len(token) <= MAX_TOKEN_CHARS and not _has_lone_surrogate(token):
            kept.setdefault(token, number)
    if not kept:
        return None
    ordered = sorted(kept.items(), key=lambda item: -item[1])[:LOGPROBS_KEPT]
    return json.dumps(dict(ordered), ensure_ascii=False, separators=(",", ":"))


def log_probability(value) -> float | None:
    """`value` as a log-probability (a finite number at most 0, rounding allowed), or None for anything else:
    a bool, a string, NaN, an integer too large for a float (where `float` and `math.isfinite` raise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and not -10**6 <= value <= 0:
        return None
    number = float(value)
    return number if math.isfinite(number) and number <= 1e-6 else None


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > cap:
        raise Fault("oversized", f"the reply declares {declared:,} bytes, over the {cap:,}-byte cap")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > cap:
            response.close()
            raise Fault("oversized", f"the reply passed the {cap:,}-byte cap; the rest was not read")
        chunks.append(chunk)
    return b"".join(chunks)


def _text_of(payload: bytes, limit: int) -> str:
    return payload[:limit].decode("utf-8", "replace").encode("utf-8", "replace").decode("utf-8")


async def _send_once(session: aiohttp.ClientSession, endpoint: Endpoint, url: str, body: bytes) -> Reply:
    try:
        async with session.post(endpoint.url(url), data=body) as response:
            status, headers = response.status, response.headers
            payload = await _read_capped(response, endpoint.max_reply_bytes)
    except asyncio.TimeoutError:
        raise Fault("timeout", f"no answer within {endpoint.timeout_s:g} s", retryable=True) from None
    except aiohttp.ClientError as exc:  # refused, reset, dropped mid-response, bad headers
        raise Fault("connection", f"{type(exc).__name__}: {clip_words(str(exc), 300)}", retryable=True) from None
    if status in (429, 408) or status >= 500:
        kind = "rate_limited" if status == 429 else "server_error"
        after = retry_after_seconds(headers.get("retry-after"))
        raise Fault(kind, f"HTTP {status}: {_text_of(payload, 300)}", status, True, after)
    if status != 200:
        raise Fault("http_error", f"HTTP {status}: {_text_of(payload, 500)}", status,
                    param=_error_param(payload) if status == 400 else None)
    text, finish, prompt_tokens, completion_tokens = parse_reply(payload, endpoint.chat, endpoint.reasoning)
    logprobs = first_token(payload, endpoint.chat) if b'"logprobs"' in body else None
    return Reply(True, 1, 0.0, text, finish, prompt_tokens, completion_tokens, logprobs=logprobs)


class Refusals:
    """What the endpoint refused once, so the rest of a fan-out is sent without it."""

    def __init__(self) -> None:
        self.logprobs = False


async def request(session: aiohttp.ClientSession, endpoint: Endpoint, body: dict, policy: RetryPolicy,
                  rng: random.Random, limit: RateLimit | None = None, replicas: Replicas | None = None,
                  refusals: Refusals | None = None) -> Reply:
    """Send one request with retries; always returns a Reply, whatever the server does. A 400 refusing the
    log-probability fields asks the question again without them (the answer never depends on the optional
    view): the Reply's logprobs say LOGPROBS_REFUSED, and `refusals` keeps the rest of the fan-out from
    asking. A reply over the size cap to a request carrying them is asked again without them too (their
    volume is the server's, not the answer's): that question has no view, the answer is kept."""
    refusals = refusals or Refusals()
    started = time.monotonic()
    attempt = 0
    refused = refusals.logprobs and any(field in body for field in LOGPROBS_FIELDS)
    without = False
    if refused:
        body = {k: v for k, v in body.items() if k not in LOGPROBS_FIELDS}
    encoded = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    while True:
        attempt += 1
        url = replicas.pick() if replicas else endpoint.base_url
        try:
            if limit is not None:
                await limit.wait()
            reply = await _send_once(session, endpoint, url, encoded)
            if replicas:
                replicas.answered(url)
            return replace(reply, attempts=attempt, latency_s=time.monotonic() - started,
                           logprobs=LOGPROBS_REFUSED if refused else None if without else reply.logprobs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001: anything a server makes us raise ends as an error row
            fault = exc if isinstance(exc, Fault) else Fault("client_error", f"{type(exc).__name__}: {exc}"[:500])
            if _refuses_logprobs(fault, body) or _logprobs_oversized(fault, body):  # asked again, without them
                body = {k: v for k, v in body.items() if k not in LOGPROBS_FIELDS}
                encoded = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
                if fault.kind == "oversized":  # this question's view only: the answer comes without them
                    without = True
                else:
                    refused = refusals.logprobs = True
                continue
            if replicas and fault.kind in ("connection", "timeout"):
                replicas.failed(url)
            elapsed = time.monotonic() - started
            wait = policy.delay(attempt, fault.retry_after, rng)
            if not fault.retryable or attempt >= policy.max_attempts or elapsed + wait > policy.max_total_s:
                message = str(fault)
                if fault.retryable and fault.retry_after is not None and elapsed + wait > policy.max_total_s:
                    message += (f" (the server asked to retry after {fault.retry_after:,.0f} s, past the "
                                f"{policy.max_total_s:,.0f} s this request may take)")
                return Reply(False, attempt, elapsed, error_kind=fault.kind, status=fault.status,
                             message=redact(message))  # a server may echo our key: every path downstream
            await asyncio.sleep(wait)


def make_session(endpoint: Endpoint) -> aiohttp.ClientSession:
    """A connection pool exactly as wide as the in-flight cap."""
    headers = {"content-type": "application/json"}
    if endpoint.api_key:
        headers["authorization"] = f"Bearer {endpoint.api_key}"
    elif endpoint.basic_auth:
        headers["authorization"] = aiohttp.BasicAuth(*endpoint.basic_auth).encode()
    connector = aiohttp.TCPConnector(limit=endpoint.concurrency, limit_per_host=endpoint.concurrency)
    timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s, connect=min(endpoint.timeout_s, 30.0))
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


async def fan_out(endpoint: Endpoint, items: Iterable[tuple[str, dict]],
                  on_reply: Callable[[str, Reply], Awaitable[None] | None],
                  policy: RetryPolicy = RetryPolicy(), seed: int = 0, cancel: threading.Event | None = None) -> float:
    """Send every (key, body) with at most `endpoint.concurrency` in flight; `on_reply` sees each result as
    it arrives (it may raise `Halt` to stop; `cancel`, set from another thread, stops it as `Halt` too).
    Returns the wall time from the first send to the last reply."""
    queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    if queue.empty():
        return 0.0
    limit = RateLimit(endpoint.requests_per_minute, endpoint.rate_period_s) if endpoint.requests_per_minute else None
    rng = random.Random(seed)
    replicas = Replicas([endpoint.base_url, *endpoint.replicas]) if endpoint.replicas else None
    refusals = Refusals()

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                key, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            reply = await request(session, endpoint, body, policy, rng, limit, replicas, refusals)
            result = on_reply(key, reply)
            if asyncio.iscoroutine(result):
                await result

    async def watch() -> None:
        while not cancel.is_set():
            await asyncio.sleep(0.2)
        raise Halt(getattr(cancel, "reason", "cancelled"))

    started = time.monotonic()
    async with make_session(endpoint) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(min(endpoint.concurrency, queue.qsize()))]
        watcher = asyncio.create_task(watch()) if cancel is not None else None
        try:
            if watcher is None:
                await asyncio.gather(*workers)
            else:
                done, _ = await asyncio.wait([asyncio.gather(*workers), watcher],
                                             return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()  # re-raise Halt or a worker's exception
        finally:
            for task in [*workers, *([watcher] if watcher else [])]:
                task.cancel()
            await asyncio.gather(*workers, *([watcher] if watcher else []), return_exceptions=True)
    return time.monotonic() - started
