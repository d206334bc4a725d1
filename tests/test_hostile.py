"""Hostile servers, files, flags and disks: every reply ends as an answer or an error row, the run goes on,
memory stays bounded, nothing secret is stored, and bad input is one line with exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.stubs.openai_stub import HOSTILE, Stub, sent_for
from builders import run_cli, write_jsonl
from evaluator.cache.responses import ResponseCache
from evaluator.client.http import Endpoint, Reply, RetryPolicy, fan_out, retry_after_seconds
from evaluator.paths import safe_name

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
BODY = {"model": "m", "prompt": "hello", "max_tokens": 4, "temperature": 0.0}
FAST = RetryPolicy(max_attempts=3, max_total_s=20, base_delay_s=0.05, max_delay_s=0.2)


def one(action: str, policy: RetryPolicy = FAST, key: str | None = None) -> Reply:
    replies = {}
    with Stub(lambda _d, _a: action) as stub:
        endpoint = Endpoint(stub.base_url, chat=False, api_key=key, timeout_s=20)
        asyncio.run(fan_out(endpoint, [("k", BODY)], lambda k, r: replies.__setitem__(k, r), policy))
    return replies["k"]


@pytest.mark.parametrize("action, ok, kind", [
    ("surrogate", False, "malformed"), ("huge_tokens", True, None), ("deep", False, "malformed"),
    ("long_int", True, None), ("wrong_types", True, None), ("null_text", False, "empty"),
    ("error_200", False, "api_error"), ("endless", False, "oversized"), ("oversized", False, "oversized"),
    ("echo_key", False, "http_error"), ("echo_key_bare", False, "http_error"),
    ("echo_key_masked", False, "http_error"), ("garbage_retry_after", False, "rate_limited"),
    ("huge_retry_after", False, "rate_limited"), ("zero_retry_after", False, "rate_limited"),
])
def test_every_hostile_reply_ends_as_an_answer_or_an_error(action, ok, kind):
    reply = one(action)
    assert reply.ok is ok and reply.error_kind == kind, reply  # an endless body: 'oversized', not a timeout
    if ok:
        assert reply.prompt_tokens is None or reply.prompt_tokens < 2**31  # absurd counts are dropped
        assert reply.finish_reason is None or isinstance(reply.finish_reason, str)


def test_retry_after_edges():
    assert retry_after_seconds("soon, maybe") is None and retry_after_seconds("1e999") is None
    assert retry_after_seconds("nan") is None and retry_after_seconds("-5") == 0.0
    reply = one("huge_retry_after", RetryPolicy(max_attempts=6, max_total_s=60, base_delay_s=0.05))
    assert reply.attempts == 1 and "asked to retry after 99,999,999 s" in reply.message
    started = time.monotonic()
    reply = one("zero_retry_after", RetryPolicy(max_attempts=4, max_total_s=60, base_delay_s=0.2))
    assert reply.attempts == 4 and time.monotonic() - started >= 3 * 0.2  # a floor under Retry-After: 0


@pytest.mark.slow  # over 20 s on a shared 2-core machine
def test_a_run_against_a_hostile_server_finishes_keeps_no_poison_and_no_secret(tmp_path):
    marker = "marker-hostile-0123456789abcdef"
    n = 120
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": f"t{i % 3}",
                                              "task_type": "multiple-choice", "metric": "accuracy"}
                                             for i in range(n)])
    modes = ("ok",) * 4 + HOSTILE

    def plan(digest: str, _attempt: int) -> str:
        return modes[int(digest[:8], 16) % len(modes)]

    cache, out = tmp_path / "cache", tmp_path / "run.json"
    with Stub(plan) as stub:
        cmd = [sys.executable, "-m", "evaluator", "run", "--model", "hostile", "--base-url", stub.base_url,
               "--data", str(data), "--cache", str(cache), "--json", str(out), "--no-preflight",
               "--stop-after-failures", "1000", "--stop-error-share", "1", "--timeout", "10"]
        done = subprocess.run(cmd, env={**ENV, "OPENAI_API_KEY": marker}, capture_output=True, text=True,
                              timeout=600)
        assert stub.authorizations == {f"Bearer {marker}": sum(stub.seen.values())}
        actions = {d: plan(d, 1) for d in stub.seen}
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]  # incomplete, not a crash
    doc = json.loads(out.read_text())
    db = ResponseCache(cache / "responses")
    answers = db.db.execute("SELECT text, request FROM answers").fetchall()
    errors = dict(db.db.execute("SELECT kind, count(*) FROM errors GROUP BY kind").fetchall())
    db.close()
    assert len(answers) + sum(errors.values()) == n == len(actions)  # every question: an answer or an error
    for text, request in answers:  # no poisoned answer: the stub's own answer, or the typed-fields one
        assert text in (sent_for(json.loads(request)), "typed", "ok"), text
    assert set(errors) >= {"malformed", "empty", "api_error", "oversized", "http_error", "rate_limited"}
    assert doc["errors"] == sum(errors.values()) and doc["status"] == "incomplete"
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert marker.encode() not in written and marker not in done.stdout + done.stderr


def test_memory_stays_bounded_under_endless_bodies(tmp_path):
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": 0, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"}
                                             for i in range(256)])
    with Stub(lambda _d, _a: "endless") as stub:
        run = subprocess.Popen([sys.executable, "-m", "evaluator", "run", "--model", "m", "--base-url",
                                stub.base_url, "--data", str(data), "--cache", str(tmp_path / "c"), "--no-preflight",
                                "--stop-error-share", "1", "--concurrency", "64"], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        while run.poll() is None:
            try:
                status = Path(f"/proc/{run.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError):
                pass
            time.sleep(0.05)
    assert run.returncode == 1  # every request failed: the run failed, in seconds, with bounded memory
    assert 0 < peak < 600 * 1024, f"peak RSS {peak / 1024:.0f} MiB"


# ---------------------------------------------------------------- files and flags

def test_json_output_never_overwrites_an_input_and_a_folder_is_refused(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "d.json", [{"input_field": "q", "output_field": 0, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"}])
    responses = write_jsonl(tmp_path / "r.json", [{"model_output": "0"}])
    before = data.read_bytes(), responses.read_bytes()
    for target in (data, responses):
        code, _, err = run_cli(["score", "--data", data, "--responses", responses, "--json", target], capsys,
                               monkeypatch)
        assert code == 2 and "would overwrite the input" in err
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code, _, err = run_cli(["score", "--data", data, "--responses", responses, "--json", folder], capsys, monkeypatch)
    assert code == 2 and "is a folder" in err
    assert (data.read_bytes(), responses.read_bytes()) == before
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.parametrize("flags, expected", [
    (["--timeout", "0"], "--timeout"), (["--timeout", "-1"], "--timeout"), (["--timeout", "inf"], "--timeout"),
    (["--concurrency", "0"], "--concurrency"), (["--concurrency", "-5"], "--concurrency"),
])
def test_numbers_that_make_no_sense_are_refused(tmp_path, capsys, monkeypatch, flags, expected):
    code, _, err = run_cli(["run", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--data",
                            tmp_path / "none.json", *flags], capsys, monkeypatch)
    assert code == 2 and expected in err and "Traceback" not in err


@pytest.mark.parametrize("entry, field", [
    ("concurrency = -5", "models.m.concurrency"), ("requests_per_minute = -10", "models.m.requests_per_minute"),
    ("params_b = -7", "models.m.params_b"), ("tensor_parallel_size = 0", "models.m.tensor_parallel_size"),
    ("gpu_memory_utilization = 1.5", "models.m.gpu_memory_utilization"), ("protocl = 'task'", "models.m.protocl"),
])
def test_suite_values_are_checked_like_profiles(tmp_path, capsys, monkeypatch, entry, field):
    suite = tmp_path / "s.toml"
    suite.write_text(f"[suite]\ndata = 'd.json'\n[models]\nm = {{ model = 'x', {entry} }}\n", encoding="utf-8")
    code, _, err = run_cli(["suite", suite, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and field in err and "Traceback" not in err, err


@pytest.mark.parametrize("head, field", [
    ("protocl = 'task'", "suite.protocl"), ("concurrency = 'lots'", "suite.concurrency"),
    ("concurrency = -5", "suite.concurrency"), ("render = 'html'", "suite.render"),
])
def test_suite_head_keys_are_checked(tmp_path, capsys, monkeypatch, head, field):
    suite = tmp_path / "s.toml"
    suite.write_text(f"[suite]\ndata = 'd.json'\n{head}\n[models]\ndemo = {{}}\n", encoding="utf-8")
    code, _, err = run_cli(["suite", suite, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and field in err and "Traceback" not in err, err


def test_gpu_ids_must_be_distinct(tmp_path, capsys, monkeypatch):
    suite = tmp_path / "s.toml"
    suite.write_text("[suite]\ndata = 'd.json'\n[models]\ndemo = {}\n", encoding="utf-8")
    code, _, err = run_cli(["suite", suite, "--dry-run", "--gpu-ids", "0,0", "--gpu-mem", "80"], capsys, monkeypatch)
    assert code == 2 and "distinct" in err


def test_profiles_file_that_is_not_utf8_or_not_toml(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "p.toml"
    bad.write_bytes(b"[models.x]\nmodel = '\xff\xfe'\n")
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(bad))
    code, _, err = run_cli(["models"], capsys, monkeypatch)
    assert code == 2 and "not UTF-8" in err
    bad.write_text("[models.x]\nmodel = 'y'\nprovider = 'vllm'\nwho = 1\n", encoding="utf-8")
    code, _, err = run_cli(["models"], capsys, monkeypatch)
    assert code == 2 and "models.x.who" in err and "unknown key" in err


@pytest.mark.parametrize("name", ["/tmp/x", "../../x", "..", ".", "a/b\\c", "é ü", "x" * 500, ""])
def test_names_never_escape_their_folder(name):
    cleaned = safe_name(name)
    assert "/" not in cleaned and "\\" not in cleaned and cleaned not in (".", "..") and not cleaned.startswith(".")
    assert 0 < len(cleaned) <= 100
    assert safe_name(name) == cleaned and (cleaned == name or safe_name(name + "!") != cleaned)


def test_a_model_named_like_a_path_logs_inside_the_cache(tmp_path, monkeypatch):
    from rich.console import Console

    from evaluator.runs import sending
    from servers.profiles import ModelProfile
    from servers.vllm_server import ServerStartError, VLLMServer

    seen = []

    def refuse(self):
        seen.append(self.log_path)
        raise ServerStartError("not starting in this test")

    monkeypatch.setattr(VLLMServer, "__enter__", refuse)
    for name in ("/tmp/x", "../../x"):
        with pytest.raises(ServerStartError):
            sending.start_server(ModelProfile(name=name, model="org/x"), tmp_path / "cache", Console(quiet=True))
    assert all(path.parent == tmp_path / "cache" / "logs" for path in seen)


# ---------------------------------------------------------------- caches and disks

def test_cache_that_is_a_file_or_another_database(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "cache-file"
    a_file.write_text("x")
    code, _, err = run_cli(["report", "--cache", a_file], capsys, monkeypatch)
    assert code == 2 and "no response cache" in err
    other = tmp_path / "other" / "responses" / "responses.sqlite"
    other.parent.mkdir(parents=True)
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    before = other.read_bytes()
    data = write_jsonl(tmp_path / "d.json", [{"input_field": "Q?", "output_field": 1, "task_name": "t",
                                               "task_type": "multiple-choice", "metric": "accuracy"}])
    for args in (["report", "--cache", other.parents[1]],
                 ["run", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--data", data,
                  "--cache", other.parents[1]]):  # real data: the run gets as far as opening the cache
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and "not a shopping-mmlu response cache" in err, err
    assert other.read_bytes() == before  # none of our tables added to someone else's file


def test_read_only_commands_never_create_a_cache(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "typo"
    for args in (["report", "--cache", missing], ["rescore", "--model", "m", "--data", "d.json", "--cache", missing],
                 ["compare", "a", "b", "--cache", missing]):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and "no response cache" in err, err
    assert not missing.exists()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode()[:200]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_too_small_for_the_night_fails_in_seconds_and_buys_nothing(tmp_path, small_disk, capsys,
                                                                         monkeypatch):
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}", "output_field": 0, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"}
                                             for i in range(50)])
    with Stub() as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache",
                                  small_disk / "cache"], capsys, monkeypatch)
        assert sum(stub.seen.values()) == 0
    assert code == 1 and "free" in out and "Traceback" not in err


def test_a_disk_that_fills_during_the_run_stops_it_and_keeps_the_answers(tmp_path, small_disk, capsys, monkeypatch):
    from evaluator.runs import runner

    monkeypatch.setattr(runner, "MIN_FREE_BYTES", 0)
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i} " + "pad " * 500, "output_field": 0,
                                              "task_name": "t", "task_type": "multiple-choice",
                                              "metric": "accuracy"} for i in range(3000)])
    with Stub() as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache",
                                  small_disk / "cache", "--concurrency", "4"], capsys, monkeypatch)
        sent = sum(stub.seen.values())
    assert code == 1 and "full" in out and "Traceback" not in err, out[-2000:] + err
    assert sent < 3000  # it stopped buying
    db = sqlite3.connect(small_disk / "cache" / "responses" / "responses.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kept = db.execute("SELECT count(*) FROM answers").fetchone()[0]
    db.close()
    assert 0 < kept <= sent


def test_report_works_on_a_read_only_cache(tmp_path, small_disk, capsys, monkeypatch):
    from evaluator.runs import runner

    monkeypatch.setattr(runner, "MIN_FREE_BYTES", 0)
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}", "output_field": 0, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"}
                                             for i in range(10)]
                       + [{"input_field": "Extract", "output_field": "cotton", "task_name": "attribute_extraction",
                           "task_type": "generation", "metric": "rougel"}])  # scoring keeps pair scores on disk
    cache = small_disk / "cache"
    with Stub() as stub:
        code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", cache],
                               capsys, monkeypatch)
    assert code == 0, err
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True)
    if remounted.returncode != 0:
        pytest.skip("cannot remount read-only here")
    code, out, err = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)[0]["model"] == "m", err
    code, _, err = run_cli(["report", "--cache", cache, "--html", tmp_path / "r.html"], capsys, monkeypatch)
    assert code == 0 and (tmp_path / "r.html").is_file(), err  # its embeddings database is read-only too
    code, _, err = run_cli(["rescore", "--model", "m", "--data", data, "--cache", cache], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and "cannot be used" in err


def test_a_japanese_output_mecab_cannot_take_scores_zero_and_says_why(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "s.json", [
        {"input_field": "x", "output_field": "静音クリックのワイヤレスマウス", "task_name": "t", "task_type": "generation",
         "metric": "jp-bleu"},
        {"input_field": "y", "output_field": "静音クリックのワイヤレスマウス", "task_name": "t", "task_type": "generation",
         "metric": "jp-bleu"}])
    responses = write_jsonl(tmp_path / "r.json", [{"model_output": "静音" * 500_000}, {"model_output": "静音クリックのワイヤレスマウス"}])
    out = tmp_path / "o.json"
    code, printed, err = run_cli(["score", "--data", data, "--responses", responses, "--json", out], capsys,
                                 monkeypatch)
    assert code == 0 and "Traceback" not in err, err
    task = json.loads(out.read_text())["tasks"][0]
    assert task["score"] == pytest.approx(0.5) and "crashes on 1 row" in task["official"]


@pytest.mark.parametrize("content, expected", [
    (b'{"input_field": "\\ud800", "output_field": 1, "task_name": "t", "task_type": "multiple-choice", '
     b'"metric": "accuracy"}\n', "lone surrogate"),
    (b'{"input_field": "q", "output_field": [1, NaN], "task_name": "t", "task_type": "ranking", "metric": "ndcg"}\n',
     "finite relevance"),
    (b'{"input_field": "q", "output_field": [1, 1e400], "task_name": "t", "task_type": "ranking", '
     b'"metric": "ndcg"}\n', "finite relevance"),
    (b'{"input_field": "q", "output_field": [99999999999999999999999], "task_name": "t", "task_type": '
     b'"retrieval", "metric": "hit rate@3"}\n', "list of integers"),
    (b'{"input_field": "q", "output_field": 1' + b"0" * 5000 + b', "task_name": "t", "task_type": '
     b'"multiple-choice", "metric": "accuracy"}\n', "malformed JSON"),
    (b'{"input_field": "ok", "output_field": 1, "task_name": "t", "task_type": "multiple-choice", '
     b'"metric": "accuracy"}\n{"input_field": "\xff", "output_field": 1}\n', "s.json:2"),
])
def test_hostile_data_files_are_one_line(tmp_path, capsys, monkeypatch, content, expected):
    data = tmp_path / "s.json"
    data.write_bytes(content)
    code, _, err = run_cli(["data", "info", data], capsys, monkeypatch)
    assert code == 2 and expected in err and "Traceback" not in err, err


def test_csv_with_a_byte_order_mark_and_a_long_field_loads_as_pandas_would(tmp_path):
    from evaluator.data import loaders

    path = tmp_path / "multiple_choice" / "x_dataset.csv"
    path.parent.mkdir()
    long_question = "q" * 200_000
    path.write_bytes("\ufeffquestion,choices,answer\n".encode() +
                     f'{long_question},"[\'a\', \'b\', \'c\', \'d\']",2\n'.encode())
    questions = loaders.load(path).questions
    assert len(questions) == 1 and questions[0].input == long_question and questions[0].truth == 2


def test_credentials_inside_a_url_are_sent_as_auth_and_never_stored(tmp_path, capsys, monkeypatch):
    import base64

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}", "output_field": 0, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"} for i in range(5)])
    secret = "url-password-0123456789"
    with Stub() as stub:
        url = stub.base_url.replace("http://", f"http://alice:{secret}@")
        code, out, err = run_cli(["run", "--model", "m", "--base-url", url, "--data", data, "--cache",
                                  tmp_path / "c", "--output", tmp_path / "results"], capsys, monkeypatch)
        expected = "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
        assert stub.authorizations == {expected: 5}
    assert code == 0, out + err
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert secret.encode() not in written and secret not in out + err and "[red]" not in err


def test_a_key_echoed_by_a_401_never_leaves_the_process_on_any_run(tmp_path):
    """Issue 27.8: a server that answers 401 with our key in its message (the Authorization header, or OpenAI's
    shape with the key bare): on a rerun the breaker's reason carried the key to the terminal, the --json and
    the cache. Every reason we print or store is redacted, on every path, for a key whose variable's name says
    nothing; OpenAI's masked form is kept as it is."""
    key = "acme-live-Zq7Kp2Xw9Lm4Rt8Vn1Bc6Yd3Hf5Gj0Ss"
    masked = key[:6] + "*" * (len(key) - 10) + key[-4:]
    write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": "t",
                                       "task_type": "multiple-choice", "metric": "accuracy"} for i in range(40)])
    sent = {"n": 0}

    def plan(_digest: str, _attempt: int) -> str:  # four answers, then the key echoed in three shapes
        sent["n"] += 1
        return "ok" if sent["n"] <= 4 else ("echo_key", "echo_key_bare", "echo_key_masked")[sent["n"] % 3]

    outputs = []
    with Stub(plan) as stub:
        (tmp_path / "profiles.toml").write_text(
            f'[models.acme]\nprovider = "openai-compatible"\nmodel = "acme-1"\napi_base = "{stub.base_url}"\n'
            'api_key_env = "ACME_AUTH"\n', encoding="utf-8")
        env = {**ENV, "ACME_AUTH": key, "SHOPPING_MMLU_PROFILES": "profiles.toml"}
        env.pop("OPENAI_API_KEY", None)
        base = [sys.executable, "-m", "evaluator", "run", "--model", "acme", "--data", "d.json", "--cache", "cache",
                "--concurrency", "1"]
        for n, extra in enumerate([[], [], ["--no-preflight"]]):  # breaker; pre-flight on a rerun; breaker again
            done = subprocess.run([*base, "--json", f"run{n}.json", *extra], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # failed, with a reason
            outputs += [done.stdout, done.stderr]
        for command in (["report", "--cache", "cache"], ["report", "--cache", "cache", "--format", "json"]):
            done = subprocess.run([sys.executable, "-m", "evaluator", *command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            outputs += [done.stdout, done.stderr]
        assert set(stub.authorizations) == {f"Bearer {key}"}
    reasons = [json.loads((tmp_path / f"run{n}.json").read_text())["reason"] for n in range(3)]
    assert all("401" in r for r in reasons), reasons
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "profiles.toml")
    shown = "".join(outputs)
    for piece in (key, key[:16], key[-16:], key[8:24]):  # whole, or any piece a slice could leave
        assert piece.encode() not in written and piece not in shown, piece
    db = ResponseCache(tmp_path / "cache" / "responses")
    messages = [m for (m,) in db.db.execute("SELECT message FROM errors").fetchall()]
    db.close()
    assert any(masked in m for m in messages) and any("Bearer [redacted]" in m for m in messages)


def test_redact_finds_a_key_in_every_form_a_server_or_a_slice_leaves():
    from evaluator.client.batch.openai_batch import _result
    from evaluator.redact import MARK, redact, register

    key = "Bearer acme/test-Zq7Kp2Xw9Lm4Rt8Vn1Bc6Yd3"
    register(key)  # a variable that held the header's whole value
    bare = key.removeprefix("Bearer ")
    masked = bare[:6] + "***" + bare[-4:]
    for text in (f"invalid {key}", f"Incorrect API key provided: {bare}.", '{"m": "%s"}' % bare.replace("/", "\\/"),
                 ("x" * 480 + f" {bare} more")[:500], (f"{bare} and more")[-len(bare) + 5:]):
        assert bare[5:20] not in redact(text) and MARK in redact(text), text
    assert redact(f"Incorrect API key provided: {masked}.") == f"Incorrect API key provided: {masked}."
    line = json.dumps({"custom_id": "k", "error": {"message": "y" * 480 + f" {bare}"}}).encode()
    [(_, reply)] = list(_result(line, chat=True))
    assert bare[:12] not in redact(reply.message)  # a batch error cut at 500 characters mid-key
