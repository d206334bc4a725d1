"""A results folder tells the truth about its answers: what answered them and when (also when every answer
came from the cache), when they were scored, why a model is incomplete, and digests a user can check with
`sha256sum`."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from benchmarks.stubs.openai_stub import Stub
from builders import old_cache, run_cli, write_jsonl
from evaluator.reports.results import FORMAT_VERSION


def data(tmp_path, n: int = 12):
    return write_jsonl(tmp_path / "in" / "d.json", [
        {"input_field": f"Question {i}\n0. a\n1. b\n2. c\n3. d", "output_field": i % 4, "task_name": f"t{i % 3}",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(n)])


def run(tmp_path, capsys, monkeypatch, stub, output, *extra):
    code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", tmp_path / "in" / "d.json",
                              "--cache", tmp_path / "c", "--output", output, *extra], capsys, monkeypatch)
    return code, out, err, (json.loads((output / "results.json").read_text()) if (output / "results.json").exists()
                            else None)


def test_a_run_scored_from_the_cache_says_what_answered_it_and_when(tmp_path, capsys, monkeypatch):
    path = data(tmp_path)
    with Stub(models=["m"]) as stub:
        code, _, err, first = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "first")
        assert code == 0, err
        code, _, err, again = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "again")
        assert code == 0, err
    assert first["format_version"] == FORMAT_VERSION
    session = first["answered"]["by"]
    assert len(session) == 1 and session[0]["sent"] == 12 and session[0]["served_models"] == ["m"]
    assert session[0]["server"] == first["server"]["kind"] and session[0]["shopping_mmlu"]
    assert first["server"]["sent_this_run"] == 12 and first["server"]["note"] is None
    # the second run sent nothing: its own server facts are empty, and it says so and names the first run
    assert again["server"]["sent_this_run"] == 0 and again["server"]["served_models"] is None
    assert "answered.by" in again["server"]["note"]
    assert again["answered"]["by"] == session
    assert again["answered"]["answers"] == 12
    assert session[0]["started_at"] <= again["answered"]["first_at"] <= again["answered"]["last_at"]
    assert again["answered"]["last_at"] <= session[0]["finished_at"] <= again["scored"]["at"]
    assert again["times"]["started_at"] >= first["times"]["started_at"]
    # the rescore (cache only) says the same
    code, _, err = run_cli(["rescore", "--model", "m", "--data", path, "--cache", tmp_path / "c", "--output",
                            tmp_path / "rescored"], capsys, monkeypatch)
    assert code == 0, err
    rescored = json.loads((tmp_path / "rescored" / "results.json").read_text())
    assert rescored["answered"]["by"] == session and rescored["server"]["sent_this_run"] == 0


def test_each_data_file_has_its_own_sha256_beside_the_dataset_digest(tmp_path, capsys, monkeypatch):
    path = data(tmp_path)
    with Stub() as stub:
        code, _, err, doc = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "r")
    assert code == 0, err
    files = doc["data"]["files"]
    assert files == [{"path": str(path), "questions": 12, "bytes": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    # the dataset digest covers names and sizes too: named for what it is, not mistaken for the file's
    assert doc["data"]["dataset_sha256"] != files[0]["sha256"] and "sha256" not in doc["data"]
    assert "not the sha256sum" in doc["data"]["dataset_sha256_of"]


def test_an_incomplete_model_says_why(tmp_path, capsys, monkeypatch):
    data(tmp_path)
    def plan(digest: str, attempt: int) -> str:  # about a third are refused (400), as a content filter does
        return "400" if int(digest[:8], 16) % 3 == 0 else "ok"

    with Stub(plan=plan) as stub:
        code, _, err, doc = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "r", "--allow-incomplete")
    assert code == 0, err
    assert doc["status"] == "incomplete" and doc["counts"]["errors"] > 0
    assert doc["reason"].startswith(f"{doc['counts']['errors']} question(s) have no answer ("), doc["reason"]
    assert "400" in doc["reason"]


def test_old_and_garbled_run_records_still_work_and_gain_the_answering_session(tmp_path, capsys, monkeypatch):
    """An old cache (migrated: no sessions) and a run record whose details a hand or a bug garbled: the run
    goes on, and the next record carries this run's session."""
    old_cache(tmp_path / "c" / "responses")
    data(tmp_path)
    with Stub() as stub:
        code, _, err, doc = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "r")
        assert code == 0, err
        assert len(doc["answered"]["by"]) == 1
        db = sqlite3.connect(tmp_path / "c" / "responses" / "responses.sqlite")
        for garbled in ("not json", '{"answered_by": "x"}', '[1, 2]', '{"answered_by": [1, "a", null]}',
                        "[" * 100_000):
            with db:
                db.execute("UPDATE runs SET details = ? WHERE model = 'm'", (garbled,))
            code, _, err, doc = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "r", "--refresh")
            assert code == 0, (garbled[:20], err)
            assert len(doc["answered"]["by"]) == 1 and doc["answered"]["by"][0]["sent"] == 12
        details = json.loads(db.execute("SELECT details FROM runs WHERE model = 'm'").fetchone()[0])
        db.close()
    assert len(details["answered_by"]) == 1 and "timings" in details
