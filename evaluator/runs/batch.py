"""A run through the provider's batch API, resumable, into the same response cache.

Each question's request is the live one, with its cache key as the custom id, so a batch answer is read back
exactly like a live answer to the same question and settings. The batch and its questions are recorded the
moment it exists: a run killed while polling re-attaches to it on the next run and never submits the same
questions twice. A batch that ends (completed, expired, cancelled, failed) has its results written at once;
a question it did not answer becomes an error row, which the next run (batch or live) asks again. Requests
are split over several batches where the provider's size limits require it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Iterator

from rich.console import Console

from evaluator.cache.responses import Answer, ResponseCache
from evaluator.client.batch import BatchProvider, BatchRequest, BatchState, provider_for
from evaluator.prompts import Rendering
from evaluator.redact import redact
from evaluator.runs.preflight import key_problem
from evaluator.runs.settings import Planned, RunConfig, Sending

POLL_ERRORS_TOLERATED = 20  # consecutive failed polls (the SDK retries each) before the run gives up
TOKEN_LIMIT = "token_limit_exceeded"  # OpenAI: the model's enqueued-token limit would be passed


def chunks(todo: list[Planned], max_requests: int, max_bytes: int) -> Iterator[list[Planned]]:
    """Consecutive pieces within the provider's limits on requests and bytes per batch."""
    piece, size = [], 0
    for item in todo:
        length = len(json.dumps(item.body, ensure_ascii=False).encode()) + 200
        if piece and (len(piece) >= max_requests or size + length > max_bytes):
            yield piece
            piece, size = [], 0
        piece.append(item)
        size += length
    if piece:
        yield piece


def _ingest(batch: dict, state: BatchState, provider: BatchProvider, cache: ResponseCache, model: str,
            chat: bool) -> tuple[int, Counter, int]:
    """Write an ended batch's results; (answers, errors by kind, unknown custom ids)."""
    items = cache.batch_items(batch["id"])
    seen: set[str] = set()
    unknown = answers = 0
    errors: Counter[str] = Counter()
    why, kind, label = (state.failed_batch or f"the batch ended ({state.status}) without a result for this "
                        "request"), "batch_missing", "ingested"
    try:
        for key, reply in provider.results(batch["id"], chat):
            if key not in items:
                unknown += 1
                continue
            if key in seen:
                continue
            seen.add(key)
            qid, body = items[key]
            if reply.ok:
                cache.put_answer(key, model, qid, body, Answer(reply.text, reply.finish_reason, reply.prompt_tokens,
                                                              reply.completion_tokens, None, f"batch:{batch['id']}",
                                                              reply.logprobs),
                                 0.0, 1)
                answers += 1
            else:
                cache.put_error(key, model, qid, body, reply.error_kind or "batch_error", reply.status,
                                redact(reply.message), 1, 0.0)
                errors[reply.error_kind or "batch_error"] += 1
    except Exception as exc:  # noqa: BLE001: results gone (deleted after ~30 days) or a 5xx the SDK gave up on
        why = redact(f"the batch's results could not be read ({type(exc).__name__}: {str(exc)[:300]})")
        kind, label = "batch_unreadable", "unreadable"  # not re-attached again: its questions are asked anew
    for key in items.keys() - seen:
        qid, body = items[key]
        cache.put_error(key, model, qid, body, kind, None, redact(why), 1, 0.0)
        errors[kind] += 1
    note = "; ".join(n for n in (f"{unknown} result(s) with an unknown custom id ignored" if unknown else "",
                                 why if label == "unreadable" else "") if n) or None
    cache.update_batch(batch["id"], label, state.status, state.done, state.failed, note)
    return answers, errors, unknown


def send_batch(config: RunConfig, todo: list[Planned], cache: ResponseCache, console: Console,
               outcome: Sending) -> None:
    """Submit what no open batch covers, then poll every open batch of this model until each has ended,
    writing its results as it ends."""
    profile = config.profile
    problem = key_problem(profile)
    if problem:
        outcome.stopped = f"pre-flight: {problem}"
        return
    provider = provider_for(profile.provider, profile.api_key(), profile.api_base)
    chat = config.render_mode is Rendering.CHAT
    covered: set[str] = set()
    attached = cache.open_batches(profile.name, provider.name)
    for batch in attached:
        covered |= set(cache.batch_items(batch["id"]))
        config.say(console, f"re-attaching to batch {batch['id']} ({batch['requests']} requests, submitted "
                            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(batch['created_at']))})")
    fresh = [p for p in todo if p.key not in covered]
    limit = min(provider.max_requests, config.batch_limit or provider.max_requests)

    def submit(piece: list[Planned]) -> bool:
        try:
            batch_id = provider.submit([BatchRequest(p.key, p.body) for p in piece], chat,
                                       f"{profile.name}:{len(piece)}", cache.batch_ids(provider.name))
        except Exception as exc:  # noqa: BLE001: the SDK's own error after its retries
            outcome.stopped = f"batch submission failed: {redact(type(exc).__name__ + ': ' + str(exc))[:500]}"
            return False
        cache.record_batch(batch_id, provider.name, profile.name, [(p.key, p.qid, p.body) for p in piece])
        config.say(console, f"submitted batch {batch_id}: {len(piece)} requests to {provider.name}")
        outcome.sent += len(piece)
        return True

    for piece in chunks(fresh, limit, provider.max_bytes):
        if not submit(piece):
            return
    refused = _poll(config, cache, console, provider, chat, outcome)
    # Batches refused for the model's enqueued-token limit: their questions again, in smaller batches sent one
    # at a time (each after the last has ended), halving again while the limit still refuses them.
    by_key = {p.key: p for p in todo}
    pending = [by_key[k] for k in refused if k in by_key]
    size = max(1, len(pending) // 2)
    if pending:
        config.say(console, f"{len(pending)} requests were refused for the enqueued-token limit: sending them "
                            f"again in batches of {size}, one at a time")
    while pending and not outcome.stopped:
        piece, pending = pending[:size], pending[size:]
        if not submit(piece):
            return
        refused = _poll(config, cache, console, provider, chat, outcome)
        if refused:
            if size == 1:
                outcome.stopped = ("a batch of one request still passes the model's enqueued-token limit: wait for "
                                   "other batches of this model to finish, then rerun")
                return
            pending = [by_key[k] for k in refused if k in by_key] + pending
            size = max(1, size // 2)


def _poll(config: RunConfig, cache: ResponseCache, console: Console, provider: BatchProvider, chat: bool,
          outcome: Sending) -> set[str]:
    """Poll this model's open batches until each has ended, writing results as each ends; returns the keys of
    the batches refused for the enqueued-token limit (their questions have error rows meanwhile)."""
    profile = config.profile
    refused: set[str] = set()
    started = time.monotonic()
    open_batches = cache.open_batches(profile.name, provider.name)
    states: dict[str, BatchState] = {}
    failures = 0
    last_line = ""
    while open_batches:
        for batch in list(open_batches):
            try:
                state = provider.poll(batch["id"])
                failures = 0
            except Exception as exc:  # noqa: BLE001: a 5xx the SDK could not retry away; poll again later
                failures += 1
                if failures >= POLL_ERRORS_TOLERATED:
                    outcome.stopped = (f"polling batch {batch['id']} failed {failures} times in a row "
                                       f"({redact(str(exc))[:300]}); rerun to re-attach to it")
                    return refused
                continue
            states[batch["id"]] = state
            cache.update_batch(batch["id"], "submitted", state.status, state.done, state.failed)
            if state.ended:
                if state.code == TOKEN_LIMIT:
                    refused |= set(cache.batch_items(batch["id"]))
                answers, errors, unknown = _ingest(batch, state, provider, cache, profile.name, chat)
                kinds = ", ".join(f"{n} {kind}" for kind, n in errors.most_common())
                config.say(console, f"batch {batch['id']} {state.status}: {answers} answers, "
                                    f"{sum(errors.values())} errors" + (f" ({kinds})" if kinds else "")
                                    + (f", {unknown} unknown custom ids ignored" if unknown else ""))
                open_batches.remove(batch)
        total = sum(s.total for s in states.values())
        done = sum(s.done for s in states.values())
        failed = sum(s.failed for s in states.values())
        line = (f"batches: {len(open_batches)} open, {done:,}/{total:,} done, {failed:,} failed, "
                + ", ".join(sorted({s.status for s in states.values()})))
        if line != last_line:
            elapsed = time.monotonic() - started
            config.say(console, f"{line} ({elapsed / 60:.0f} min)")
            last_line = line
        if open_batches:
            time.sleep(config.batch_poll_s)
    outcome.seconds += time.monotonic() - started
    return refused
