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


# ---------------------------------------------------------------- nights: a rerun keeps the earlier ones

def suite_file(tmp_path, stub) -> object:
    path = data(tmp_path)
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\ndata = "{path}"\n[models]\nm = {{ provider = "openai-compatible", model = "m", '
                     f'api_base = "{stub.base_url}" }}\n', encoding="utf-8")
    return suite


def night(tmp_path, capsys, monkeypatch, suite, output) -> tuple[int, str]:
    code, out, err = run_cli(["suite", suite, "--cache", tmp_path / "c", "--output", output], capsys, monkeypatch)
    return code, out + err


def test_each_night_keeps_its_own_folder_and_latest_points_at_the_newest(tmp_path, capsys, monkeypatch):
    from evaluator.paths import night_of

    home = tmp_path / "nights"
    with Stub() as stub:
        suite = suite_file(tmp_path, stub)
        code, out = night(tmp_path, capsys, monkeypatch, suite, home)
        assert code == 0, out
        first = night_of(home)
        summary = (first / "summary.json").read_bytes()
        code, out = night(tmp_path, capsys, monkeypatch, suite, home)
        assert code == 0, out
    nights = sorted(p for p in home.iterdir() if p.name != "latest")
    assert len(nights) == 2 and nights[0] == first and (first / "summary.json").read_bytes() == summary
    assert (home / "latest").is_symlink() and night_of(home) == nights[1] != first
    assert (home / "latest" / "models" / "m" / "results.json").is_file()
    assert json.loads((first / "models" / "m" / "results.json").read_text())["answered"]["by"]
    assert night_of(first) == first  # a night's own folder is read as itself
    assert str(nights[1]) in "".join(out.split())  # the terminal may fold the path


def test_an_older_flat_suite_folder_becomes_a_night_of_its_own(tmp_path, capsys, monkeypatch):
    """A suite folder written flat by an older version: moved, byte for byte, into a night named by its
    summary's start time, beside the new night."""
    home = tmp_path / "nights"
    with Stub() as stub:
        suite = suite_file(tmp_path, stub)
        assert night(tmp_path, capsys, monkeypatch, suite, home)[0] == 0
        made = (home / "latest").resolve()
        (home / "latest").unlink()
        for item in made.iterdir():  # as an older version left it
            item.rename(home / item.name)
        made.rmdir()
        summary = json.loads((home / "summary.json").read_text())
        summary["started_at"] = "2024-03-01T22:00:00+00:00"
        (home / "summary.json").write_text(json.dumps(summary))
        before = {p.relative_to(home): p.read_bytes() for p in home.rglob("*") if p.is_file()}
        code, out = night(tmp_path, capsys, monkeypatch, suite, home)
        assert code == 0, out
    import datetime
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(
        datetime.datetime(2024, 3, 1, 22, tzinfo=datetime.timezone.utc).timestamp()))
    assert {p.relative_to(home / stamp): p.read_bytes() for p in (home / stamp).rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in home.iterdir()) == sorted([stamp, (home / "latest").resolve().name, "latest"])


def test_a_suite_folder_holding_anything_else_is_refused_untouched(tmp_path, capsys, monkeypatch):
    home = tmp_path / "nights"
    with Stub() as stub:
        suite = suite_file(tmp_path, stub)
        assert night(tmp_path, capsys, monkeypatch, suite, home)[0] == 0
        mine = (home / "latest").resolve()
        for make in (lambda: (home / "20240101-000000").mkdir() or (home / "20240101-000000" / "thesis.tex")
                     .write_text("mine"),  # a folder named like a night, holding a user's file
                     lambda: (mine / "notes.txt").write_text("mine"),  # a user's file inside a night
                     lambda: (home / "notes.txt").write_text("mine")):
            make()
            before = sorted(str(p) for p in home.rglob("*"))
            code, out = night(tmp_path, capsys, monkeypatch, suite, home)
            assert code == 2 and "no suite wrote" in out and "Traceback" not in out, out
            assert sorted(str(p) for p in home.rglob("*")) == before
            for stray in (home / "20240101-000000", mine / "notes.txt", home / "notes.txt"):
                if stray.is_dir():
                    (stray / "thesis.tex").unlink()
                    stray.rmdir()
                elif stray.exists():
                    stray.unlink()
        (home / "latest").unlink()
        (home / "latest").symlink_to(tmp_path)  # a link out of the folder: not ours
        code, out = night(tmp_path, capsys, monkeypatch, suite, home)
        assert code == 2 and "no suite wrote" in out, out


def test_where_links_fail_a_latest_file_names_the_newest_night(tmp_path, capsys, monkeypatch):
    import os

    from evaluator.paths import night_of

    def no_links(*_args, **_kwargs):
        raise OSError(1, "Operation not permitted")

    home = tmp_path / "nights"
    with Stub() as stub:
        suite = suite_file(tmp_path, stub)
        with monkeypatch.context() as patch:
            patch.setattr(os, "symlink", no_links)
            assert night(tmp_path, capsys, monkeypatch, suite, home)[0] == 0
            assert not (home / "latest").exists()
            first = home / (home / "LATEST").read_text().strip()
            assert night_of(home) == first and (first / "summary.json").is_file()
        assert night(tmp_path, capsys, monkeypatch, suite, home)[0] == 0  # links work again: both agree
    newest = (home / "latest").resolve()
    assert newest != first and (home / "LATEST").read_text().strip() == newest.name == night_of(home).name
    for garbage in ("../../etc", "x" * 10_000, "20240101-000000\n../x", ""):  # a hand-edited LATEST
        (home / "latest").unlink(missing_ok=True)
        (home / "LATEST").write_text(garbage)
        assert night_of(home) == home


def test_an_incomplete_model_whose_answers_could_not_be_scored_says_why(tmp_path, capsys, monkeypatch):
    """The multilingual embedding model cannot be had offline: its rows are not scored, and the reason
    names them and why."""
    write_jsonl(tmp_path / "in" / "d.json", [
        {"input_field": "Traduire: towel", "output_field": "serviette", "task_name": "title_translation_multilingual",
         "task_type": "generation", "metric": "multilingual-sent-transformer"},
        {"input_field": "Pick\n0. a\n1. b\n2. c\n3. d", "output_field": 1, "task_name": "mc",
         "task_type": "multiple-choice", "metric": "accuracy"}])
    with Stub() as stub:
        code, _, err, doc = run(tmp_path, capsys, monkeypatch, stub, tmp_path / "r", "--allow-incomplete",
                                "--multilingual-model", tmp_path / "no-such-model")
    assert code == 0, err
    assert doc["status"] == "incomplete" and doc["counts"]["unscored"] == 1 and doc["counts"]["errors"] == 0
    assert doc["reason"].startswith("1 answer(s) not scored: ") and doc["reason"].endswith("(1)"), doc["reason"]
    assert "multilingual-sent-transformer model" in doc["reason"]
