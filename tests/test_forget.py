"""`report --model/--exclude` and `forget`, typed as a person types them: subprocesses run from a scratch
working folder of their own, with relative paths, against the loopback stub and the real SQLite cache."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import write_jsonl


def shopping_mmlu(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A working folder with a cache of three models answered by the stub: alpha, its typo alpah, and beta
    (official prompt and 1-shot)."""
    folder = tmp_path_factory.mktemp("user")
    write_jsonl(folder / "mc.json", [{"input_field": f"Q{i}?\n0. a\n1. b", "output_field": i % 2,
                                      "task_name": "t1" if i < 3 else "t2", "task_type": "multiple-choice",
                                      "metric": "accuracy"} for i in range(6)])
    with Stub() as stub:
        for model, extra in (("alpha", []), ("alpah", []), ("beta", []), ("beta", ["--shots", "1"])):
            done = shopping_mmlu(folder, "run", "--model", model, "--base-url", stub.base_url, "--data", "mc.json",
                                 "--cache", "cache", *extra)
            assert done.returncode == 0, done.stderr
    return folder


def said_of(done: subprocess.CompletedProcess) -> str:
    return " ".join((done.stdout + done.stderr).split())


def models_in(csv_text: str) -> list[str]:
    header, *rows = csv_text.splitlines()
    column = header.split(",").index("model")
    return sorted(row.split(",")[column] for row in rows)


def test_report_shows_the_models_its_patterns_choose(night):
    done = shopping_mmlu(night, "report", "--cache", "cache", "--format", "csv", "--model", "AL*")
    assert done.returncode == 0, done.stderr
    assert models_in(done.stdout) == ["alpah", "alpha"]  # glob, case-blind
    done = shopping_mmlu(night, "report", "--cache", "cache", "--format", "csv", "--model", "al*",
                         "--model", "beta", "--exclude", "alpa?")
    assert models_in(done.stdout) == ["alpha", "beta", "beta"]
    done = shopping_mmlu(night, "report", "--cache", "cache", "--exclude", "al*", "--html", "out/report.html")
    assert done.returncode == 0, done.stderr
    page = (night / "out" / "report.html").read_text(encoding="utf-8")
    assert "beta" in page and "alpha" not in page and "alpah" not in page
    assert "alpha" not in done.stdout and "beta" in done.stdout


def test_a_pattern_matching_no_saved_model_is_one_line_naming_close_ones(night):
    done = shopping_mmlu(night, "report", "--cache", "cache", "--model", "alpa")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "'--model'" in done.stderr
    assert "(close: alpha, alpah)" in done.stderr or "(close: alpah, alpha)" in done.stderr
    done = shopping_mmlu(night, "report", "--cache", "cache", "--exclude", "gamma*")
    assert done.returncode == 2 and "'--exclude'" in done.stderr and done.stderr.count("\n") == 1


def test_forget_takes_a_run_out_of_every_view_keeps_its_answers_and_undo_brings_it_back(night):
    def answers() -> int:
        with sqlite3.connect(night / "cache" / "responses" / "responses.sqlite") as db:
            return db.execute("SELECT count(*) FROM answers").fetchone()[0]

    before = answers()
    done = shopping_mmlu(night, "forget", "alpah", "--cache", "cache")
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "forgot 'alpah' (every variant): 1 run(s) (mc.json skill-wise)" in said
    assert "shopping-mmlu forget --undo alpah" in said
    try:
        board = shopping_mmlu(night, "report", "--cache", "cache", "--format", "csv")
        assert models_in(board.stdout) == ["alpha", "beta", "beta"]
        assert "not shown: alpah (forgotten" in board.stderr
        shopping_mmlu(night, "report", "--cache", "cache", "--html", "r.html")
        page = (night / "r.html").read_text(encoding="utf-8")
        assert page.count("alpah") == 1 and "alpah: not shown, forgotten (every run;" in page  # the page's note
        compared = shopping_mmlu(night, "compare", "alpah", "alpha", "--cache", "cache")
        assert compared.returncode == 2 and "'alpah' is forgotten" in compared.stderr
        analysed = shopping_mmlu(night, "analyze", "--cache", "cache", "--protocol", "skill", "--variant", "",
                                 "--output", "analysis")
        assert analysed.returncode == 0, analysed.stderr
        assert "left out: alpah (forgotten: shopping-mmlu forget --undo puts it back)" in said_of(analysed)
        assert "alpah" not in (night / "analysis" / "analysis.md").read_text().split("Left out:")[0]
        listed = shopping_mmlu(night, "forget", "--cache", "cache")
        assert listed.stdout.strip() == "forgotten: alpah (every variant)"
        from evaluator.notebook import load_results

        loaded = load_results(night / "cache")
        assert sorted(set(loaded.runs["model"].to_list())) == ["alpha", "beta"]
        assert any(line.startswith("alpah (every run): forgotten") for line in loaded.skipped)
        assert answers() == before
    finally:
        undone = shopping_mmlu(night, "forget", "--undo", "alpah", "--cache", "cache")
    assert undone.returncode == 0 and "'alpah' (every variant) is back" in undone.stdout
    assert models_in(shopping_mmlu(night, "report", "--cache", "cache", "--format", "csv").stdout) == \
        ["alpah", "alpha", "beta", "beta"]


def test_forget_one_variant_leaves_the_others(night):
    done = shopping_mmlu(night, "forget", "beta", "--variant", "1-shot", "--cache", "cache")
    assert done.returncode == 0, done.stderr
    try:
        board = shopping_mmlu(night, "report", "--cache", "cache", "--format", "json")
        rows = [(r["model"], r["variant"]) for r in json.loads(board.stdout)]
        assert ("beta", "") in rows and ("beta", "1-shot") not in rows
    finally:
        undone = shopping_mmlu(night, "forget", "--undo", "beta", "--variant", "1-shot", "--cache", "cache")
        assert undone.returncode == 0


def test_forget_refuses_in_one_line_what_it_cannot_find(night):
    unknown = shopping_mmlu(night, "forget", "alpah-typo", "--cache", "cache")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "no saved run of model 'alpah-typo' (close: alpah, alpha)" in unknown.stderr
    variant = shopping_mmlu(night, "forget", "beta", "--variant", "9-shot", "--cache", "cache")
    assert variant.returncode == 2 and "its variants: '', '1-shot'" in variant.stderr
    undo = shopping_mmlu(night, "forget", "--undo", "alpha", "--cache", "cache")
    assert undo.returncode == 2 and "'alpha' is not forgotten (nothing is)" in undo.stderr
    nowhere = shopping_mmlu(night, "forget", "alpha", "--cache", "elsewhere")
    assert nowhere.returncode == 2 and "no response cache here" in nowhere.stderr
    assert not (night / "elsewhere").exists()


def test_a_cache_from_before_forget_is_read_as_it_is(night, tmp_path):
    """A cache written before `forget` existed has no table for it: reading commands show every run, and do
    not change the file."""
    import shutil

    shutil.copytree(night / "cache", tmp_path / "cache")
    with sqlite3.connect(tmp_path / "cache" / "responses" / "responses.sqlite") as db:
        db.execute("DROP TABLE forgotten")
    done = shopping_mmlu(tmp_path, "report", "--cache", "cache", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert models_in(done.stdout) == ["alpah", "alpha", "beta", "beta"]
    with sqlite3.connect(tmp_path / "cache" / "responses" / "responses.sqlite") as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'forgotten'").fetchone()
