"""A night of many models: every model complete on a fresh cache, every view agreeing to the last digit with
`rescore` alone, a cache opened from many threads and processes at once, a stop that stops, and pre-flight
that never turns a resumable model into a failed one."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.night import write_suite
from benchmarks.stubs.openai_stub import Stub
from builders import old_cache, run_cli, write_jsonl
from evaluator.cache.responses import SCHEMA_VERSION, Answer, ResponseCache, process_owner
from evaluator.reports import compare as compare_report
from servers.profiles import ModelProfile

ROOT = Path(__file__).resolve().parents[1]
TRUTHS = ["a soft cotton bath towel", "stainless steel water bottle", "wireless noise cancelling headphones",
          "organic green tea bags", "a leather wallet for men", "kids building blocks set"]


def night_data(path: Path, n: int = 36) -> Path:
    """Multiple choice, sentence-transformer generation, ROUGE-L extraction and retrieval rows."""
    rows = []
    for i in range(n):
        kind = ("MC", "GEN", "EXT", "RET")[i % 4]
        if kind == "MC":
            rows.append({"input_field": f"MC question {i}?", "output_field": i % 4, "task_name": "pick",
                         "task_type": "multiple-choice", "metric": "accuracy", "track": "concept"})
        elif kind == "GEN":
            rows.append({"input_field": f"GEN describe item {i}", "output_field": TRUTHS[i % len(TRUTHS)],
                         "task_name": "describe", "task_type": "generation", "metric": "sent-transformer",
                         "track": "reasoning"})
        elif kind == "EXT":
            rows.append({"input_field": f"EXT extract from {i}", "output_field": TRUTHS[(i + 1) % len(TRUTHS)],
                         "task_name": "attribute_extraction", "task_type": "generation", "metric": "rougel",
                         "track": "reasoning"})
        else:
            rows.append({"input_field": f"RET which {i}", "output_field": [1, 2, 3], "task_name": "find",
                         "task_type": "retrieval", "metric": "hit rate@3", "track": "behavior"})
    return write_jsonl(path, rows)


def answer(body: dict) -> str:
    """Each model answers differently (the body names the model), some answers exactly right."""
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    h = int(hashlib.sha256(f"{body.get('model')}|{prompt}".encode()).hexdigest(), 16)
    if "MC question" in prompt:
        return str(h % 4)
    if "RET which" in prompt:
        return ",".join(str(1 + (h >> k) % 5) for k in range(3))
    words = TRUTHS[h % len(TRUTHS)].split()
    return " ".join(words[: 1 + (h >> 8) % len(words)])


@pytest.mark.parametrize("count", [16, 27, 16])
def test_many_models_on_a_fresh_cache_are_complete_and_every_view_agrees(tmp_path, capsys, monkeypatch, count):
    """No embedding vector, no ONNX graph yet: 16 or 27 models answered at once and scored by the one stage,
    repeated. Each model's suite score equals `rescore` alone, `report`, `compare` and the HTML page, to the
    last digit."""
    data, cache, out = night_data(tmp_path / "d.json"), tmp_path / "cache", tmp_path / "night"
    models = [f"m{i:02d}" for i in range(count)]
    with Stub(answers=answer) as stub:
        code, stdout, stderr = run_cli(["suite", write_suite(tmp_path, data, stub.base_url, count), "--cache", cache,
                                        "--output", out], capsys, monkeypatch)
    assert code == 0, stdout[-3000:] + stderr
    out = out / "latest"  # the night just run
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["complete"]) == models and not summary["incomplete"] and not summary["failed"]
    board = {r["model"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    assert sorted(board) == models and all(r["status"] == "complete" and r["unscored"] == 0
                                           for r in board.values())
    assert len({r["overall"] for r in board.values()}) > 8  # the models really differ
    code, stdout, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    reported = {r["model"]: r for r in json.loads(stdout)}
    page = (out / "report.html").read_text()
    html_board = {r["model"]: r for r in json.loads(re.search(
        r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))["board"]}
    skills = [k for k in board["m00"] if k.startswith("skill:")]
    assert len(skills) == 3
    for model in models:
        code, stdout, stderr = run_cli(["rescore", "--model", model, "--data", data, "--cache", cache, "--json",
                                        tmp_path / f"{model}.json"], capsys, monkeypatch)
        assert code == 0, stdout + stderr
        alone = json.loads((tmp_path / f"{model}.json").read_text())
        assert alone["status"] == "complete"
        assert alone["overall"]["score"] == board[model]["overall"] == reported[model]["overall"] \
            == html_board[model]["overall"]
        for skill in skills:
            assert board[model][skill] == reported[model][skill] == html_board[model][skill]
        saved = json.loads((out / "models" / model / "results.json").read_text())
        assert saved["scores"]["overall"]["score"] == alone["overall"]["score"]
    [(_, table)] = compare_report.compare(cache, "m00", "m01", None, None, 200)
    overall = table.filter(table["level"] == "overall").row(0, named=True)
    assert (overall["a"], overall["b"]) == (board["m00"]["overall"], board["m01"]["overall"])


def test_one_embedding_model_is_loaded_once_when_many_threads_ask_at_once(tmp_path):
    """Concurrent first loads (and ONNX exports) broke inside transformers; now one load serves all."""
    from evaluator.scoring import embeddings

    barrier = threading.Barrier(8)
    got, failures = [], []

    def load() -> None:
        barrier.wait()
        try:
            got.append(embeddings.shared_model(embeddings.ENGLISH_MODEL, "auto", tmp_path))
        except Exception as exc:  # noqa: BLE001: the failure is what the test looks for
            failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures and len(got) == 8 and len({id(m) for m in got}) == 1
    vectors = got[0].encode(["a towel", "a mug"])
    assert vectors.shape[0] == 2


OPENER = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from evaluator.cache.responses import Answer, ResponseCache, process_owner
    folder, start, tag = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    failures = []

    def work(n):
        try:
            cache = ResponseCache(folder)
            for i in range(40):
                key = f"{{tag}}-{{n}}-{{i}}"
                cache.claim([key], process_owner())
                cache.put_answer(key, "m", "q", {{"prompt": key}}, Answer("x", "stop", 1, 1), 0.0, 1)
            cache.put_model(f"model-{{tag}}-{{n}}", {{"name": "m"}})
            cache.close()
        except Exception as exc:
            failures.append(repr(exc))

    while time.time() < start:
        time.sleep(0.001)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("FAILURES", failures)
    sys.exit(1 if failures else 0)
""")


@pytest.mark.parametrize("kind", ["fresh", "old"])
def test_a_cache_opened_by_many_threads_and_processes_at_once(tmp_path, kind):
    """4 processes x 8 threads open one cache (fresh, or an old one to migrate) in the same millisecond and
    write through it: no error, nothing lost, migrated once."""
    folder = tmp_path / "responses"
    if kind == "old":
        old_cache(folder)
    script = tmp_path / "opener.py"
    script.write_text(OPENER.format(root=str(ROOT)), encoding="utf-8")
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, str(script), str(folder), str(start), f"p{p}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out + err
    cache = ResponseCache(folder)
    try:
        assert cache.db.execute("SELECT count(*) FROM answers").fetchone()[0] == 4 * 8 * 40
        assert cache.db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
        assert cache.db.execute("SELECT count(*) FROM models").fetchone()[0] == 4 * 8
        assert cache.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert cache.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        if kind == "old":
            runs = cache.runs()
            assert runs.height == 1 and runs["model"][0] == "old"  # moved once, not once per opener
    finally:
        cache.close()


def test_a_foreign_sqlite_file_is_still_refused_with_the_real_cause(tmp_path):
    folder = tmp_path / "responses"
    folder.mkdir()
    db = sqlite3.connect(folder / "responses.sqlite")
    db.execute("CREATE TABLE thesis (chapter TEXT)")
    db.commit()
    db.close()
    from evaluator.errors import InputError

    with pytest.raises(InputError, match="its tables: thesis"):
        ResponseCache(folder)
    db = sqlite3.connect(folder / "responses.sqlite")
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["thesis"]  # untouched
    db.close()


def test_writes_from_many_threads_share_commits_and_readers_see_them(tmp_path):
    """The writer thread is the only one that writes: 16 threads x 200 answers, each kept when put returns."""
    cache = ResponseCache(tmp_path / "responses")
    seen_missing = []

    def work(n: int) -> None:
        for i in range(200):
            key = f"{n}-{i}"
            cache.put_answer(key, "m", "q", {"p": key}, Answer(key, None, None, None), 0.0, 1)
            if key not in cache.answers([key]):  # on disk the moment put_answer returns
                seen_missing.append(key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert not seen_missing
        assert cache.db.execute("SELECT count(*) FROM answers").fetchone()[0] == 16 * 200
    finally:
        cache.close()


# ---------------------------------------------------------------- a stop that stops

@pytest.mark.slow  # over 20 s on a shared 2-core machine
def test_a_suite_stops_within_seconds_on_sigterm_at_random_moments_and_then_finishes(tmp_path):
    """3 models x 2,000 questions, SIGTERM at random moments (start-up, fan-out, scoring): each run stops with
    exit code 130 (a hang guard of 120 s, not a speed bound: busy loops of our own to load the machine slowed
    every other test on it); a last run completes with every answer once."""
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": f"MC question {i}?", "output_field": i % 4, "task_name": f"t{i % 5}",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(2000)])
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOPPING_MMLU_CACHE": str(tmp_path / "home")}
    rng = random.Random(17)
    with Stub(answers=answer, latency=(0.0, 0.002)) as stub:
        toml = write_suite(tmp_path, data, stub.base_url, 3, concurrency=32)
        command = [sys.executable, "-c", "from evaluator.cli import main; main()", "suite", str(toml),
                   "--cache", str(cache), "--output", str(tmp_path / "night")]
        for _ in range(4):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.5, 6.0))
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"still running 120 s after SIGTERM: {err[-2000:]}")
            # 130: interrupted; 0: it had finished; -SIGTERM: the signal came before Python set its handler
            assert proc.returncode in (130, 0, -signal.SIGTERM), (proc.returncode, out[-2000:] + err[-2000:])
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cache_db = ResponseCache(cache / "responses")
    try:
        per_model = dict(cache_db.db.execute("SELECT model, count(*) FROM answers GROUP BY model").fetchall())
        assert per_model == {"m00": 2000, "m01": 2000, "m02": 2000}
        assert cache_db.db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
        assert cache_db.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        cache_db.close()
    summary = json.loads((tmp_path / "night" / "latest" / "summary.json").read_text())
    assert len(summary["complete"]) == 3


def test_the_watchdog_names_a_model_whose_answers_stop_moving():
    from evaluator.runs.suite import Watchdog

    said = []
    watchdog = Watchdog(said.append, stall_s=0.4)
    try:
        watchdog.saw("quick")
        watchdog.saw("stuck")
        deadline = time.monotonic() + 60  # a hang guard: the event ends the wait
        while time.monotonic() < deadline and not said:
            watchdog.saw("quick")
            time.sleep(0.05)
        assert said and "stuck" in said[0] and "no answer for" in said[0] and not any("quick" in s for s in said)
        watchdog.done("stuck")
    finally:
        watchdog.close()


# ---------------------------------------------------------------- pre-flight keeps models resumable

def test_a_partly_answered_model_whose_pending_questions_are_refused_stays_resumable(tmp_path, capsys,
                                                                                    monkeypatch):
    """20 of 96 questions always meet a content filter (HTTP 400). The first run is incomplete 76/96; a
    rerun sends only those 20 and is still incomplete, never failed."""
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": f"{'FILTERED' if i % 5 == 0 else 'MC'} question {i}?", "output_field": i % 4,
         "task_name": f"t{i % 3}", "task_type": "multiple-choice", "metric": "accuracy"} for i in range(100)])
    filtered = set()

    def plan(digest: str, _attempt: int) -> str:
        return "400" if digest in filtered else "ok"

    import benchmarks.stubs.openai_stub as stub_module

    real_hash = stub_module.body_hash

    def tagging_hash(raw: bytes) -> str:  # the content filter: bodies that carry a filtered question
        digest = real_hash(raw)
        if b"FILTERED" in raw:
            filtered.add(digest)
        return digest

    monkeypatch.setattr(stub_module, "body_hash", tagging_hash)
    with Stub(plan, answers=answer) as stub:
        args = ["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", tmp_path / "c",
                "--json", tmp_path / "r.json", "--stop-error-share", "1"]
        code, out, err = run_cli(args, capsys, monkeypatch)
        first = json.loads((tmp_path / "r.json").read_text())
        assert code == 3 and first["status"] == "incomplete" and first["errors"] == 20, out + err
        before = sum(stub.seen.values())
        code, out, err = run_cli(args, capsys, monkeypatch)
        second = json.loads((tmp_path / "r.json").read_text())
        assert code == 3 and second["status"] == "incomplete" and second["errors"] == 20, out + err
        assert "pre-flight" not in out
        assert sum(stub.seen.values()) - before <= 20 * 3 + 1  # the 20 again (with retries) and one known question
    code, out, _ = run_cli(["report", "--cache", tmp_path / "c", "--format", "json"], capsys, monkeypatch)
    assert json.loads(out)[0]["status"] == "incomplete"


# ---------------------------------------------------------------- identity and the HTML page

def test_server_arguments_that_change_answers_are_part_of_the_models_identity():
    plain = ModelProfile(name="m", model="org/m")
    eager = ModelProfile(name="m", model="org/m", extra_args=["--enforce-eager"])
    quant = ModelProfile(name="m", model="org/m", extra_args=["--quantization", "awq"])
    logs = ModelProfile(name="m", model="org/m", extra_args=["--uvicorn-log-level", "warning",
                                                             "--disable-log-requests"])
    identities = [json.dumps(p.identity(), sort_keys=True) for p in (plain, eager, quant)]
    assert len(set(identities)) == 3
    assert logs.identity() == plain.identity() and "server_args" not in plain.identity()  # old keys stay valid


def test_an_exact_embedding_match_is_not_listed_as_wrong():
    from types import SimpleNamespace

    import polars as pl

    from evaluator.reports.html import model_payload

    rows = pl.DataFrame({"row": [0, 1], "score": [0.9999999999, 0.61], "tp": [None, None], "fp": [None, None],
                         "fn": [None, None], "error": [None, None], "output": ["a", "b"], "unscored": [None, None],
                         "official": [None, None]}, schema_overrides={"tp": pl.Int64, "fp": pl.Int64,
                                                                       "fn": pl.Int64, "error": pl.String,
                                                                       "unscored": pl.String, "official": pl.String})
    questions = [SimpleNamespace(task="t", input="in", truth="a"), SimpleNamespace(task="t", input="in", truth="c")]
    payload = model_payload(SimpleNamespace(tasks=[], questions=questions, rows=rows, status="complete",
                                            reason=None))
    assert [q["wrong"] for q in payload["questions"]] == [False, True]
