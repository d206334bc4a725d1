"""The async client against the fault-injecting loopback stub: retries, error rows, caps, throttling."""

from __future__ import annotations

import asyncio
import time

import pytest

from evaluator.client.http import Endpoint, Reply, RetryPolicy, fan_out
from benchmarks.stubs.openai_stub import Stub, answer_for, within_budget

FAST = RetryPolicy(max_attempts=4, max_total_s=30, base_delay_s=0.01, max_delay_s=0.2)


def run_all(endpoint: Endpoint, bodies: list[dict], policy: RetryPolicy = FAST) -> dict[str, Reply]:
    replies: dict[str, Reply] = {}

    def keep(key: str, reply: Reply) -> None:
        replies[key] = reply

    asyncio.run(fan_out(endpoint, [(str(i), b) for i, b in enumerate(bodies)], keep, policy))
    return replies


def first_then_ok(action: str):
    return lambda _digest, attempt: action if attempt == 1 else "ok"


BODY = {"model": "m", "prompt": "hello", "max_tokens": 4, "temperature": 0.0}


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "reset", "stall"])
def test_retryable_faults_are_retried_and_succeed(fault):
    with Stub(first_then_ok(fault), stall_s=5) as stub:
        endpoint = Endpoint(stub.base_url, chat=False, timeout_s=0.5)
        reply = run_all(endpoint, [BODY])["0"]
    assert reply.ok and reply.text == within_budget(answer_for(BODY), BODY)[0] and reply.attempts == 2
    assert sum(stub.seen.values()) == 2


def test_retry_after_is_honoured():
    with Stub(first_then_ok("429"), retry_after="0.6") as stub:
        started = time.monotonic()
        reply = run_all(Endpoint(stub.base_url, chat=False), [BODY])["0"]
    assert reply.ok and time.monotonic() - started >= 0.6


@pytest.mark.parametrize("fault, kind, status", [
    ("400", "http_error", 400), ("malformed", "malformed", None), ("empty", "empty", None)])
def test_other_faults_are_error_rows_without_retry(fault, kind, status):
    with Stub(lambda _d, _a: fault) as stub:
        reply = run_all(Endpoint(stub.base_url, chat=False), [BODY])["0"]
    assert not reply.ok and reply.text == "" and (reply.error_kind, reply.status, reply.attempts) == (kind, status, 1)
    assert sum(stub.seen.values()) == 1


def test_retries_stop_at_max_attempts():
    with Stub(lambda _d, _a: "500") as stub:
        reply = run_all(Endpoint(stub.base_url, chat=False), [BODY])["0"]
    assert not reply.ok and reply.error_kind == "server_error" and reply.attempts == FAST.max_attempts
    assert sum(stub.seen.values()) == FAST.max_attempts


def test_retries_stop_at_the_total_time_bound():
    policy = RetryPolicy(max_attempts=100, max_total_s=1.0, base_delay_s=0.01, max_delay_s=5)
    with Stub(lambda _d, _a: "429", retry_after="0.4") as stub:
        reply = run_all(Endpoint(stub.base_url, chat=False), [BODY], policy)["0"]
    assert not reply.ok and reply.error_kind == "rate_limited" and reply.status == 429
    assert 2 <= reply.attempts <= 4  # 1 + 1.0 s / 0.4 s at most: the total bound, not max_attempts, stopped it


def test_connection_refused_becomes_an_error_row():
    reply = run_all(Endpoint("http://127.0.0.1:9/v1", chat=False), [BODY],
                    RetryPolicy(max_attempts=2, base_delay_s=0.01))["0"]
    assert not reply.ok and reply.error_kind == "connection" and reply.attempts == 2


def test_in_flight_cap_and_a_pool_wider_than_httpx_default():
    bodies = [dict(BODY, prompt=f"q{i}") for i in range(300)]
    with Stub(latency=(0.01, 0.01), hold_until=150) as stub:  # replies wait until 150 are in flight at once
        replies = run_all(Endpoint(stub.base_url, chat=False, concurrency=150), bodies)
    assert all(r.ok for r in replies.values()) and len(replies) == 300
    assert stub.max_in_flight == 150 and stub.held == 150  # reached, not timed out; never more than the cap


def test_requests_per_minute_throttle():
    bodies = [dict(BODY, prompt=f"q{i}") for i in range(9)]
    with Stub() as stub:
        started = time.monotonic()
        run_all(Endpoint(stub.base_url, chat=False, requests_per_minute=3, rate_period_s=0.5), bodies)
        elapsed = time.monotonic() - started
    assert elapsed >= 1.0  # 9 requests at 3 per 0.5 s need at least two more windows


def test_chat_endpoint_and_usage():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0.0}
    with Stub() as stub:
        reply = run_all(Endpoint(stub.base_url, chat=True, api_key="k-123"), [body])["0"]
    assert reply.ok and reply.text == answer_for(body)[:4] and reply.completion_tokens == 4  # cut at max_tokens
    assert reply.finish_reason == "length"
    assert stub.authorizations == {"Bearer k-123": 1}


def test_requests_spread_over_replicas():
    bodies = [dict(BODY, prompt=f"q{i}") for i in range(200)]
    with Stub() as one, Stub() as two:
        replies = run_all(Endpoint(one.base_url, chat=False, replicas=(two.base_url,)), bodies)
        assert all(r.ok for r in replies.values())
        assert sum(one.seen.values()) > 50 and sum(two.seen.values()) > 50


def test_a_replica_that_stops_answering_is_left_alone():
    bodies = [dict(BODY, prompt=f"q{i}") for i in range(300)]
    with Stub() as live:
        endpoint = Endpoint("http://127.0.0.1:9/v1", chat=False, replicas=(live.base_url,), concurrency=8)
        replies = run_all(endpoint, bodies, RetryPolicy(max_attempts=4, base_delay_s=0.01))
        assert all(r.ok for r in replies.values()) and sum(live.seen.values()) == 300
    retried = sum(r.attempts - 1 for r in replies.values())
    assert retried <= 16  # only the first requests in flight met the dead replica


@pytest.mark.parametrize("payload, chat", [
    (b'{"choices": [{"index": 0, "text": "", "finish_reason": "stop"}], "error": {"message": "upstream down"}}',
     False),
    (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}}], "error": "overloaded"}', True),
])
def test_an_error_object_beside_an_empty_choice_is_a_retryable_error_not_the_answer(payload, chat):
    from evaluator.client.http import Fault, parse_reply

    with pytest.raises(Fault) as fault:
        parse_reply(payload, chat)
    assert fault.value.kind == "api_error" and fault.value.retryable
    text, *_ = parse_reply(b'{"choices": [{"text": "2"}], "error": null}', False)
    assert text == "2"


@pytest.mark.parametrize("payload, flagged, kind", [
    # OpenAI: the budget went to reasoning tokens
    (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}], '
     b'"usage": {"prompt_tokens": 9, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 1}}}',
     False, "reasoning_budget"),
    # vLLM's reasoning parser: the thinking beside an empty answer
    (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "", "reasoning_content": "Let me"}, '
     b'"finish_reason": "length"}]}', False, "reasoning_budget"),
    # a profile that says it reasons, and no sign in the reply
    (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]}',
     True, "reasoning_budget"),
    # an ordinary model whose one token decodes to nothing: its answer, as the official code would take it
    (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]}',
     False, None),
])
def test_an_empty_answer_cut_by_the_budget_of_a_reasoning_model_is_an_error(payload, flagged, kind):
    from evaluator.client.http import Fault, parse_reply

    if kind is None:
        assert parse_reply(payload, True, flagged)[0] == ""
        return
    with pytest.raises(Fault) as fault:
        parse_reply(payload, True, flagged)
    assert fault.value.kind == kind and "reasoning_budget" in str(fault.value)


def test_the_stub_keeps_to_the_token_budget_as_openai_does():
    """One token a character in the stub: a 1-token request gets one character and finish_reason "length";
    chat's max_completion_tokens counts before max_tokens; a budget below 1 is a 400 naming it."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2,
            "max_tokens": 50}
    bodies = [dict(BODY, max_tokens=1), chat, dict(BODY, max_tokens=100), dict(BODY, max_tokens=0)]
    with Stub() as stub:
        replies = [run_all(Endpoint(stub.base_url, chat="messages" in body), [body])["0"] for body in bodies]
    one, two, whole, zero = replies
    assert (one.text, one.finish_reason, one.completion_tokens) == (answer_for(BODY)[:1], "length", 1)
    assert (two.text, two.finish_reason) == (answer_for(chat)[:2], "length")
    assert (whole.text, whole.finish_reason) == (answer_for(BODY), "stop")
    assert not zero.ok and zero.status == 400 and "max_tokens" in zero.message
