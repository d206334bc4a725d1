"""An unattended night: fail fast with the reason, stop a model that cannot answer, never rank an incomplete
score as complete, never let a read-like command destroy a result."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl
from evaluator.cache.responses import ResponseCache
from evaluator.client.http import RateLimit
from evaluator.runs import suite as suite_runner
from servers.suite import load_suite

N = 60


def data_file(tmp_path: Path, n: int = N, name: str = "d.json") -> Path:
    return write_jsonl(tmp_path / name, [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": f"t{i % 3}",
                                          "task_type": "multiple-choice", "metric": "accuracy"} for i in range(n)])


def profiles(tmp_path: Path, monkeypatch, base_url: str) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(f'[models.api-model]\nprovider = "openai"\nmodel = "gpt-x"\napi_base = "{base_url}"\n'
                    'api_key_env = "NIGHT_TEST_KEY"\nrendering = "chat"\nrequests_per_minute = 50000\n',
                    encoding="utf-8")
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(path))


# ---------------------------------------------------------------- pre-flight

def test_a_missing_key_fails_in_seconds_names_the_variable_and_sends_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NIGHT_TEST_KEY", raising=False)
    with Stub() as stub:
        profiles(tmp_path, monkeypatch, stub.base_url)
        code, out, err = run_cli(["run", "--model", "api-model", "--data", data_file(tmp_path), "--cache",
                                  tmp_path / "c", "--json", tmp_path / "r.json"], capsys, monkeypatch)
        assert sum(stub.seen.values()) == 0  # pre-flight: nothing sent, so no retries to wait through
    assert code == 1 and "NIGHT_TEST_KEY is not set" in out
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "failed"
    code, out, _ = run_cli(["report", "--cache", tmp_path / "c"], capsys, monkeypatch)
    assert code == 0 and "api-model" in out and "failed" in out  # it stays on the leaderboard, as failed


@pytest.mark.parametrize("plan, models, expected", [
    (lambda _d, _a: "401", None, "HTTP 401"),
    (None, ["some-other-model"], "does not serve 'gpt-x'"),
])
def test_a_wrong_key_or_an_unserved_model_fails_pre_flight(tmp_path, capsys, monkeypatch, plan, models, expected):
    monkeypatch.setenv("NIGHT_TEST_KEY", "marker-night-0123456789")
    with Stub(plan, models=models) as stub:
        profiles(tmp_path, monkeypatch, stub.base_url)
        code, out, _ = run_cli(["run", "--model", "api-model", "--data", data_file(tmp_path), "--cache",
                                tmp_path / "c"], capsys, monkeypatch)
        assert sum(stub.seen.values()) <= 1  # at most the one real request
    said = " ".join(out.split())  # the reason wraps at spaces
    assert code == 1 and expected in said and "pre-flight" in out and "marker-night" not in out


def test_an_endpoint_that_does_not_answer_fails_pre_flight(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["run", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--data",
                            data_file(tmp_path), "--cache", tmp_path / "c"], capsys, monkeypatch)
    assert code == 1 and "does not answer" in out


# ---------------------------------------------------------------- the breaker

def test_the_breaker_stops_a_401_storm_and_keeps_what_was_answered(tmp_path, capsys, monkeypatch):
    served = []

    def plan(_digest: str, _attempt: int) -> str:  # ten answers, then the key is revoked
        served.append(1)
        return "ok" if len(served) <= 10 else "401"

    with Stub(plan) as stub:
        code, out, _ = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data",
                                data_file(tmp_path, 400), "--cache", tmp_path / "c", "--no-preflight",
                                "--concurrency", "1"], capsys, monkeypatch)
        sent = sum(stub.seen.values())
    assert code == 1 and "consecutive HTTP 401" in out
    assert sent == 15  # ten answers, five refusals, then it stopped: not 400 requests
    db = ResponseCache(tmp_path / "c" / "responses")
    answered = db.db.execute("SELECT count(*) FROM answers").fetchone()[0]
    db.close()
    assert answered == 10  # nothing already answered was lost


def test_the_breaker_stops_on_an_error_share(tmp_path, capsys, monkeypatch):
    with Stub(lambda d, _a: "ok" if int(d[:2], 16) < 64 else "400") as stub:
        code, out, _ = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data",
                                data_file(tmp_path, 500), "--cache", tmp_path / "c", "--no-preflight",
                                "--stop-min-replies", "40", "--concurrency", "4"], capsys, monkeypatch)
        sent = sum(stub.seen.values())
    assert code == 1 and "requests failed (more than 50%)" in out and sent < 100


def test_requests_per_minute_are_spread_evenly():
    import asyncio

    async def go() -> list[float]:
        limit = RateLimit(600, 60.0)  # one every 0.1 s
        times = []
        for _ in range(6):
            await limit.wait()
            times.append(time.monotonic())
        return times

    times = asyncio.run(go())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.09  # never the whole minute's quota at once


# ---------------------------------------------------------------- completeness and rankings

def test_failed_errors_and_other_data_never_share_a_ranking(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "c"
    first, second = data_file(tmp_path), data_file(tmp_path, 30, "other.json")
    with Stub() as stub:
        run_cli(["run", "--model", "good", "--base-url", stub.base_url, "--data", first, "--cache", cache],
                capsys, monkeypatch)
        run_cli(["run", "--model", "good", "--base-url", stub.base_url, "--data", second, "--cache", cache],
                capsys, monkeypatch)
    with Stub(lambda d, _a: "ok" if int(d[:2], 16) < 128 else "400") as stub:
        code, _, _ = run_cli(["run", "--model", "flaky", "--base-url", stub.base_url, "--data", first, "--cache",
                              cache, "--stop-error-share", "1", "--no-preflight"], capsys, monkeypatch)
    assert code == 3
    code, out, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    board = json.loads(out)
    groups = {r["group"] for r in board}
    assert len(groups) == 2  # two data files: two rankings
    flaky = next(r for r in board if r["model"] == "flaky")
    assert flaky["complete"] is False and flaky["answered"] < flaky["questions"] and flaky["status"] == "incomplete"
    code, out, _ = run_cli(["report", "--cache", cache], capsys, monkeypatch)
    assert code == 0 and "flaky (incomplete)" in out and out.count("leaderboard") == 2
    code, out, _ = run_cli(["report", "--cache", cache, "--format", "csv"], capsys, monkeypatch)
    assert "complete" in out.splitlines()[0] and "answered" in out.splitlines()[0]


def test_report_on_an_empty_cache_or_only_failed_models_does_not_crash(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["report", "--cache", tmp_path / "c"], capsys, monkeypatch)
    assert code == 2 and "no response cache" in err
    code, _, _ = run_cli(["run", "--model", "dead-model", "--base-url", "http://127.0.0.1:9/v1", "--data",
                          data_file(tmp_path), "--cache", tmp_path / "c"], capsys, monkeypatch)
    assert code == 1
    seen = {}
    for fmt in ("table", "md", "csv", "json"):
        code, seen[fmt], err = run_cli(["report", "--cache", tmp_path / "c", "--format", fmt], capsys, monkeypatch)
        assert code == 0 and "Traceback" not in err, err
    assert re.search(r"dead-model.*failed", seen["table"])
    assert re.search(r"^\| [^|]*\| dead-model \| - \|.*\| ✗ failed \|$", seen["md"], re.M), seen["md"]
    [row] = list(csv.DictReader(io.StringIO(seen["csv"])))
    assert row["model"] == "dead-model" and row["status"] == "failed" and row["overall"] == ""
    [record] = json.loads(seen["json"])
    assert record["model"] == "dead-model" and record["status"] == "failed" and record["overall"] is None


# ---------------------------------------------------------------- identity kept with the answers

def test_a_suite_inline_model_is_found_by_rescore_inspect_and_compare(tmp_path, capsys, monkeypatch):
    data = data_file(tmp_path)
    cache = tmp_path / "c"
    with Stub() as stub:
        suite_file = tmp_path / "night.toml"
        suite_file.write_text(f'[suite]\ndata = "{data}"\n[models]\n'
                              f'inline-a = {{ provider = "openai-compatible", model = "served-a", '
                              f'api_base = "{stub.base_url}" }}\n'
                              f'inline-b = {{ provider = "openai-compatible", model = "served-b", '
                              f'api_base = "{stub.base_url}", rendering = "chat" }}\n', encoding="utf-8")
        outcomes = suite_runner.run_suite(load_suite(suite_file), [], cache, Console(quiet=True))
        assert [o.status for o in outcomes] == ["complete", "complete"]
        sent = sum(stub.seen.values())
    code, out, err = run_cli(["rescore", "--model", "inline-b", "--data", data, "--cache", cache, "--json",
                              tmp_path / "r.json"], capsys, monkeypatch)
    assert code == 0, out + err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["errors"] == 0 and doc["status"] == "complete"  # its chat identity was found in the cache
    code, out, _ = run_cli(["inspect", "--model", "inline-a", "--task", "t1", "--data", data, "--cache", cache],
                           capsys, monkeypatch)
    assert code == 0 and re.search(r" s +0\.0000", out), out  # the stub's one-token answer, scored
    code, out, err = run_cli(["compare", "inline-a", "inline-b", "--cache", cache], capsys, monkeypatch)
    assert code == 0 and "overall" in out, err
    assert sent == 2 * N  # nothing was sent again


def test_a_smaller_rescore_or_run_never_replaces_the_saved_scores(tmp_path, capsys, monkeypatch):
    data, cache = data_file(tmp_path), tmp_path / "c"
    with Stub() as stub:
        run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", cache],
                capsys, monkeypatch)
        code, out, _ = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache",
                                cache, "--limit", "3"], capsys, monkeypatch)
    assert code == 0 and "saved scores kept" in out
    code, out, _ = run_cli(["rescore", "--model", "m", "--data", data, "--cache", cache, "--limit", "3"],
                           capsys, monkeypatch)
    assert "saved scores kept" in out
    code, out, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    assert json.loads(out)[0]["questions"] == N  # still the whole run


def test_a_claude_model_is_not_failed_by_anthropics_own_models_list(tmp_path, capsys, monkeypatch):
    """Anthropic's /v1/models is its Models API (x-api-key, dated ids, 20 per page): a Bearer key may be
    refused there, and the model may be on another page. The real request decides."""
    monkeypatch.setenv("NIGHT_TEST_KEY", "marker-night-0123456789")
    with Stub(models=["claude-dated-20250101"]) as stub:
        path = tmp_path / "profiles.toml"
        path.write_text(f'[models.claude]\nprovider = "anthropic"\nmodel = "claude-x"\napi_base = "{stub.base_url}"\n'
                        'api_key_env = "NIGHT_TEST_KEY"\nrendering = "chat"\n', encoding="utf-8")
        monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(path))
        code, out, _ = run_cli(["run", "--model", "claude", "--data", data_file(tmp_path), "--cache",
                                tmp_path / "c"], capsys, monkeypatch)
    assert code == 0 and "pre-flight" not in out, out
