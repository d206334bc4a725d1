"""Cannot lose work: SIGKILL and resume, a matrix of faults, a rescore while a run writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import write_jsonl
from evaluator.cache.responses import ResponseCache
from benchmarks.stubs.openai_stub import FAULTS, Stub, sent_for, share_plan

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
RETRYABLE = {"429", "500", "502", "503", "stall", "reset"}


def synthetic(path: Path, n: int, tasks: int = 10) -> Path:
    return write_jsonl(path, [{"input_field": f"Question {i}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ",
                               "output_field": i % 4, "task_name": f"task{i % tasks}",
                               "task_type": "multiple-choice", "metric": "accuracy"} for i in range(n)])


def run_cmd(stub: Stub, data: Path, cache: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "evaluator", "run", "--model", "stub-model", "--base-url", stub.base_url,
            "--data", str(data), "--cache", str(cache), "--json", str(out), *extra]


def cached_rows(cache: Path) -> tuple[list[tuple[str, str]], int]:
    db = ResponseCache(cache / "responses")
    answers = db.db.execute("SELECT text, request FROM answers").fetchall()
    errors = db.db.execute("SELECT count(*) FROM errors").fetchone()[0]
    db.close()
    return answers, errors


@pytest.mark.slow  # over 20 s on a shared 2-core machine
def test_sigkill_ten_times_then_resume_loses_and_rebuys_nothing(tmp_path):
    n, concurrency, kills = 5000, 64, 10
    data = synthetic(tmp_path / "data.json", n)
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    rng = random.Random(11)
    killed_mid_run = 0
    with Stub(latency=(0.005, 0.04), seed=5) as stub:
        for _ in range(kills):
            before = sum(stub.seen.values())
            run = subprocess.Popen(run_cmd(stub, data, cache, out, "--concurrency", str(concurrency)), env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while sum(stub.seen.values()) == before and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # kill only once requests are flowing
            time.sleep(rng.uniform(0.0, 0.6))
            if run.poll() is None:
                killed_mid_run += 1
            run.send_signal(signal.SIGKILL)  # a no-op if it already finished
            run.wait()
        final = subprocess.run(run_cmd(stub, data, cache, out, "--concurrency", str(concurrency)), env=ENV,
                               capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-2000:]
        received = sum(stub.seen.values())
    answers, errors = cached_rows(cache)
    assert killed_mid_run >= 5  # most kills landed while requests were in flight
    assert len(answers) == n and errors == 0
    assert all(text == sent_for(json.loads(request)) for text, request in answers)
    assert len(stub.seen) == n  # every question asked
    assert received <= n + kills * concurrency  # re-bought at most what was in flight at each kill
    doc = json.loads(out.read_text())
    assert doc["errors"] == 0 and sum(t["n"] for t in doc["tasks"]) == n
    print(f"\ncrash/resume: {n} questions, {kills} SIGKILLs ({killed_mid_run} mid-run), stub received "
          f"{received} requests ({received - n} repeats, bound {kills * concurrency}), {len(answers)} answers")


def test_fault_matrix(tmp_path):
    n = 600
    data = synthetic(tmp_path / "data.json", n, tasks=6)
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    plan = share_plan(0.5, FAULTS, seed=3)
    with Stub(plan, stall_s=3, retry_after="0.05") as stub:
        done = subprocess.run(run_cmd(stub, data, cache, out, "--concurrency", "64", "--timeout", "0.5",
                                      "--no-preflight", "--stop-error-share", "1"), env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 3, done.stderr[-2000:]  # incomplete: the terminal faults are error rows
        first_actions = {digest: plan(digest, 1) for digest in stub.seen}
        seen = dict(stub.seen)
    answers, errors = cached_rows(cache)
    terminal = sum(1 for a in first_actions.values() if a not in RETRYABLE and a != "ok")
    retried = sum(1 for a in first_actions.values() if a in RETRYABLE)
    assert len(first_actions) == n and terminal > 0 and retried > 0
    assert set(first_actions.values()) == set(FAULTS) | {"ok"}  # every kind of fault was injected
    assert errors == terminal and len(answers) == n - terminal
    assert all(text == sent_for(json.loads(request)) for text, request in answers)
    for digest, action in first_actions.items():  # retries stay within their bounds
        assert seen[digest] == (2 if action in RETRYABLE else 1)
    doc = json.loads(out.read_text())
    assert doc["errors"] == terminal == doc["requests"]["errors"]
    assert sum(t["n"] for t in doc["tasks"]) == n - terminal  # no fault scored as a wrong answer
    db = ResponseCache(cache / "responses")
    per_task = dict(db.db.execute("SELECT task, errors FROM task_scores").fetchall())
    kinds = {k for (k,) in db.db.execute("SELECT DISTINCT kind FROM errors")}
    db.close()
    assert sum(per_task.values()) == terminal and kinds == {"http_error", "malformed", "empty"}


def test_rescore_while_a_run_writes(tmp_path):
    data = synthetic(tmp_path / "data.json", 3000)
    cache = tmp_path / "cache"
    with Stub(latency=(0.001, 0.01)) as stub:
        run = subprocess.Popen(run_cmd(stub, data, cache, tmp_path / "run.json", "--concurrency", "32"), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rescored = 0
        while not (cache / "responses" / "responses.sqlite").exists() and run.poll() is None:
            time.sleep(0.01)
        while run.poll() is None:
            done = subprocess.run([sys.executable, "-m", "evaluator", "rescore", "--model", "stub-model", "--data",
                                   str(data), "--cache", str(cache), "--json", str(tmp_path / "re.json")],
                                  env=ENV, capture_output=True, text=True, timeout=120)
            assert done.returncode in (0, 3) and "locked" not in done.stderr, done.stderr[-2000:]
            rescored += 1
        assert run.returncode == 0, run.stderr.read()[-2000:]
    answers, errors = cached_rows(cache)
    assert rescored >= 1 and len(answers) == 3000 and errors == 0


@pytest.mark.parametrize("render, provider_env", [("completion", "OPENAI_API_KEY"), ("chat", "OPENAI_API_KEY"),
                                                  ("chat", "ANTHROPIC_API_KEY")])
def test_keys_reach_the_server_and_nothing_else(tmp_path, render, provider_env, monkeypatch):
    """Every rendering, the ad-hoc (OPENAI_API_KEY) and a profile-named key variable (ANTHROPIC_API_KEY)."""
    marker = f"sk-{provider_env.lower()}-marker-0123456789abcdef"
    data = synthetic(tmp_path / "data.json", 20)
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[models.claude-stub]\nprovider = "anthropic"\nmodel = "claude-x"\n'
                        'api_key_env = "ANTHROPIC_API_KEY"\nrendering = "chat"\n', encoding="utf-8")
    env = {**ENV, provider_env: marker, "SHOPPING_MMLU_PROFILES": str(profiles)}
    model = "claude-stub" if provider_env == "ANTHROPIC_API_KEY" else "stub-model"
    with Stub() as stub:
        cmd = run_cmd(stub, data, cache, out, "--render", render)
        cmd[cmd.index("stub-model")] = model
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        report = subprocess.run([sys.executable, "-m", "evaluator", "report", "--cache", str(cache), "--format",
                                 "json"], env=env, capture_output=True, text=True, timeout=120)
        assert stub.authorizations == {f"Bearer {marker}": 20}
    assert done.returncode == 0, done.stderr[-2000:]
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert marker.encode() not in written
    assert marker not in done.stdout + done.stderr + report.stdout + report.stderr
