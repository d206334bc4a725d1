"""Anthropic's Message Batches through the `anthropic` SDK: the requests go in the create call (custom id and
Messages parameters), the batch is polled until it has ended, and its results stream as JSONL (succeeded,
errored, canceled or expired per request). Our chat body becomes Messages parameters: the system message is
the `system` parameter, the user message the only message."""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Iterator

from evaluator.client.batch import BatchRequest, BatchState, sdk
from evaluator.client.http import MAX_TOKENS_FIELD, Reply, RetryPolicy, retry_after_seconds
from evaluator.errors import InputError


def message_params() -> frozenset[str]:
    """The Messages parameters of the API version the installed SDK sends, read from its own types."""
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming as Params

    return frozenset(Params.__required_keys__ | Params.__optional_keys__)


LOOK_BACK = 100  # newest batches searched for the one a lost reply made
SKEW_S = 300.0  # the provider's clock may differ from ours by this much
# A create answered 429 (rate_limit_error) is asked again after the provider's retry-after, else a backoff;
# one that asks for longer than max_total_s is not waited for.
RATE_LIMITED = RetryPolicy(max_attempts=6, max_total_s=600.0, base_delay_s=1.0, max_delay_s=60.0)


class AnthropicBatches:
    name = "anthropic"
    max_requests = 100_000
    max_bytes = 256_000_000  # 256 MB: decimal
    creates = 3
    created: dict[str, set[str]] = {}  # per endpoint, the batches this process made: never another's lost one

    def __init__(self, api_key: str | None, base_url: str | None) -> None:
        anthropic = sdk("anthropic")
        root = base_url[: -len("/v1")] if base_url and base_url.rstrip("/").endswith("/v1") else base_url
        self.client = anthropic.Anthropic(api_key=api_key, base_url=root.rstrip("/") if root else None,
                                          max_retries=5, timeout=120.0)
        self.made = self.created.setdefault(str(self.client.base_url), set())

    @staticmethod
    def params(body: dict) -> dict:
        """Messages parameters, only those the installed SDK's API version accepts: `anthropic` 2.x pins
        2026-10-21, whose Messages parameters have no `temperature` (the request then samples as the provider
        does by default; the body, and so the cache key, still says what we asked for)."""
        messages = body.get("messages")
        if not messages:
            raise InputError("Anthropic batches take chat requests: use --render chat (the profile's default)")
        system = [m["content"] for m in messages if m["role"] == "system"]
        params = {"model": body["model"], "max_tokens": body.get("max_tokens") or body["max_completion_tokens"],
                  "messages": [m for m in messages if m["role"] != "system"]}
        if "temperature" in message_params():
            params["temperature"] = body["temperature"]
        if system:
            params["system"] = "\n".join(system)
        return params

    def submit(self, requests: list[BatchRequest], chat: bool, tag: str, known: frozenset[str] = frozenset()) -> str:
        """Message batches carry no metadata, so a create is sent without the SDK's retries (which could make a
        second, billed batch). When the reply is lost (no connection, a timeout, a 5xx) we look among the newest
        batches for the one it may have made: created since we sent it, holding exactly our number of requests,
        unknown to the cache and to this process. One such batch is taken (its results are matched by custom id,
        so a stranger's batch would only answer nothing); several are not guessed between. A 429 is a refusal
        (no batch was made): the create is sent again after the provider's `retry-after`, else a backoff."""
        anthropic = sdk("anthropic")
        lost = (anthropic.APIConnectionError, anthropic.InternalServerError)
        body = [{"custom_id": r.key, "params": self.params(r.body)} for r in requests]
        once = self.client.with_options(max_retries=0)
        attempt = limited = 0
        while attempt < self.creates:
            sent = time.time()
            try:
                batch_id = once.messages.batches.create(requests=body).id
                self.made.add(batch_id)
                return batch_id
            except anthropic.RateLimitError as exc:
                limited += 1
                after = retry_after_seconds(exc.response.headers.get("retry-after"))
                if after is not None and after > RATE_LIMITED.max_total_s:
                    raise RuntimeError(f"batch creation rate-limited: the provider asks to wait {after:,.0f} s; "
                                       "rerun later") from None
                if limited >= RATE_LIMITED.max_attempts:
                    raise
                time.sleep(RATE_LIMITED.delay(limited, after, random.Random()))
                continue
            except lost:
                attempt += 1
                found = self._lost(len(requests), sent - SKEW_S, known | self.made)
                if len(found) == 1:
                    self.made.add(found[0])
                    return found[0]
                if len(found) > 1:
                    raise RuntimeError(f"a batch creation's reply was lost and {len(found)} new batches of "
                                       f"{len(requests)} requests could be it ({', '.join(found[:5])}): not "
                                       "creating another; cancel those not yours, then rerun") from None
                if attempt == self.creates:
                    raise
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def _lost(self, count: int, since: float, known: frozenset[str] | set[str]) -> list[str]:
        """Batches created since `since` (epoch seconds) with `count` requests that nobody here knows."""
        found = []
        for number, batch in enumerate(self.client.messages.batches.list(limit=LOOK_BACK)):
            if number >= LOOK_BACK:
                break
            created = batch.created_at.timestamp() if isinstance(batch.created_at, datetime) else 0.0
            counts = batch.request_counts
            total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
            if created < since:
                break  # newest first: the rest are older
            if total == count and batch.id not in known and batch.processing_status != "canceling":
                found.append(batch.id)
        return found

    def poll(self, batch_id: str) -> BatchState:
        batch = self.client.messages.batches.retrieve(batch_id)
        counts = batch.request_counts
        failed = counts.errored + counts.canceled + counts.expired
        done = counts.succeeded + failed
        return BatchState(status=batch.processing_status, total=done + counts.processing, done=done,
                          failed=failed, ended=batch.processing_status == "ended")

    def results(self, batch_id: str, chat: bool) -> Iterator[tuple[str, Reply]]:
        for item in self.client.messages.batches.results(batch_id):
            key = getattr(item, "custom_id", None)
            result = getattr(item, "result", None)
            if not isinstance(key, str) or result is None:
                continue
            kind = getattr(result, "type", None)
            if kind == "succeeded":
                message = result.message
                texts = [b.text for b in message.content if getattr(b, "type", None) == "text"]
                if not texts:
                    yield key, Reply(False, 1, 0.0, error_kind="empty", message="the batch result has no text")
                    continue
                usage = getattr(message, "usage", None)
                yield key, Reply(True, 1, 0.0, "".join(texts), message.stop_reason,
                                 _count(getattr(usage, "input_tokens", None)),
                                 _count(getattr(usage, "output_tokens", None)))
            else:
                error = getattr(result, "error", None)
                detail = getattr(getattr(error, "error", error), "message", None) if error is not None else None
                yield key, Reply(False, 1, 0.0, error_kind=f"batch_{kind or 'unknown'}",
                                 message=f"batch request {kind}: {str(detail or '')[:500]}".rstrip(": "))


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_FIELD else None
