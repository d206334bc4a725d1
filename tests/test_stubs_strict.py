"""The batch stub refuses what OpenAI's Batch API and Anthropic's Message Batches refuse, driven through their
real SDKs (so a request our client builds wrongly fails here as it would there); and a run whose data repeats
a question still sends each custom_id once."""

from __future__ import annotations

import io
import json

import pytest

openai = pytest.importorskip("openai", reason="the batch extra is not installed: pip install 'shopping-mmlu[batch]'")
anthropic = pytest.importorskip("anthropic",
                                reason="the batch extra is not installed: pip install 'shopping-mmlu[batch]'")

from benchmarks.stubs.batch_stub import BatchStub  # noqa: E402
from builders import run_cli, write_jsonl  # noqa: E402

BODY = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def line(custom_id="a", method="POST", url="/v1/chat/completions", body=BODY) -> dict:
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def jsonl(*lines) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


@pytest.fixture
def stub():
    with BatchStub(polls_to_end=1) as server:
        yield server


def openai_client(stub):
    return openai.OpenAI(api_key="k", base_url=stub.base_url, max_retries=0)


@pytest.mark.parametrize("lines, code, line_number", [
    ([line("a"), line("a")], "duplicate_custom_id", 2),
    ([line("a"), line("b", url="/v1/completions")], "mismatched_endpoint", 2),
    ([line("a", method="GET")], "invalid_value", 1),
    ([line("a"), line("b", body=dict(BODY, model="gpt-y"))], "mismatched_model", None),
    ([line("a", body={"messages": []})], "missing_required_parameter", 1),
    ([{"method": "POST", "url": "/v1/chat/completions", "body": BODY}], "missing_required_parameter", 1),
])
def test_openai_input_lines_that_fail_validation(stub, lines, code, line_number):
    client = openai_client(stub)
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(*lines))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed" and batch.request_counts.total == 0
    assert [(e.code, e.line) for e in batch.errors.data][:1] == [(code, line_number)], batch.errors


def test_openai_refuses_a_wrong_purpose_window_or_endpoint(stub):
    client = openai_client(stub)
    content = jsonl(line("a"), line("b"))
    tuned = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="fine-tune")
    good = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    for file_id, endpoint, window, param in ((tuned.id, "/v1/chat/completions", "24h", "input_file_id"),
                                             (good.id, "/v1/chat/completions", "1h", "completion_window"),
                                             (good.id, "/v1/moderations", "24h", "endpoint")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window=window)
        assert refused.value.body["param"] == param
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="nonsense")
    assert not stub.batches
    batch = client.batches.create(input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.retrieve(batch.id).status == "completed"


def test_openai_answers_keep_to_each_requests_budget(stub):
    client = openai_client(stub)
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(
        line("one", body=dict(BODY, max_tokens=1)), line("all", body=dict(BODY, max_tokens=100))))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    out = {x["custom_id"]: x["response"]["body"]["choices"][0]
           for x in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())}
    assert len(out["one"]["message"]["content"]) == 1 and out["one"]["finish_reason"] == "length"
    assert len(out["all"]["message"]["content"]) == 17 and out["all"]["finish_reason"] == "stop"


def request(custom_id="req-1", **params) -> dict:
    params = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **params}
    return {"custom_id": custom_id, "params": {k: v for k, v in params.items() if v is not None}}


@pytest.mark.parametrize("requests, says", [
    ([request("has space")], "requests.0.custom_id"),
    ([request("x" * 65)], "requests.0.custom_id"),
    ([request("a"), request("a")], "requests.1.custom_id"),
    ([request(max_tokens=None)], "requests.0.params.max_tokens: Field required"),
    ([request(max_tokens=0)], "requests.0.params.max_tokens"),
    ([request(model=None)], "requests.0.params.model: Field required"),
    ([request(messages=None)], "requests.0.params.messages: Field required"),
])
def test_anthropic_refuses_bad_custom_ids_and_missing_params(stub, requests, says):
    client = anthropic.Anthropic(api_key="k", base_url=stub.base_url.removesuffix("/v1"), max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=requests)
    assert says in str(refused.value) and not stub.batches


def test_anthropic_answers_keep_to_max_tokens(stub):
    client = anthropic.Anthropic(api_key="k", base_url=stub.base_url.removesuffix("/v1"), max_retries=0)
    batch = client.messages.batches.create(requests=[request("short", max_tokens=2), request("long", max_tokens=64)])
    client.messages.batches.retrieve(batch.id)
    results = {r.custom_id: r.result.message for r in client.messages.batches.results(batch.id)}
    assert results["short"].stop_reason == "max_tokens" and len(results["short"].content[0].text) == 2
    assert results["long"].stop_reason == "end_turn" and results["long"].usage.output_tokens == 17


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_question_repeated_in_the_data_is_one_request_in_the_batch(tmp_path, capsys, monkeypatch, provider):
    """Two identical rows ask the same thing (one cache key): the batch must not carry that custom_id twice."""
    from test_batch import profiles_file, run_args

    rows = [{"input_field": f"Q{i % 3}?", "output_field": "x", "task_name": "t", "task_type": "generation",
             "metric": "rougel"} for i in range(6)]
    data = write_jsonl(tmp_path / "d.json", rows)
    with BatchStub(polls_to_end=1) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args(f"{provider}-model", data, tmp_path / "c"), capsys, monkeypatch)
        assert code == 0, out + err
        [batch] = stub.batches.values()
        ids = [cid for cid, _ in batch["requests"]]
    assert len(ids) == len(set(ids)) == 3
