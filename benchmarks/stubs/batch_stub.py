"""A loopback stand-in for OpenAI's Batch API and Anthropic's Message Batches (we cannot reach either).

OpenAI: POST /v1/files, POST /v1/batches, GET /v1/batches/{id}, GET /v1/files/{id}/content,
POST /v1/batches/{id}/cancel. Anthropic: POST /v1/messages/batches, GET /v1/messages/batches/{id},
GET /v1/messages/batches/{id}/results, POST /v1/messages/batches/{id}/cancel. A batch moves one state per
poll (`polls_to_end` polls to end); each request is answered with the live stub's deterministic answer to
the same question, so batch and live answers can be compared. Faults, per stub:

    expire_half      the batch expires with only half of its requests answered
    error_share      this share of requests (by custom id) fail inside the results
    poll_5xx         every n-th retrieve answers 500 first (the SDK retries it)
    unknown_id       the results carry one line with a custom id nobody asked for
    lose_create      the first n batch creations succeed but their reply is lost (the connection drops)
    limit_create     the first n Anthropic batch creations are refused for a rate limit, as Anthropic answers one:
                     429, `{"type": "error", "error": {"type": "rate_limit_error", ...}, "request_id": ...}`,
                     a `retry-after` header in whole seconds (`retry_after`) and a `request-id` header
    results_gone     an ended batch's output files answer 404, as after OpenAI deletes them (~30 days)
    token_limit      OpenAI's enqueued-token limit per model: a batch that would pass it (with the batches still
                     open) fails in validation, `errors.data[0].code` "token_limit_exceeded" (tokens counted as
                     a quarter of the body's characters plus its max_tokens)

GET /v1/batches lists OpenAI batches newest first (`limit` 1-100, `after`, `has_more`), and GET /v1/messages/batches
Anthropic's (`limit` 1-1000, default 20, `after_id`/`before_id`, `first_id`/`last_id`/`has_more`), as their SDKs
page them. `lose_create` drops the reply of either provider's create.

It refuses what the services refuse (their API references and SDK types): OpenAI takes a file uploaded with
purpose "batch" whose every line is a JSON object with a `custom_id` unique in the file, `method` "POST", a `url`
equal to the batch's endpoint and a `body` naming one model for the whole file (at most 50,000 lines, 200 MB),
`completion_window` "24h" and a supported endpoint, else the batch fails validation with `errors.data` naming
the line (or the create is a 400 naming the parameter); Anthropic takes at most 100,000 requests whose
`custom_id` matches ^[a-zA-Z0-9_-]{1,64}$ and is unique, each `params` with `model`, `max_tokens` (>= 1) and
`messages`, else a 400 naming `requests.N...`. Answers keep to each request's token budget as the live stub's
do (cut with finish_reason "length", or Anthropic's stop_reason "max_tokens").

It records every key it saw (Authorization and x-api-key headers) and every batch created.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections import Counter

from aiohttp import web

from benchmarks.stubs.openai_stub import answer_for, within_budget
from benchmarks.stubs.threaded import AiohttpServer


OPENAI_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
OPENAI_MAX_LINES, OPENAI_MAX_BYTES = 50_000, 200 * 2**20
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def openai_refusal(message: str, param: str, code: str = "invalid_value", status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": code}}, status=status)


def openai_line_errors(content: bytes, endpoint: str) -> list[dict]:
    """OpenAI's validation of a batch input file: one {code, line, message, param} per fault found (1-based)."""
    if len(content) > OPENAI_MAX_BYTES:
        return [{"code": "file_too_large", "line": None, "param": None,
                 "message": f"The input file exceeds the maximum size of {OPENAI_MAX_BYTES:,} bytes."}]
    lines = [line for line in content.splitlines() if line.strip()]
    if len(lines) > OPENAI_MAX_LINES:
        return [{"code": "too_many_requests", "line": None, "param": None,
                 "message": f"The batch has {len(lines):,} requests; at most {OPENAI_MAX_LINES:,} are allowed."}]
    errors, seen, models = [], set(), set()
    for number, raw in enumerate(lines, 1):
        def fault(code: str, param: str | None, message: str) -> None:
            errors.append({"code": code, "line": number, "param": param, "message": message})
        try:
            line = json.loads(raw)
        except ValueError:
            fault("invalid_json_line", None, "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict):
            fault("invalid_json_line", None, "This line is not a JSON object.")
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            fault("missing_required_parameter", "custom_id", "The request is missing a custom_id.")
        elif custom_id in seen:
            fault("duplicate_custom_id", "custom_id", "The custom_id for this request is a duplicate of another "
                  "request. The custom_id parameter must be unique for each request in a batch.")
        seen.add(custom_id)
        if line.get("method") != "POST":
            fault("invalid_value", "method", f"Invalid method {line.get('method')!r}: only POST is supported.")
        if line.get("url") != endpoint:
            fault("mismatched_endpoint", "url", f"The URL provided for this request ({line.get('url')!r}) does not "
                  f"match the batch endpoint ({endpoint!r}).")
        body = line.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            fault("missing_required_parameter", "body.model", "The request body must be an object naming a model.")
        else:
            models.add(body["model"])
    if len(models) > 1:
        errors.append({"code": "mismatched_model", "line": None, "param": "body.model",
                       "message": f"All requests in a batch must use the same model; found {sorted(models)}."})
    return errors


def anthropic_refusal(requests) -> str | None:
    """Anthropic's validation of a Message Batch create, as the first fault's message (Pydantic-style path)."""
    if not isinstance(requests, list) or not requests:
        return "requests: Field required (a non-empty list)"
    if len(requests) > ANTHROPIC_MAX_REQUESTS:
        return f"requests: at most {ANTHROPIC_MAX_REQUESTS:,} requests in a batch"
    seen = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.fullmatch(custom_id):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if custom_id in seen:
            return f"requests.{i}.custom_id: custom_id must be unique within a batch: {custom_id!r}"
        seen.add(custom_id)
        params = item.get("params")
        if not isinstance(params, dict):
            return f"requests.{i}.params: Field required"
        for name in ("model", "max_tokens", "messages"):
            if name not in params:
                return f"requests.{i}.params.{name}: Field required"
        budget = params["max_tokens"]
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            return f"requests.{i}.params.max_tokens: Input should be greater than or equal to 1"
        if not isinstance(params["messages"], list) or not params["messages"]:
            return f"requests.{i}.params.messages: at least one message is required"
    return None


def _fraction(custom_id: str) -> float:
    return int(hashlib.sha256(custom_id.encode()).hexdigest()[:8], 16) / 2**32


class BatchStub(AiohttpServer):
    def __init__(self, polls_to_end: int = 3, expire_half: bool = False, error_share: float = 0.0,
                 poll_5xx: int = 0, unknown_id: bool = False, lose_create: int = 0, results_gone: bool = False,
                 token_limit: int | None = None, limit_create: int = 0, retry_after: str = "1") -> None:
        self.polls_to_end = polls_to_end
        self.limit_create, self.retry_after = limit_create, retry_after
        self.refused = 0  # creations answered 429
        self.token_limit = token_limit
        self.lose_create, self.results_gone = lose_create, results_gone
        self.expire_half, self.error_share, self.poll_5xx, self.unknown_id = expire_half, error_share, poll_5xx, unknown_id
        self.keys: Counter[str] = Counter()
        self.files: dict[str, bytes] = {}
        self.purposes: dict[str, str] = {}
        self.batches: dict[str, dict] = {}
        self.retrieves = 0
        self.ids = itertools.count(1)
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests_submitted(self) -> int:
        return sum(len(b["requests"]) for b in self.batches.values())

    # ---------------------------------------------------------------- shared

    def _authorised(self, request: web.Request) -> bool:
        found = [request.headers[h] for h in ("authorization", "x-api-key") if h in request.headers]
        for key in found:
            self.keys[key.removeprefix("Bearer ")] += 1
        return bool(found)

    def _advance(self, batch: dict) -> None:
        batch["polls"] += 1
        if batch["polls"] >= self.polls_to_end and not batch["ended"]:
            batch["ended"] = True
            batch["ended_at"] = int(time.time())

    def _answers(self, batch: dict) -> list[tuple[str, dict, bool]]:
        """(custom id, live-equivalent body, failed) for each request the batch answers."""
        requests = batch["requests"]
        if self.expire_half or batch.get("cancelled"):
            requests = requests[: len(requests) // 2]
        return [(cid, body, _fraction(cid) < self.error_share) for cid, body in requests]

    def _maybe_5xx(self) -> web.Response | None:
        self.retrieves += 1
        if self.poll_5xx and self.retrieves % self.poll_5xx == 0:
            return web.json_response({"error": {"message": "transient"}}, status=500)
        return None

    # ---------------------------------------------------------------- OpenAI

    async def openai_file(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        form = await request.post()
        purpose = form.get("purpose")
        if purpose not in OPENAI_PURPOSES:
            return openai_refusal(f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        if "file" not in form:
            return openai_refusal("Missing required parameter: 'file'.", "file", "missing_required_parameter")
        upload = form["file"]
        content = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        file_id = f"file-{next(self.ids)}"
        self.files[file_id] = content
        self.purposes[file_id] = purpose
        return web.json_response({"id": file_id, "object": "file", "bytes": len(content),
                                  "created_at": int(time.time()), "filename": "input.jsonl", "purpose": purpose,
                                  "status": "processed"})

    def _openai_batch(self, batch: dict) -> dict:
        if batch.get("refused") or batch.get("invalid"):
            errors = batch.get("invalid") or [{"code": "token_limit_exceeded", "line": None, "param": None,
                                               "message": batch["refused"]}]
            return {"id": batch["id"], "object": "batch", "endpoint": batch["endpoint"],
                    "input_file_id": batch["input"], "completion_window": "24h", "status": "failed",
                    "created_at": batch["created_at"], "output_file_id": None, "error_file_id": None,
                    "metadata": batch["metadata"], "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "errors": {"object": "list", "data": errors}}
        ended = batch["ended"]
        answered = self._answers(batch) if ended else []
        failed = sum(1 for *_, bad in answered if bad)
        status = ("cancelled" if batch.get("cancelled") else "expired" if self.expire_half else "completed") \
            if ended else ("validating" if batch["polls"] == 0 else "in_progress")
        total = len(batch["requests"])
        return {"id": batch["id"], "object": "batch", "endpoint": batch["endpoint"], "input_file_id": batch["input"],
                "completion_window": "24h", "status": status, "created_at": batch["created_at"],
                "output_file_id": f"{batch['id']}-out" if ended else None,
                "error_file_id": f"{batch['id']}-err" if ended and failed else None,
                "metadata": batch["metadata"],
                "request_counts": {"total": total, "completed": len(answered) - failed, "failed": failed}}

    async def openai_create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        payload = await request.json()
        if payload.get("completion_window") != "24h":
            return openai_refusal(f"Invalid value for 'completion_window': {payload.get('completion_window')!r}. "
                                  "Supported values are: '24h'.", "completion_window")
        if payload.get("endpoint") not in OPENAI_ENDPOINTS:
            return openai_refusal(f"Invalid value for 'endpoint': {payload.get('endpoint')!r}.", "endpoint")
        file_id = payload.get("input_file_id")
        if file_id not in self.files:
            return openai_refusal(f"No such File object: {file_id}", "input_file_id", "not_found", 404)
        if self.purposes[file_id] != "batch":
            return openai_refusal(f"The input file {file_id} must be uploaded with purpose 'batch' "
                                  f"(it has {self.purposes[file_id]!r}).", "input_file_id")
        invalid = openai_line_errors(self.files[file_id], payload["endpoint"])
        lines = [] if invalid else [json.loads(line) for line in self.files[file_id].splitlines() if line.strip()]
        batch_id = f"batch_{next(self.ids)}"
        self.batches[batch_id] = {"id": batch_id, "provider": "openai", "endpoint": payload["endpoint"],
                                  "input": file_id, "metadata": payload.get("metadata"),
                                  "requests": [(line["custom_id"], line["body"]) for line in lines],
                                  "polls": 0, "ended": bool(invalid), "invalid": invalid,
                                  "created_at": int(time.time())}
        batch = self.batches[batch_id]
        if self.token_limit is not None and not invalid:
            def tokens(b: dict) -> int:
                return sum(len(json.dumps(body)) // 4 + body.get("max_tokens", 0) for _, body in b["requests"])

            enqueued = sum(tokens(b) for b in self.batches.values()
                           if b is not batch and not b["ended"] and not b.get("refused"))
            if enqueued + tokens(batch) > self.token_limit:
                batch["ended"] = True
                batch["refused"] = (f"Enqueued token limit reached for {payload.get('endpoint')} in organization "
                                    f"org-stub. Limit: {self.token_limit:,} enqueued tokens. Please try again once "
                                    "some in_progress batches have been completed.")
        if self.lose_create > 0:  # made, and the reply never arrives
            self.lose_create -= 1
            request.transport.abort()
            return web.Response(status=500)
        return web.json_response(self._openai_batch(self.batches[batch_id]))

    async def openai_list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        limit = min(int(request.query.get("limit", "20")), 100)
        ordered = [b for b in reversed(self.batches.values()) if b["provider"] == "openai"]
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in ordered]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        page = [self._openai_batch(b) for b in ordered[:limit]]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit})

    def _retrieve(self, request: web.Request, view) -> web.Response:
        """A poll: one state further, or a 500 now and then."""
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        failure = self._maybe_5xx()
        if failure is not None:
            return failure
        batch = self.batches[request.match_info["id"]]
        self._advance(batch)
        return web.json_response(view(batch))

    def _cancel(self, request: web.Request, view) -> web.Response:
        batch = self.batches[request.match_info["id"]]
        batch["cancelled"] = batch["ended"] = True
        return web.json_response(view(batch))

    async def openai_retrieve(self, request: web.Request) -> web.Response:
        return self._retrieve(request, self._openai_batch)

    async def openai_cancel(self, request: web.Request) -> web.Response:
        return self._cancel(request, self._openai_batch)

    async def openai_content(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        file_id = request.match_info["id"]
        if self.results_gone:
            return web.json_response({"error": {"message": f"No such File object: {file_id}",
                                                "type": "invalid_request_error"}}, status=404)
        batch = self.batches[file_id.rsplit("-", 1)[0]]
        chat = batch["endpoint"].endswith("chat/completions")
        lines = []
        for custom_id, body, failed in self._answers(batch):
            if file_id.endswith("-err") and failed:
                lines.append({"id": "r", "custom_id": custom_id, "response": {
                    "status_code": 400, "body": {"error": {"message": "injected per-request error"}}}, "error": None})
            elif file_id.endswith("-out") and not failed:
                text, finish = within_budget(answer_for(body), body, chat)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                          if chat else {"index": 0, "text": text, "finish_reason": finish})
                lines.append({"id": "r", "custom_id": custom_id, "error": None, "response": {
                    "status_code": 200, "request_id": "q", "body": {
                        "id": "c", "object": "chat.completion", "choices": [choice],
                        "usage": {"prompt_tokens": 10, "completion_tokens": len(text),
                                  "total_tokens": 10 + len(text)}}}})
        if file_id.endswith("-out") and self.unknown_id:
            lines.append({"id": "r", "custom_id": "nobody-asked", "error": None, "response": {
                "status_code": 200, "body": {"choices": [{"index": 0, "text": "x"}]}}})
        return web.Response(body="".join(json.dumps(x) + "\n" for x in lines).encode(),
                            content_type="application/octet-stream")

    # ---------------------------------------------------------------- Anthropic

    def _anthropic_batch(self, batch: dict) -> dict:
        ended = batch["ended"]
        answered = self._answers(batch) if ended else []
        errored = sum(1 for *_, bad in answered if bad)
        total = len(batch["requests"])
        expired = total - len(answered) if ended and not batch.get("cancelled") else 0
        canceled = total - len(answered) if ended and batch.get("cancelled") else 0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch["created_at"]))
        return {"id": batch["id"], "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": {"processing": 0 if ended else total, "succeeded": len(answered) - errored,
                                   "errored": errored, "canceled": canceled, "expired": expired},
                "created_at": stamp, "expires_at": stamp, "ended_at": stamp if ended else None, "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"http://127.0.0.1:{self.port}/v1/messages/batches/{batch['id']}/results"
                if ended else None}

    async def anthropic_create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        payload = await request.json()
        if self.limit_create > 0:  # refused: no batch is made
            self.limit_create -= 1
            self.refused += 1
            request_id = f"req_stub{self.refused:020d}"
            return web.json_response({"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "Number of concurrent connections has exceeded your rate limit. Please try again later."},
                "request_id": request_id}, status=429,
                headers={"retry-after": self.retry_after, "request-id": request_id})
        refused = anthropic_refusal(payload.get("requests") if isinstance(payload, dict) else None)
        if refused:
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error",
                                                                 "message": refused}}, status=400)
        batch_id = f"msgbatch_{next(self.ids)}"
        requests = []
        version = request.headers.get("anthropic-version", "")
        for item in payload["requests"]:
            params = item["params"]
            dropped = sorted(k for k in ("temperature", "top_p", "top_k") if k in params)
            if version >= "2026-10-21" and dropped:  # the Messages parameters of that API version have none of these
                return web.json_response({"type": "error", "error": {
                    "type": "invalid_request_error",
                    "message": f"requests.0.params.{dropped[0]}: Extra inputs are not permitted"}}, status=400)
            messages = ([{"role": "system", "content": params["system"]}] if "system" in params else []) + \
                params["messages"]
            requests.append((item["custom_id"], {"messages": messages,  # the live-equivalent body
                                                 "max_tokens": params["max_tokens"]}))
        self.batches[batch_id] = {"id": batch_id, "provider": "anthropic", "requests": requests, "polls": 0,
                                  "ended": False, "created_at": int(time.time())}
        if self.lose_create > 0:  # made, and the reply never arrives
            self.lose_create -= 1
            request.transport.abort()
            return web.Response(status=500)
        return web.json_response(self._anthropic_batch(self.batches[batch_id]))

    async def anthropic_list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                 "message": "invalid x-api-key"}}, status=401)
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": "limit: Input should be between 1 and 1000"}}, status=400)
        ordered = [b for b in reversed(self.batches.values()) if b["provider"] == "anthropic"]
        ids = [b["id"] for b in ordered]
        if request.query.get("after_id"):
            after = request.query["after_id"]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        elif request.query.get("before_id"):
            before = request.query["before_id"]
            ordered = ordered[:ids.index(before)][-limit:] if before in ids else []
        page = [self._anthropic_batch(b) for b in ordered[:limit]]
        return web.json_response({"data": page, "has_more": len(ordered) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})

    async def anthropic_retrieve(self, request: web.Request) -> web.Response:
        return self._retrieve(request, self._anthropic_batch)

    async def anthropic_cancel(self, request: web.Request) -> web.Response:
        return self._cancel(request, self._anthropic_batch)

    async def anthropic_results(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": {"message": "no key"}}, status=401)
        batch = self.batches[request.match_info["id"]]
        lines = []
        for custom_id, body, failed in self._answers(batch):
            if failed:
                lines.append({"custom_id": custom_id, "result": {"type": "errored", "error": {
                    "type": "error", "error": {"type": "invalid_request_error", "message": "injected"}}}})
            else:
                text, finish = within_budget(answer_for({"messages": body["messages"]}), body)
                lines.append({"custom_id": custom_id, "result": {"type": "succeeded", "message": {
                    "id": "m", "type": "message", "role": "assistant", "model": "claude",
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "max_tokens" if finish == "length" else "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": len(text)}}}})
        answered = {line["custom_id"] for line in lines}
        for custom_id, _ in batch["requests"]:
            if custom_id not in answered:
                lines.append({"custom_id": custom_id, "result": {"type": "canceled" if batch.get("cancelled")
                                                                 else "expired"}})
        if self.unknown_id:
            lines.append({"custom_id": "nobody-asked", "result": {"type": "expired"}})
        return web.Response(body="".join(json.dumps(x) + "\n" for x in lines).encode(),
                            content_type="application/binary")

    # ---------------------------------------------------------------- life cycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 2**20)
        app.add_routes([
            web.post("/v1/files", self.openai_file), web.post("/v1/batches", self.openai_create),
            web.get("/v1/batches", self.openai_list),
            web.get("/v1/batches/{id}", self.openai_retrieve), web.post("/v1/batches/{id}/cancel", self.openai_cancel),
            web.get("/v1/files/{id}/content", self.openai_content),
            web.post("/v1/messages/batches", self.anthropic_create),
            web.get("/v1/messages/batches", self.anthropic_list),
            web.get("/v1/messages/batches/{id}", self.anthropic_retrieve),
            web.get("/v1/messages/batches/{id}/results", self.anthropic_results),
            web.post("/v1/messages/batches/{id}/cancel", self.anthropic_cancel)])
        return app
