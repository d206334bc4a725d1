"""Only regular files are read: a FIFO (whose plain open waits for a writer forever) or a link to /dev/zero or
/dev/urandom (endless) in a results folder, a night, or given as --data or --shot-pool is skipped and named,
or one line and exit 2; never a hang. The timeout turns a hang on older code into a failure."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl

pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")]


def rows(n: int = 8) -> list[dict]:
    return [{"input_field": f"Question {i}\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": i % 4,
             "task_name": f"t{i % 2}", "task_type": "multiple-choice", "metric": "accuracy", "track": "concept"}
            for i in range(n)]


def test_load_results_skips_and_names_what_is_not_a_regular_file(tmp_path, capsys, monkeypatch):
    from evaluator import load_results

    data = write_jsonl(tmp_path / "d.jsonl", rows())
    night = tmp_path / "night"
    with Stub() as stub:
        for model in ("a", "b", "c", "d", "e"):
            code, out, err = run_cli(["run", "--model", model, "--base-url", stub.base_url, "--data", data,
                                      "--cache", tmp_path / "cache", "--output", night / model], capsys, monkeypatch)
            assert code == 0, out + err
    (night / "a" / "samples.jsonl").unlink()
    os.mkfifo(night / "a" / "samples.jsonl")
    for model, device in (("b", "/dev/zero"), ("c", "/dev/urandom")):
        (night / model / "samples.jsonl").unlink()
        (night / model / "samples.jsonl").symlink_to(device)
    (night / "d" / "results.json").unlink()
    os.mkfifo(night / "d" / "results.json")
    doc = json.loads((night / "e" / "results.json").read_text(encoding="utf-8"))
    doc["model"] = {"name": ["x"]}
    (night / "e" / "results.json").write_text(json.dumps(doc), encoding="utf-8")

    loaded = load_results(night)
    assert sorted(loaded.runs["source"].str.split("/").list.last()) == ["a", "b", "c", "e"]
    assert loaded.runs.filter(loaded.runs["source"].str.ends_with("/e"))["model"].to_list() == [None]
    assert loaded.samples["model"].to_list() == [None] * 8  # e's samples, under its unreadable name
    skipped = "\n".join(loaded.skipped)
    assert f"{night / 'a' / 'samples.jsonl'}: not a regular file: a named pipe (FIFO)" in skipped
    assert f"{night / 'b' / 'samples.jsonl'}: not a regular file: a device" in skipped
    assert f"{night / 'c' / 'samples.jsonl'}: not a regular file: a device" in skipped
    assert f"{night / 'd' / 'results.json'}: not a regular file: a named pipe (FIFO)" in skipped
    one = load_results(night / "a")
    assert one.runs.height == 1 and one.samples.height == 0 and "named pipe" in one.skipped[0]
    os.mkfifo(night / "summary.json")  # where a night keeps its failed models
    assert f"{night / 'summary.json'}: not a regular file: a named pipe (FIFO)" in load_results(night).skipped


def test_a_fifo_as_data_or_shot_pool_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    data = write_jsonl(tmp_path / "real.jsonl", rows())
    (tmp_path / "folder" / "skills").mkdir(parents=True)
    os.mkfifo(tmp_path / "folder" / "skills" / "concept.json")
    with Stub() as stub:
        for args in (["--data", fifo], ["--data", tmp_path / "folder"],
                     ["--data", data, "--shots", "1", "--shot-pool", fifo]):
            code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--cache",
                                      tmp_path / "cache", *args], capsys, monkeypatch)
            assert code == 2 and "not a regular file: a named pipe (FIFO)" in err, (args, out, err)
            assert len(err.strip().splitlines()) == 1, err
        assert not stub.seen  # refused before any request
