"""Provider batch APIs (OpenAI, Anthropic) through their real SDKs against a loopback stub of both surfaces:
answers land in the same cache as live ones, a killed run re-attaches instead of resubmitting, partial and
failed batches leave error rows the next run asks again, and the scores equal those of the same answers
sent live."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai", reason="the batch extra is not installed: pip install 'shopping-mmlu[batch]'")
pytest.importorskip("anthropic", reason="the batch extra is not installed: pip install 'shopping-mmlu[batch]'")

from rich.console import Console  # noqa: E402

from benchmarks.stubs.batch_stub import BatchStub  # noqa: E402
from benchmarks.stubs.openai_stub import Stub  # noqa: E402
from builders import Lines, run_cli, write_jsonl  # noqa: E402
from evaluator.cache.responses import ResponseCache  # noqa: E402
from evaluator.runs import runner  # noqa: E402
from evaluator.runs import suite as suite_runner  # noqa: E402
from evaluator.runs.settings import RunConfig  # noqa: E402
from servers.profiles import ModelProfile, get_profile  # noqa: E402
from servers.suite import Suite, load_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 40
KEYS = {"openai": ("OPENAI_BATCH_TEST_KEY", "marker-openai-batch-0123456789"),
        "anthropic": ("ANTHROPIC_BATCH_TEST_KEY", "marker-anthropic-batch-0123456789")}


def data_file(tmp_path: Path, n: int = N) -> Path:
    return write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": f"stub answer {i}",
                                              "task_name": f"t{i % 2}", "task_type": "generation",
                                              "metric": "rougel"} for i in range(n)])


def profiles_file(tmp_path: Path, monkeypatch, base_url: str, batch: bool = True) -> Path:
    lines = []
    for provider, (env, key) in KEYS.items():
        monkeypatch.setenv(env, key)
        lines.append(f'[models.{provider}-model]\nprovider = "{provider}"\nmodel = "{provider}-x"\n'
                     f'api_base = "{base_url}"\napi_key_env = "{env}"\nrendering = "chat"\nbatch = {str(batch).lower()}\n'
                     'price_input = 2.0\nprice_output = 8.0\n')
    path = tmp_path / f"profiles-{batch}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(path))
    return path


def run_args(model: str, data: Path, cache: Path, *extra) -> list:
    return ["run", "--model", model, "--data", data, "--cache", cache, "--batch-poll", "0.05", *extra]


def cached(cache: Path) -> tuple[dict, dict]:
    db = ResponseCache(cache / "responses")
    sources = dict(db.db.execute("SELECT key, source FROM answers").fetchall())
    errors = dict(db.db.execute("SELECT key, kind FROM errors").fetchall())
    db.close()
    return sources, errors


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_answers_score_exactly_as_the_same_answers_sent_live(tmp_path, capsys, monkeypatch, provider):
    data, model = data_file(tmp_path), f"{provider}-model"
    with BatchStub(polls_to_end=3) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args(model, data, tmp_path / "batch", "--json", tmp_path / "b.json"), capsys,
                                 monkeypatch)
        assert code == 0, out + err
        assert stub.requests_submitted == N and len(stub.batches) == 1
        assert set(stub.keys) == {KEYS[provider][1]}  # the key reached the provider, and only there
    sources, errors = cached(tmp_path / "batch")
    assert len(sources) == N and not errors and all(s.startswith("batch:") for s in sources.values())
    with Stub() as live:
        profiles_file(tmp_path, monkeypatch, live.base_url, batch=False)
        code, out, err = run_cli(["run", "--model", model, "--data", data, "--cache", tmp_path / "live", "--json",
                                  tmp_path / "l.json"], capsys, monkeypatch)
        assert code == 0, out + err
    batch_doc, live_doc = (json.loads((tmp_path / name).read_text()) for name in ("b.json", "l.json"))
    assert batch_doc["tasks"] == live_doc["tasks"] and batch_doc["overall"] == live_doc["overall"]
    assert set(sources) == set(cached(tmp_path / "live")[0])  # the same cache keys, live or batch
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "profiles" not in p.name)
    assert KEYS[provider][1].encode() not in written and KEYS[provider][1] not in out + err


def test_a_run_killed_while_polling_reattaches_and_never_resubmits(tmp_path, monkeypatch):
    data, cache = data_file(tmp_path), tmp_path / "cache"
    env_key, key = KEYS["openai"]
    with BatchStub(polls_to_end=60) as stub:
        profiles = profiles_file(tmp_path, monkeypatch, stub.base_url)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", env_key: key,
               "SHOPPING_MMLU_PROFILES": str(profiles)}
        cmd = [sys.executable, "-m", "evaluator", *map(str, run_args("openai-model", data, cache))]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = Lines(first.stdout)
        assert out.until(lambda text: "submitted batch" in text, 120), out.text
        polls = stub.retrieves
        deadline = time.monotonic() + 120  # a hang guard: the kill waits for the run's first poll, an event
        while stub.retrieves == polls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stub.retrieves > polls, out.text  # polling now
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert stub.requests_submitted == N
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        assert "re-attaching to batch" in second.stdout
        assert stub.requests_submitted == N and len(stub.batches) == 1  # the same questions, never twice
    assert len(cached(cache)[0]) == N


def test_an_expired_batch_leaves_error_rows_the_next_run_asks_again(tmp_path, capsys, monkeypatch):
    data, cache = data_file(tmp_path), tmp_path / "cache"
    with BatchStub(expire_half=True, unknown_id=True) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, _ = run_cli(run_args("anthropic-model", data, cache), capsys, monkeypatch)
        assert code == 3 and "expired" in out and "1 unknown" in out, out  # incomplete, not a crash
        sources, errors = cached(cache)
        assert len(sources) == N // 2 and len(errors) == N // 2 and set(errors.values()) == {"batch_expired"}
        stub.expire_half = False
        code, out, _ = run_cli(run_args("anthropic-model", data, cache), capsys, monkeypatch)
        assert code == 0, out
        assert stub.requests_submitted == N + N // 2  # only the missing half again
    assert len(cached(cache)[0]) == N and not cached(cache)[1]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_per_request_errors_and_5xx_while_polling(tmp_path, capsys, monkeypatch, provider):
    data, cache = data_file(tmp_path), tmp_path / "cache"
    with BatchStub(error_share=0.25, poll_5xx=2) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args(f"{provider}-model", data, cache), capsys, monkeypatch)
        assert stub.retrieves >= 4  # it kept polling through the 500s
    sources, errors = cached(cache)
    assert code == 3 and errors and len(sources) + len(errors) == N, out + err
    assert set(errors.values()) == {"batch_error" if provider == "openai" else "batch_errored"}


def test_several_batches_where_the_size_limit_requires_and_the_batch_rate(tmp_path, monkeypatch):
    data, cache = data_file(tmp_path), tmp_path / "cache"
    with BatchStub() as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        config = RunConfig(profile=get_profile("openai-model"), data=data, cache_dir=cache, batch_poll_s=0.02,
                           batch_limit=15, progress=False)
        result = runner.execute(config, Console(quiet=True))
        assert len(stub.batches) == 3 and sorted(len(b["requests"]) for b in stub.batches.values()) == [10, 15, 15]
    assert result.status == "complete" and result.sent == N
    # half the live prices; 17 output tokens an answer ('stub-' and 12 hex digits, a token a character)
    assert result.cost() == pytest.approx(N * (10 * 1.0 + 17 * 4.0) / 1e6)


def test_a_suite_with_a_local_model_and_both_api_models_in_batch_mode(tmp_path, monkeypatch):
    data, cache = data_file(tmp_path), tmp_path / "cache"

    class LocalServer:
        def __init__(self, base_url: str) -> None:
            self.base_url = base_url

        def stop(self) -> None:
            pass

    with BatchStub() as batches, Stub() as live:
        profiles_file(tmp_path, monkeypatch, batches.base_url)
        models = [ModelProfile(name="local-7b", model="org/local-7b", params_b=7),
                  get_profile("openai-model"), get_profile("anthropic-model")]
        suite = Suite(name="mixed", data=data, protocol="skill", render=None, concurrency=8, models=models)
        outcomes = suite_runner.run_suite(suite, [], cache, Console(quiet=True), batch_poll_s=0.02,
                                          start_server=lambda *a, **k: LocalServer(live.base_url))
        assert batches.requests_submitted == 2 * N and sum(live.seen.values()) == N
    assert [o.status for o in outcomes] == ["complete"] * 3
    assert all(o.overall is not None and o.errors == 0 for o in outcomes)


def test_anthropic_batch_params_are_only_those_the_sdks_api_version_accepts():
    from evaluator.client.batch.anthropic_batch import AnthropicBatches, message_params

    body = {"model": "claude-x", "max_tokens": 1, "temperature": 0.0,
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]}
    params = AnthropicBatches.params(body)
    assert set(params) <= message_params() and params["system"] == "S" and params["messages"][0]["content"] == "Q"
    assert ("temperature" in params) == ("temperature" in message_params())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_lost_reply_to_a_batch_creation_makes_no_second_batch(tmp_path, capsys, monkeypatch, provider):
    """The stub makes the batch and drops the connection before replying: the SDK would create again (no
    idempotency key); we find the batch it made and take it (OpenAI: by the request set in its metadata;
    Anthropic, which has no metadata: the one new batch of our size)."""
    data = data_file(tmp_path)
    with BatchStub(polls_to_end=2, lose_create=1) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args(f"{provider}-model", data, tmp_path / "c"), capsys, monkeypatch)
        assert code == 0, out + err
        assert len(stub.batches) == 1 and stub.requests_submitted == N  # one batch, billed once
    assert len(cached(tmp_path / "c")[0]) == N


def test_a_lost_anthropic_creation_is_not_guessed_between_two_candidates(tmp_path, capsys, monkeypatch):
    """Two new batches of our size that nobody here knows (another run's, or another program's on the same
    key): taking either could wait on a stranger's batch, creating again could bill twice; the run stops and
    says which batches to look at."""
    data = data_file(tmp_path)
    with BatchStub(polls_to_end=50) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        import anthropic
        other = anthropic.Anthropic(api_key="someone-else", base_url=stub.base_url[:-len("/v1")])
        stranger = other.messages.batches.create(requests=[
            {"custom_id": f"x{i}", "params": {"model": "m", "max_tokens": 1,
                                              "messages": [{"role": "user", "content": "hi"}]}} for i in range(N)])
        stub.lose_create = 1
        code, out, err = run_cli(run_args("anthropic-model", data, tmp_path / "c"), capsys, monkeypatch)
        assert code != 0 and "could be it" in out + err and stranger.id in out + err
        assert len(stub.batches) == 2  # the stranger's and the lost one: no third


def test_a_batch_made_by_a_run_killed_before_recording_it_is_taken_not_made_again(tmp_path, monkeypatch):
    data, cache = data_file(tmp_path), tmp_path / "c"
    with BatchStub(polls_to_end=2) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        config = RunConfig(profile=get_profile("openai-model"), data=data, cache_dir=cache, batch_poll_s=0.05,
                           progress=False)

        def killed(*_args, **_kwargs):
            raise RuntimeError("killed between the creation and its record")

        with monkeypatch.context() as patch:
            patch.setattr(ResponseCache, "record_batch", killed)
            with pytest.raises(RuntimeError, match="killed"):
                runner.execute(config, Console(quiet=True))
        assert len(stub.batches) == 1
        result = runner.execute(config, Console(quiet=True))
        assert result.status == "complete" and len(stub.batches) == 1  # found by its request set, not made again


def test_results_that_cannot_be_read_are_errors_and_the_next_run_moves_on(tmp_path, capsys, monkeypatch):
    """An ended batch whose output file is gone (OpenAI deletes it after ~30 days): its questions become error
    rows that say so, and later runs neither crash on it nor re-attach to it."""
    data, cache = data_file(tmp_path), tmp_path / "c"
    with BatchStub(polls_to_end=2, results_gone=True) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args("openai-model", data, cache), capsys, monkeypatch)
        assert code == 1 and "Traceback" not in err, out + err  # nothing answered: failed, with the reason
        assert set(cached(cache)[1].values()) == {"batch_unreadable"}
        stub.results_gone = False
        code, out, err = run_cli(run_args("openai-model", data, cache), capsys, monkeypatch)
        assert code == 0 and "re-attaching" not in out, out + err
        assert len(stub.batches) == 2
    assert len(cached(cache)[0]) == N


def test_batches_refused_for_the_enqueued_token_limit_are_sent_again_paced(tmp_path, capsys, monkeypatch):
    """OpenAI fails a batch that would pass the model's enqueued-token limit (`token_limit_exceeded`): its
    questions go again in smaller batches, one at a time, until all are answered."""
    data = data_file(tmp_path)
    with BatchStub(polls_to_end=2, token_limit=300) as stub:  # about 14 of the 40 requests at once
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args("openai-model", data, tmp_path / "c"), capsys, monkeypatch)
        assert code == 0, out + err
        refused = [b for b in stub.batches.values() if b.get("refused")]
        answered = [b for b in stub.batches.values() if not b.get("refused")]
    assert refused and "enqueued-token limit" in out
    assert sum(len(b["requests"]) for b in answered) == N  # every question answered once
    sources, errors = cached(tmp_path / "c")
    assert len(sources) == N and not errors


def test_the_paper_suites_api_models_are_current_in_the_installed_sdks():
    """The closed models a night asks are ones the providers' own SDKs list and have not announced for
    shutdown (read from the SDKs' sources, not from our memory)."""
    import typing

    import anthropic
    import openai
    from anthropic._data import DEPRECATED_MODELS
    from anthropic.types.model import Model
    from openai.types.shared import chat_model

    source = Path(chat_model.__file__).read_text(encoding="utf-8")
    deprecated = set(re.findall(r'"([^"]+)"', source.split("Deprecated values:", 1)[1]))
    listed = {"openai": set(typing.get_args(chat_model.ChatModel)),
              "anthropic": set(typing.get_args(typing.get_args(Model)[0]))}
    paper = load_suite(ROOT / "servers" / "suites" / "paper.toml")
    api = [profile for profile in paper.models if profile.provider in listed]
    assert {p.provider for p in api} == {"openai", "anthropic"}, (openai.__version__, anthropic.__version__)
    for profile in api:
        assert profile.model in listed[profile.provider], profile.model
        assert profile.model not in deprecated and profile.model not in DEPRECATED_MODELS, profile.model


def test_an_anthropic_batch_creation_answered_429_is_sent_again_after_its_retry_after(tmp_path, capsys,
                                                                                       monkeypatch):
    """Anthropic refuses a create for a rate limit (429 rate_limit_error, retry-after): no batch was made, so it
    is asked again after the wait, and one batch is billed; a limit that lasts, or a wait past ten minutes,
    stops the run with the reason, having made none."""
    data = data_file(tmp_path)
    with BatchStub(polls_to_end=2, limit_create=2) as stub:
        profiles_file(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(run_args("anthropic-model", data, tmp_path / "c"), capsys, monkeypatch)
        assert code == 0, out + err
        assert stub.refused == 2 and len(stub.batches) == 1 and stub.requests_submitted == N
    assert len(cached(tmp_path / "c")[0]) == N
    for stub_args, reason in (({"limit_create": 100, "retry_after": "0"}, "rate_limit_error"),
                              ({"limit_create": 1, "retry_after": "3600"}, "asks to wait 3,600 s")):
        with BatchStub(**stub_args) as stub:
            profiles_file(tmp_path, monkeypatch, stub.base_url)
            code, out, err = run_cli(run_args("anthropic-model", data, tmp_path / "c2"), capsys, monkeypatch)
            assert code != 0 and reason in out + err and not stub.batches
            assert stub.refused == (6 if stub_args["limit_create"] == 100 else 1)  # bounded
