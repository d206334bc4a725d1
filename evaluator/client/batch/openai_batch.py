"""OpenAI's Batch API through the `openai` SDK: a JSONL file of requests (purpose "batch"), a batch over it
(completion window 24 h), its status and request counts, then its output and error files, matched to our
requests by custom id (the order is not kept)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Iterator

from evaluator.client.batch import BatchRequest, BatchState, sdk
from evaluator.client.http import Fault, Reply, first_token, loads, parse_reply

ENDED = {"completed", "failed", "expired", "cancelled"}
SET_KEY = "shopping_mmlu_set"  # metadata: which requests a batch holds (keys up to 64 characters, values 512)
LOOK_BACK = 1000  # batches searched for one of ours


def request_set(requests: list[BatchRequest]) -> str:
    return hashlib.sha256("\n".join(sorted(r.key for r in requests)).encode()).hexdigest()[:32]


class OpenAIBatches:
    name = "openai"
    max_requests = 50_000  # the provider's limits per batch
    max_bytes = 200_000_000  # 200 MB: decimal
    creates = 3  # tries at creating one batch, each after looking for the one a lost reply may have made

    def __init__(self, api_key: str | None, base_url: str | None) -> None:
        openai = sdk("openai")
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=5, timeout=120.0)

    @staticmethod
    def line(request: BatchRequest, chat: bool) -> bytes:
        url = "/v1/chat/completions" if chat else "/v1/completions"
        return (json.dumps({"custom_id": request.key, "method": "POST", "url": url, "body": request.body},
                           ensure_ascii=False) + "\n").encode("utf-8")

    def submit(self, requests: list[BatchRequest], chat: bool, tag: str, known: frozenset[str] = frozenset()) -> str:
        """Create a batch once. The SDK would retry a create whose reply was lost, without an idempotency key:
        a second, billed batch. So each batch carries the digest of its custom ids in its metadata; before
        creating, and after a create that failed, we look for our own open batch with that digest (made by a
        lost reply, or by a run killed before it could record it) and take it instead; never one in `known`
        (the batches the cache has recorded: read already, or unreadable)."""
        digest = request_set(requests)
        found = self._ours(digest, known)
        if found:
            return found
        payload = b"".join(self.line(r, chat) for r in requests)
        upload = self.client.files.create(file=("shopping-mmlu-batch.jsonl", payload), purpose="batch")
        once = self.client.with_options(max_retries=0)
        for attempt in range(1, self.creates + 1):
            try:
                return once.batches.create(input_file_id=upload.id, completion_window="24h",
                                           endpoint="/v1/chat/completions" if chat else "/v1/completions",
                                           metadata={"shopping_mmlu": tag[:512], SET_KEY: digest}).id
            except Exception:  # noqa: BLE001: a lost reply, a timeout, a 5xx: was it made anyway?
                found = self._ours(digest, known)
                if found:
                    return found
                if attempt == self.creates:
                    raise
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def _ours(self, digest: str, known: frozenset[str]) -> str | None:
        """Our batch for this request set that the cache does not know, among the account's newest."""
        for number, batch in enumerate(self.client.batches.list(limit=100)):
            if number >= LOOK_BACK:
                break
            metadata = batch.metadata or {}
            if (metadata.get(SET_KEY) == digest and batch.id not in known
                    and batch.status not in ("failed", "expired", "cancelled")):
                return batch.id
        return None

    def poll(self, batch_id: str) -> BatchState:
        batch = self.client.batches.retrieve(batch_id)
        counts = batch.request_counts
        total = counts.total if counts else 0
        failed_batch = code = None
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            failed_batch = "; ".join(str(getattr(e, "message", e))[:200] for e in errors[:3]) or "failed"
            code = next((str(e.code)[:64] for e in errors if getattr(e, "code", None)), None)
        return BatchState(status=batch.status, total=total, done=counts.completed if counts else 0,
                          failed=counts.failed if counts else 0, ended=batch.status in ENDED,
                          failed_batch=failed_batch, code=code)

    def results(self, batch_id: str, chat: bool) -> Iterator[tuple[str, Reply]]:
        batch = self.client.batches.retrieve(batch_id)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = self.client.files.content(file_id).read()
            for raw in content.splitlines():
                if raw.strip():
                    yield from _result(raw, chat)


def _result(raw: bytes, chat: bool) -> Iterator[tuple[str, Reply]]:
    """One output or error line as (custom id, Reply); a line we cannot read yields nothing."""
    try:
        line = loads(raw)
    except (ValueError, RecursionError):
        return
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return
    key = line["custom_id"]
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200 and isinstance(response.get("body"), dict):
        body = json.dumps(response["body"]).encode()
        try:
            text, finish, prompt_tokens, completion_tokens = parse_reply(body, chat)
        except Fault as fault:
            yield key, Reply(False, 1, 0.0, error_kind=fault.kind, status=fault.status, message=str(fault))
            return
        yield key, Reply(True, 1, 0.0, text, finish, prompt_tokens, completion_tokens,
                         logprobs=first_token(body, chat))
        return
    status = response.get("status_code") if isinstance(response, dict) else None
    detail = error if error else (response.get("body") if isinstance(response, dict) else None)
    message = detail.get("message") if isinstance(detail, dict) else detail
    if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
        message = detail["error"].get("message")
    yield key, Reply(False, 1, 0.0, error_kind="batch_error", status=status if isinstance(status, int) else None,
                     message=f"batch request failed: {str(message)[:500]}")
