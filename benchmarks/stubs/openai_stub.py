"""A fault-injecting OpenAI-compatible stub: for what a real server cannot do on demand.

It answers `/v1/completions` and `/v1/chat/completions` with a deterministic text per request body
(`stub-` + a hash of the prompt), and `/v1/models`. It honours the token budget as OpenAI does (`max_tokens`;
chat's `max_completion_tokens` first): an integer of at least 1, else a 400 naming it; a longer answer is cut
there with `finish_reason: "length"` (one token a character here) and `usage.completion_tokens` says what was
sent. A `plan(body_hash, attempt)` chooses, per request, one of:

    ok, 429, 500, 502, 503, 400, 401, 403, 404, stall (no answer for `stall_s`), reset (drop the connection),
    malformed (200 with a body that is not JSON), empty (200 with no choices)

and, for the hostile-server tests, replies a client must survive (HOSTILE): a lone surrogate in the text,
token counts too large for SQLite, a body nested very deeply, a 5,000-digit integer, fields of the wrong
type, `text: null`, a 200 carrying an error object, an endless body, a body larger than any answer, a 401
that echoes the key (the Authorization header; OpenAI's shape with the key bare or masked), and 429s whose
Retry-After is garbage, huge or zero.

With `logprobs` (body -> {token: log-probability} of the first token), a request that asks for them gets them
as OpenAI shapes them: completions `logprobs: N` (at most 5) -> `choices[0].logprobs` with `tokens`,
`token_logprobs`, `top_logprobs` (one {token: logprob} per token) and `text_offset`; chat `logprobs: true` with
`top_logprobs: N` (0-20; `top_logprobs` without `logprobs: true` is a 400) -> `choices[0].logprobs.content`, one
{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]} per token. Without it, none are returned.
With `reasoning` set, it refuses `logprobs`/`top_logprobs` as OpenAI does from a reasoning model unless
`reasoning_effort` is "none": a 400 `{"error": {"message": "This model does not support the 'logprobs'
parameter.", "type": "invalid_request_error", "param": "logprobs", "code": null}}`.
`raw_logprobs` (body -> any JSON value, or bytes of JSON text spliced in as they are, e.g. a 5,000-digit
integer Python will not print) sends that value as `choices[0].logprobs` instead, however malformed.

It counts what it saw (per body, and the Authorization headers). Raw asyncio HTTP/1.1 with keep-alive, so
one core serves thousands of requests per second. `python -m benchmarks.stubs.openai_stub --port P [--fault-share 0.1]`
runs it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
from collections import Counter
from typing import Callable

from benchmarks.stubs.threaded import ThreadedServer

FAULTS = ("429", "500", "502", "503", "400", "stall", "reset", "malformed", "empty")
HOSTILE = ("surrogate", "huge_tokens", "deep", "long_int", "wrong_types", "null_text", "error_200", "endless",
           "oversized", "echo_key", "echo_key_bare", "echo_key_masked", "garbage_retry_after", "huge_retry_after",
           "zero_retry_after")
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def answer_for(body: dict) -> str:
    """The deterministic answer to a request body."""
    source = body.get("prompt") if "prompt" in body else json.dumps(body.get("messages"), sort_keys=True)
    return "stub-" + hashlib.sha256(str(source).encode()).hexdigest()[:12]


def sent_for(body: dict) -> str:
    """What the stub sends for a request body by default: its answer, within the body's token budget."""
    return within_budget(answer_for(body), body, "messages" in body)[0]


def body_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Stub(ThreadedServer):
    reasoning = False  # set True: a reasoning model, log-probabilities refused unless reasoning_effort is none

    def __init__(self, plan: Callable[[str, int], str] | None = None, latency: tuple[float, float] = (0.0, 0.0),
                 stall_s: float = 30.0, retry_after: str = "0.05", seed: int = 0,
                 models: list[str] | None = None, answers: Callable[[dict], str] | None = None,
                 logprobs: Callable[[dict], dict[str, float]] | None = None,
                 raw_logprobs: Callable[[dict], object] | None = None,
                 hold_until: int | None = None, hold_s: float = 60.0) -> None:
        # with latency: the first requests wait until `hold_until` are in flight together, or `release()`, at
        # most hold_s; a test then keys its moments to events, not to how fast this machine is today
        self.hold_until, self.hold_s, self.held = hold_until, hold_s, 0
        self._released = asyncio.Event()
        self.logprobs = logprobs  # the first token's distribution for a body (None: the server returns none)
        self.raw_logprobs = raw_logprobs  # the whole `logprobs` value of the choice, as given (hostile shapes)
        self.models = models or []  # what /v1/models lists (empty: any name is served)
        self.answers = answers or answer_for  # the text to answer a request body with
        self.plan = plan or (lambda _h, _a: "ok")
        self.latency = latency
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.rng = random.Random(seed)
        self.seen: Counter[str] = Counter()  # body hash -> requests received
        self.outcomes: Counter[str] = Counter()
        self.authorizations: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def release(self) -> None:
        """Let the held requests (`hold_until`) go on, from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._released.set)

    async def _respond(self, writer: asyncio.StreamWriter, status: int, payload: bytes,
                       headers: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                if path.endswith("/models"):
                    listed = [{"id": m, "object": "model"} for m in self.models]
                    await self._respond(writer, 200, json.dumps({"object": "list", "data": listed}).encode())
                    continue
                if not path.endswith("completions"):
                    await self._respond(writer, 404, b'{"error":{"message":"not found"}}')
                    continue
                if "authorization" in headers:
                    self.authorizations[headers["authorization"]] += 1
                digest = body_hash(raw)
                self.seen[digest] += 1
                action = self.plan(digest, self.seen[digest])
                self.outcomes[action] += 1
                low, high = self.latency
                if high > 0:
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    try:
                        if self.hold_until is not None and not self._released.is_set():
                            if self.in_flight >= self.hold_until:
                                self.held = self.in_flight
                                self._released.set()
                            else:
                                with contextlib.suppress(asyncio.TimeoutError):
                                    await asyncio.wait_for(self._released.wait(), self.hold_s)
                        await asyncio.sleep(self.rng.uniform(low, high))
                    finally:
                        self.in_flight -= 1
                if action == "reset":
                    writer.transport.abort()
                    return
                if action == "stall":
                    await asyncio.sleep(self.stall_s)
                    writer.transport.abort()
                    return
                if action in ("429", "500", "502", "503", "400", "401", "403", "404"):
                    extra = {"Retry-After": self.retry_after} if action in ("429", "503") else {}
                    await self._respond(writer, int(action), b'{"error":{"message":"injected"}}', extra)
                    continue
                if action == "malformed":
                    await self._respond(writer, 200, b'{"choices": [{"text": "trunc')
                    continue
                if action in HOSTILE:
                    if not await self._hostile(action, writer, headers):
                        return
                    continue
                body = json.loads(raw)
                chat = path.endswith("/chat/completions")
                refused = _budget_refusal(body, chat)
                if refused:
                    await self._respond(writer, 400, json.dumps({"error": {
                        "message": refused[1], "type": "invalid_request_error", "param": refused[0],
                        "code": "integer_below_min_value"}}).encode())
                    continue
                text, finish = within_budget(self.answers(body), body, chat)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                          if chat else {"index": 0, "text": text, "finish_reason": finish})
                refused = _logprobs_refusal(body, chat)
                if refused:
                    await self._respond(writer, 400, json.dumps({"error": {
                        "message": refused, "type": "invalid_request_error", "param": "logprobs",
                        "code": None}}).encode())
                    continue
                named = next((f for f in ("logprobs", "top_logprobs") if body.get(f) not in (None, False)), None)
                if self.reasoning and named and body.get("reasoning_effort") != "none":  # as OpenAI refuses
                    await self._respond(writer, 400, json.dumps({"error": {
                        "message": f"This model does not support the '{named}' parameter.",
                        "type": "invalid_request_error", "param": named, "code": None}}).encode())
                    continue
                if self.logprobs is not None and (body.get("logprobs") if chat else body.get("logprobs") is not None):
                    choice["logprobs"] = _logprobs(self.logprobs(body), body, chat, text)
                raw = None
                if self.raw_logprobs is not None and body.get("logprobs") not in (None, False):
                    raw = self.raw_logprobs(body)
                    choice["logprobs"] = "\0raw\0" if isinstance(raw, bytes) else raw
                reply = {"id": "stub", "object": "chat.completion" if chat else "text_completion",
                         "model": body.get("model"), "choices": [] if action == "empty" else [choice],
                         "usage": {"prompt_tokens": 10, "completion_tokens": len(text), "total_tokens": 10 + len(text)}}
                encoded = json.dumps(reply).encode()
                if isinstance(raw, bytes):
                    encoded = encoded.replace(b'"\\u0000raw\\u0000"', raw)
                await self._respond(writer, 200, encoded)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _hostile(self, action: str, writer: asyncio.StreamWriter, headers: dict[str, str]) -> bool:
        """One hostile reply; False when the connection is gone afterwards."""
        def completion(text_json: str, usage: str = '{"prompt_tokens": 10, "completion_tokens": 3}') -> bytes:
            return ('{"choices": [{"index": 0, "text": ' + text_json + ', "finish_reason": "stop"}], "usage": '
                    + usage + '}').encode()

        if action == "surrogate":
            await self._respond(writer, 200, completion('"bad \\ud800 text"'))
        elif action == "huge_tokens":
            await self._respond(writer, 200, completion('"ok"', '{"prompt_tokens": ' + "9" * 30 + "}"))
        elif action == "deep":
            await self._respond(writer, 200, b"[" * 200_000 + b"]" * 200_000)
        elif action == "long_int":
            await self._respond(writer, 200, completion('"ok"', '{"prompt_tokens": ' + "7" * 5000 + "}"))
        elif action == "wrong_types":
            await self._respond(writer, 200, b'{"choices": [{"text": "typed", "finish_reason": ["x"]}], '
                                             b'"usage": "lots"}')
        elif action == "null_text":
            await self._respond(writer, 200, completion("null"))
        elif action == "error_200":
            await self._respond(writer, 200, b'{"error": {"message": "upstream overloaded"}}')
        elif action == "endless":  # a body with no length that never ends: only the client's cap stops it
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                         b'{"choices": [{"text": "')
            chunk = b"x" * 65536
            try:
                while True:
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, RuntimeError):
                return False
        elif action == "oversized":
            await self._respond(writer, 200, completion('"' + "y" * (8 * 2**20) + '"'))
        elif action == "echo_key":
            echoed = json.dumps({"error": {"message": f"invalid key {headers.get('authorization', '')}"}})
            await self._respond(writer, 401, echoed.encode())
        elif action in ("echo_key_bare", "echo_key_masked"):  # OpenAI's 401 shape: the key bare, or masked
            key = headers.get("authorization", "").removeprefix("Bearer ")
            shown = key if action == "echo_key_bare" else key[:6] + "*" * max(len(key) - 10, 0) + key[-4:]
            echoed = json.dumps({"error": {"message": f"Incorrect API key provided: {shown}. You can find your API "
                                                      "key at https://platform.openai.com/account/api-keys.",
                                           "type": "invalid_request_error", "param": None,
                                           "code": "invalid_api_key"}})
            await self._respond(writer, 401, echoed.encode())
        else:
            after = {"garbage_retry_after": "soon, maybe", "huge_retry_after": "99999999",
                     "zero_retry_after": "0"}[action]
            await self._respond(writer, 429, b'{"error":{"message":"slow down"}}', {"Retry-After": after})
        return True

    async def serve(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._handle, host, port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _open(self, port: int) -> None:
        await self.serve(port)

    async def _close(self) -> None:
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()


def budget_of(body: dict, chat: bool) -> tuple[str, object] | None:
    """The token budget a body sets, as (parameter, value): chat's `max_completion_tokens` (which replaced
    `max_tokens` there) before `max_tokens`; None where it sets none."""
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    return next(((name, body[name]) for name in names if body.get(name) is not None), None)


def _budget_refusal(body: dict, chat: bool) -> tuple[str, str] | None:
    """OpenAI's check of the budget: an integer of at least 1 (a 400 naming the parameter otherwise)."""
    budget = budget_of(body, chat)
    if budget is None:
        return None
    name, value = budget
    if not isinstance(value, int) or isinstance(value, bool):
        return name, f"Invalid type for '{name}': expected an integer, but got {type(value).__name__} instead."
    if value < 1:
        return name, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead."
    return None


def within_budget(text: str, body: dict, chat: bool = False) -> tuple[str, str]:
    """The answer as the service returns it under the body's budget, with its finish_reason: one token per
    character here (the first character is the first token, as in `_logprobs`), cut at the budget with
    "length", else "stop". A 1-token multiple-choice request gets one character, never a 17-character text."""
    budget = budget_of(body, chat)
    if budget is not None and isinstance(budget[1], int) and len(text) > budget[1]:
        return text[: budget[1]], "length"
    return text, "stop"


def _logprobs_refusal(body: dict, chat: bool) -> str | None:
    """OpenAI's checks of the log-probability fields."""
    if chat:
        top = body.get("top_logprobs")
        if top is not None and not body.get("logprobs"):
            return "Invalid value for 'top_logprobs': logprobs must be set to true if this parameter is used."
        if top is not None and not (isinstance(top, int) and 0 <= top <= 20):
            return "Invalid 'top_logprobs': integer between 0 and 20 expected."
        return None
    value = body.get("logprobs")
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 5):
        return "Invalid 'logprobs': the maximum value for logprobs is 5."
    return None


def _logprobs(first: dict[str, float], body: dict, chat: bool, text: str) -> dict:
    """The first token's top log-probabilities (the text's first character as its token) in OpenAI's shape."""
    token = text[:1]
    ranked = sorted(first.items(), key=lambda item: -item[1])
    if chat:
        top = ranked[: body.get("top_logprobs") or 0]
        return {"content": [{"token": token, "logprob": first.get(token, -50.0), "bytes": list(token.encode()),
                             "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top]}],
                "refusal": None}
    top = dict(ranked[: body["logprobs"]])
    return {"tokens": [token], "token_logprobs": [first.get(token, -50.0)], "top_logprobs": [top],
            "text_offset": [len(body.get("prompt", ""))]}


def share_plan(share: float, faults: tuple[str, ...] = FAULTS, seed: int = 0) -> Callable[[str, int], str]:
    """A `share` of first attempts gets a fault (chosen per body); every retry succeeds."""
    def plan(digest: str, attempt: int) -> str:
        rng = random.Random(f"{seed}:{digest}")
        if attempt == 1 and rng.random() < share:
            return rng.choice(faults)
        return "ok"
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stub server")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fault-share", type=float, default=0.0)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--served-model-name", nargs="+", default=[], metavar="NAME",
                        help="the names /v1/models lists, as vLLM's flag (default: none listed, any name served)")
    args = parser.parse_args()
    stub = Stub(share_plan(args.fault_share), latency=tuple(args.latency), models=args.served_model_name)

    async def run() -> None:
        await stub.serve(args.port, args.host)
        print(stub.base_url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
