"""`run`, `rescore` and `report` through the real client and SQLite cache, against the loopback stub."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest


from builders import run_cli, write_jsonl
from evaluator.cache.responses import ResponseCache
from evaluator.data import loaders
from evaluator.cli import sample_dir
from benchmarks.stubs.openai_stub import Stub

ROOT = Path(__file__).resolve().parents[1]




def run_args(stub: Stub, cache: Path, out: Path, *extra) -> list:
    """The sample set: its 4 multilingual rows stay unscored offline, so a run is `incomplete` (exit 3)."""
    return ["run", "--model", "stub-model", "--base-url", stub.base_url, "--data", sample_dir(), "--cache", cache,
            "--json", out, *extra]


def test_run_caches_every_answer_and_a_second_run_sends_nothing(tmp_path, capsys, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    with Stub() as stub:
        code, printed, err = run_cli(run_args(stub, cache, out), capsys, monkeypatch)
        assert code == 3, err  # incomplete: the multilingual model is not available offline
        first = json.loads(out.read_text())
        multilingual = sum(1 for q in loaders.load(sample_dir()).questions
                           if q.metric.value == "multilingual-sent-transformer")
        assert first["status"] == "incomplete" and first["unscored"] == multilingual > 0 and not first["complete"]
        assert "not scored" in printed and "--multilingual-model" in printed
        assert first["requests"]["sent"] == 26 and first["requests"]["cached"] == 0 and first["errors"] == 0
        assert first["requests"]["seconds"] > 0
        assert sum(stub.seen.values()) == 26
        code, printed, _ = run_cli(run_args(stub, cache, out), capsys, monkeypatch)
        second = json.loads(out.read_text())
        assert sum(stub.seen.values()) == 26  # nothing sent
        assert second["requests"] == {"sent": 0, "cached": 26, "errors": 0, "seconds": 0.0}
        assert "nothing to send" in printed
        assert {k: second[k] for k in ("tasks", "skills", "overall")} == {k: first[k] for k in
                                                                          ("tasks", "skills", "overall")}
        code, _, _ = run_cli(run_args(stub, cache, out, "--allow-incomplete"), capsys, monkeypatch)
        assert code == 0
        run_cli(run_args(stub, cache, out, "--refresh"), capsys, monkeypatch)
        assert sum(stub.seen.values()) == 52 and json.loads(out.read_text())["requests"]["sent"] == 26


def stub_answer(body: dict) -> str:
    """A digit for a multiple-choice prompt (max_tokens 1), a sentence near some truths for the others."""
    return "1" if body.get("max_tokens") == 1 else "A tray with compartments that keeps things in a drawer."


def test_answers_are_the_stub_answers_and_scores_follow(tmp_path, capsys, monkeypatch, english_model):
    """The first 3 sample questions: two explanations (cosine to the truth under all-MiniLM-L6-v2, clipped at 0)
    and a multiple choice answered right ('1'); the run's task scores are those, recomputed here."""
    cache = tmp_path / "cache"
    with Stub(answers=stub_answer) as stub:
        code, _, err = run_cli(run_args(stub, cache, tmp_path / "r.json", "--limit", "3"), capsys, monkeypatch)
    assert code == 0, err  # no multilingual question among the first 3: complete
    db = ResponseCache(cache / "responses")
    rows = db.db.execute("SELECT text, request FROM answers").fetchall()
    db.close()
    assert len(rows) == 3 and all(text == stub_answer(json.loads(request)) for text, request in rows)
    expected = {}
    for question in loaders.load(sample_dir()).questions[:3]:
        if question.metric.value == "accuracy":
            value = 1.0 if question.truth == 1 else 0.0
        else:
            emb = english_model.encode([stub_answer({}), question.truth], normalize_embeddings=True)
            value = max(0.0, float(emb[0] @ emb[1]))
        expected.setdefault(question.task, []).append(value)
    doc = json.loads((tmp_path / "r.json").read_text())
    got = {t["task"]: t["score"] for t in doc["tasks"]}
    assert got == pytest.approx({task: sum(v) / len(v) for task, v in expected.items()}, abs=1e-5)
    assert got["attribute_relevance"] == 1.0 and 0 < got["concept_explanation"] < 1  # real cosines


def test_cache_key_ignores_host_and_port(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    with Stub() as first:
        code_a, _, err = run_cli(run_args(first, cache, tmp_path / "a.json"), capsys, monkeypatch)
        assert code_a == 3 and sum(first.seen.values()) == 26, err  # incomplete offline (multilingual rows)
    with Stub() as second:
        assert second.port != first.port
        code_b, _, err = run_cli(run_args(second, cache, tmp_path / "b.json"), capsys, monkeypatch)
        assert sum(second.seen.values()) == 0
    assert code_b == code_a, err
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert b["requests"]["cached"] == 26 and b["requests"]["sent"] == 0
    assert {k: b[k] for k in ("tasks", "skills", "overall")} == {k: a[k] for k in ("tasks", "skills", "overall")}


def test_protocol_and_rendering_are_part_of_the_key(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    with Stub() as stub:
        run_cli(run_args(stub, cache, tmp_path / "a.json", "--limit", "4"), capsys, monkeypatch)
        run_cli(run_args(stub, cache, tmp_path / "b.json", "--limit", "4", "--render", "chat"), capsys, monkeypatch)
        run_cli(run_args(stub, cache, tmp_path / "c.json", "--limit", "4", "--protocol", "task"), capsys, monkeypatch)
        assert sum(stub.seen.values()) == 12


def test_failures_are_error_rows_not_wrong_answers_and_rescore_counts_them(tmp_path, capsys, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    with Stub(lambda _d, _a: "400") as stub:
        code, printed, _ = run_cli(run_args(stub, cache, out, "--limit", "5", "--no-preflight"), capsys, monkeypatch)
    doc = json.loads(out.read_text())
    assert code == 1 and doc["status"] == "failed" and doc["errors"] == 5 and doc["requests"]["errors"] == 5
    assert all(t["score"] is None and t["n"] == 0 for t in doc["tasks"])  # nothing scored as a wrong answer
    assert doc["overall"]["score"] is None
    db = ResponseCache(cache / "responses")
    kinds = db.db.execute("SELECT kind, status, attempts FROM errors").fetchall()
    answers = db.db.execute("SELECT count(*) FROM answers").fetchone()[0]
    db.close()
    assert answers == 0 and set(kinds) == {("http_error", 400, 1)} and len(kinds) == 5
    # a later run retries the failed ones; they now succeed and replace the errors
    with Stub() as stub:
        code, _, _ = run_cli(run_args(stub, cache, out, "--limit", "5"), capsys, monkeypatch)
    assert code == 0 and json.loads(out.read_text())["errors"] == 0
    code, printed, err = run_cli(["rescore", "--model", "stub-model", "--data", sample_dir(), "--cache", cache,
                                  "--json", tmp_path / "re.json"], capsys, monkeypatch)
    rescored = json.loads((tmp_path / "re.json").read_text())
    assert code == 3 and rescored["errors"] == 26 - 5  # only 5 questions were ever answered
    assert rescored["requests"]["sent"] == 0 and rescored["status"] == "incomplete"
    assert "5/26 answered" in printed


def test_report_lists_models_best_first(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "mc.json", [
        {"input_field": f"q{i}", "output_field": 0, "task_name": "t", "task_type": "multiple-choice",
         "metric": "accuracy"} for i in range(4)])
    with Stub() as stub:
        for model in ("alpha", "beta"):
            run_cli(["run", "--model", model, "--base-url", stub.base_url, "--data", data, "--cache", cache],
                capsys, monkeypatch)
    db = ResponseCache(cache / "responses")
    db.db.execute("UPDATE task_scores SET score = 0.75 WHERE run IN (SELECT key FROM runs WHERE model = 'beta')")
    # as a run saved before runs kept their own skill scores: the board recomputes them from the task scores
    db.db.execute("UPDATE runs SET details = json_remove(details, '$.skills', '$.overall')")
    db.close()
    code, out, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    board = json.loads(out)
    assert code == 0 and [r["model"] for r in board] == ["beta", "alpha"] and [r["rank"] for r in board] == [1, 2]
    assert board[0]["overall"] == 0.75 and board[0]["questions"] == 4 and board[0]["errors"] == 0
    assert board[0]["complete"] is True
    for fmt, marker in (("csv", "group,run,rank,model"), ("md", "| # | model | overall | ± s.e. |"), ("table", "leaderboard")):
        code, out, _ = run_cli(["report", "--cache", cache, "--format", fmt], capsys, monkeypatch)
        assert code == 0 and marker in out
    code, _, err = run_cli(["report", "--cache", cache, "--format", "xml"], capsys, monkeypatch)
    assert code == 2 and "xml" in err


def test_api_key_reaches_the_server_but_nothing_we_write(tmp_path, capsys, monkeypatch):
    marker = "fake-key-marker-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", marker)
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    with Stub() as stub:
        code, printed, err = run_cli(run_args(stub, cache, out, "--limit", "4"), capsys, monkeypatch)
        assert stub.authorizations == {f"Bearer {marker}": 4}
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert code == 0 and marker.encode() not in written and marker not in printed + err


def test_two_identical_runs_at_once_share_the_work_and_pay_once(tmp_path):
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "mc.json", [
        {"input_field": f"q{i}", "output_field": i % 4, "task_name": f"t{i % 3}", "task_type": "multiple-choice",
         "metric": "accuracy"} for i in range(300)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]

    def start(i: int) -> subprocess.Popen:
        with logs[i][0].open("w") as out, logs[i][1].open("w") as err:
            return subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)

    def until(done, what: str) -> None:  # moments keyed to events; 120 s is a hang guard, not a speed bound
        deadline = time.monotonic() + 120
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done(), f"never saw {what}: " + " | ".join(p.read_text()[-500:] for pair in logs for p in pair)

    with Stub(latency=(0.005, 0.01), hold_until=float("inf"), hold_s=120) as stub:  # replies held until release
        command = [sys.executable, "-m", "evaluator", "run", "--model", "stub-model", "--base-url", stub.base_url,
                   "--data", str(data), "--cache", str(cache), "--concurrency", "8"]
        runs = [start(0)]
        until(lambda: stub.in_flight > 0, "the first run claim and send")
        runs.append(start(1))
        until(lambda: "another run" in logs[1][0].read_text(), "the second run wait for the first")
        stub.release()
        codes = [r.wait(timeout=300) for r in runs]
        received = sum(stub.seen.values())
    for code, (out, err) in zip(codes, logs):
        assert code == 0, out.read_text()[-3000:] + err.read_text()
        assert "locked" not in err.read_text()
    assert received == 300  # each question bought once: the second run waited for what the first was fetching
    db = ResponseCache(cache / "responses")
    assert db.db.execute("SELECT count(*) FROM answers").fetchone()[0] == 300
    assert db.db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0  # released
    assert db.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_corrupt_cache_is_a_clear_error(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "cache" / "responses"
    folder.mkdir(parents=True)
    (folder / "responses.sqlite").write_bytes(b"this is not a database" * 100)
    code, _, err = run_cli(["report", "--cache", tmp_path / "cache"], capsys, monkeypatch)
    assert code == 2 and "cannot be read" in err and "move the file aside" in err


def test_unknown_model_without_base_url(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["run", "--model", "no-such-model", "--data", sample_dir(), "--cache", tmp_path],
                       capsys, monkeypatch)
    assert code == 2 and "no model profile named 'no-such-model'" in err


def test_truncated_cache_is_a_clear_error(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    with Stub() as stub:
        run_cli(run_args(stub, cache, tmp_path / "r.json"), capsys, monkeypatch)
    db_file = cache / "responses" / "responses.sqlite"
    content = db_file.read_bytes()
    db_file.write_bytes(content[: len(content) // 2])
    for args in (["report", "--cache", cache],
                 ["rescore", "--model", "stub-model", "--data", sample_dir(), "--cache", cache]):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and "cannot be read" in err and "Traceback" not in err


def test_compare_inspect_chart_and_cost(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "mc.json", [
        {"input_field": f"q{i}", "output_field": i % 2, "task_name": f"t{i % 2}", "task_type": "multiple-choice",
         "metric": "accuracy"} for i in range(6)])
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[models.priced]\nprovider = "openai-compatible"\nmodel = "priced"\n'
                        'price_input = 2.0\nprice_output = 8.0\n', encoding="utf-8")
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(profiles))
    with Stub() as stub:
        for model in ("priced", "other"):
            run_cli(["run", "--model", model, "--base-url", stub.base_url, "--data", data, "--cache", cache],
                    capsys, monkeypatch)
    code, out, err = run_cli(["compare", "other", "priced", "--cache", cache], capsys, monkeypatch)
    assert code == 0, err
    assert "t1" in out and "t0" in out and "+0.000" in out and "overall" in out  # same stub answers: no difference
    code, _, err = run_cli(["compare", "other", "nobody", "--cache", cache], capsys, monkeypatch)
    assert code == 2 and "no scores for model 'nobody'" in err

    code, out, err = run_cli(["inspect", "--model", "priced", "--task", "t1", "--data", data, "--cache", cache],
                             capsys, monkeypatch)
    assert code == 0, err
    # the stub's one-token answer 's' (budget 1); the title may wrap to the table's width
    assert "3 questions" in " ".join(out.split()) and re.search(r"q1 +1 +s +0\.0000", out), out
    code, _, err = run_cli(["inspect", "--model", "priced", "--task", "zz", "--data", data, "--cache", cache],
                           capsys, monkeypatch)
    assert code == 2 and "no task 'zz'" in err

    chart = tmp_path / "board.png"
    code, out, err = run_cli(["report", "--cache", cache, "--format", "json", "--chart", chart], capsys,
                             monkeypatch)
    board = {r["model"]: r for r in json.loads(out)}
    assert code == 0 and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 6 × (10 in, 1 out) tokens: a multiple-choice request's budget is 1, and the stub keeps to it
    assert board["priced"]["cost"] == pytest.approx((60 * 2.0 + 6 * 8.0) / 1e6)
    assert board["other"]["cost"] is None
    monkeypatch.delenv("SHOPPING_MMLU_PROFILES")  # cost is kept from run time, whatever profiles load now
    code, out, err = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    assert {r["model"]: r for r in json.loads(out)}["priced"]["cost"] == pytest.approx((60 * 2.0 + 6 * 8.0) / 1e6)
