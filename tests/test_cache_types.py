"""An old or hostile cache: SQLite types values, not columns, so any cell may hold a BLOB, text or a huge integer.
Every reader types what it reads at the boundary (evaluator/cache/responses.py): a wrong-typed value is missing,
a row without what it cannot go without is left out, an unreadable profile is one line naming its table and row
(exit 2); never a traceback (red-team finding 9)."""

from __future__ import annotations

import math
import shutil
import sqlite3

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl

MUTATIONS = {
    "text_blob": "UPDATE answers SET text = x'fffe00' WHERE rowid IN (SELECT rowid FROM answers LIMIT 5)",
    "tokens_text": "UPDATE answers SET prompt_tokens = 'many', completion_tokens = x'00', latency_s = 'slow'",
    "tokens_huge": "UPDATE answers SET prompt_tokens = 9223372036854775807, completion_tokens = 9223372036854775807",
    "finish_blob": "UPDATE answers SET finish_reason = x'ff', source = x'00', logprobs = x'01'",
    "created_text": "UPDATE answers SET created_at = 'yesterday'",
    "errors_blob": "UPDATE errors SET kind = x'00', status = 'x', message = x'01', created_at = 'y'",
    "profile_garbage": "UPDATE models SET profile = 'not json'",
    "profile_list": "UPDATE models SET profile = '[1, 2]'",
    "run_score_text": "UPDATE task_scores SET score = 'high', prompt_tokens = x'00'",
    "run_counts": "UPDATE runs SET questions = -5, answered = 'x'",
    "run_cost_text": "UPDATE runs SET cost = 'dear', created_at = x'00'",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache with answers (and log-probabilities), an error row, a profile and a saved run."""
    import _pytest.monkeypatch

    folder = tmp_path_factory.mktemp("typed")
    rows = [{"input_field": f"Question {i}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": i % 4,
             "task_name": f"t{i % 2}", "task_type": "multiple-choice", "metric": "accuracy"} for i in range(12)]
    data = write_jsonl(folder / "d.json", rows)
    patch = _pytest.monkeypatch.MonkeyPatch()
    try:
        with Stub(plan=lambda digest, attempt: "400" if digest.startswith(("0", "1", "2")) else "ok",
                  logprobs=lambda body: {"1": math.log(0.6), "2": math.log(0.3)}) as stub:
            import sys

            from evaluator.cli import main

            patch.setattr(sys, "argv", ["shopping-mmlu", "run", "--model", "m", "--base-url", stub.base_url,
                                        "--data", str(data), "--cache", str(folder / "c"), "--choice-probs",
                                        "--stop-error-share", "1"])
            with pytest.raises(SystemExit):
                main()
    finally:
        patch.undo()
    db = sqlite3.connect(folder / "c" / "responses" / "responses.sqlite")
    counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("answers", "errors", "runs")]
    db.close()
    assert all(counts), counts
    return data, folder / "c"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_wrong_typed_cache_value_is_missing_or_one_line_never_a_traceback(cache, tmp_path, capsys, monkeypatch,
                                                                          mutation):
    from evaluator import load_results

    data, base = cache
    folder = tmp_path / "c"
    shutil.copytree(base, folder)
    db = sqlite3.connect(folder / "responses" / "responses.sqlite")
    db.execute(MUTATIONS[mutation])
    db.commit()
    db.close()
    load_results(folder)
    for args in (["report", "--cache", folder, "--format", "json"],
                 ["report", "--cache", folder, "--html", tmp_path / "r.html"],  # before rescore saves the run anew
                 ["rescore", "--model", "m", "--data", data, "--cache", folder, "--choice-probs",
                  "--allow-incomplete"]):
        code, out, err = run_cli(args, capsys, monkeypatch)
        assert code in (0, 1, 3) or (code == 2 and len(err.strip().splitlines()) == 1), (args, code, out, err)
        if code == 2:
            assert "models, row" in err, err
