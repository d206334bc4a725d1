"""`from evaluator import load_results, rescore`: the README's example, run as written against a loopback
night, gives the same numbers as the night's own files; hostile results files are skipped and named."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl
from evaluator.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.split(r"(?m)^#+ In a notebook", text, maxsplit=1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def night(tmp_path, capsys, monkeypatch):
    """A two-model night named 'nightly' on a loopback server, in the cache's default suite folder."""
    data = write_jsonl(tmp_path / "dev.jsonl", [
        {"input_field": f"Question {i}\n0. a\n1. b\n2. c\n3. d", "output_field": i % 4, "task_name": f"t{i % 3}",
         "task_type": "multiple-choice", "metric": "accuracy", "track": f"s{i % 2}"} for i in range(12)])
    cache = tmp_path / "cache"
    with Stub(answers=lambda body: body["prompt"][-2] if "prompt" in body else "1") as stub:
        suite = tmp_path / "s.toml"
        suite.write_text(f'[suite]\nname = "nightly"\ndata = "{data}"\n[models]\n' + "".join(
            f'"{m}" = {{ provider = "openai-compatible", model = "{m}", api_base = "{stub.base_url}" }}\n'
            for m in ("my-model", "other-model")), encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", cache], capsys, monkeypatch)
    assert code == 0, out + err
    return data, cache


def test_the_readme_example_runs_and_agrees_with_the_nights_files(night):
    data, cache = night
    code = readme_example().replace("~/.cache/shopping-mmlu", str(cache)).replace("data/dev.jsonl", str(data))
    printed = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102: our own README's example
    assert "my-model" in printed.getvalue() and "other-model" in printed.getvalue()
    runs = scope["night"].runs
    assert sorted(runs["model"]) == ["my-model", "other-model"] and set(runs["status"]) == {"complete"}
    assert runs["answered_last_at"].null_count() == 0 and runs["scored_at"].null_count() == 0
    board = json.loads((cache / "suites" / "nightly" / "latest" / "leaderboard.json").read_text())
    for row in board:
        mine = runs.filter(runs["model"] == row["model"])
        assert mine["overall"][0] == row["overall"]
    assert scope["board"].height == 2 and scope["board"].width == 3  # model + two skills
    assert scope["night"].samples.height == 24 and scope["night"].skipped == []
    assert scope["wrong"].height == scope["night"].samples.filter(scope["night"].samples["score"] < 1).height
    assert sorted(scope["saved"].runs["model"]) == ["my-model", "other-model"]
    assert scope["saved"].tasks.height == scope["night"].tasks.height == 12  # 2 models × 6 (skill, task)
    again = scope["again"]
    assert again.runs["overall"][0] == runs.filter(runs["model"] == "my-model")["overall"][0]
    assert again.samples.height == 12 and again.tasks["score"].to_list() == scope["night"].tasks.filter(
        scope["night"].tasks["model"] == "my-model")["score"].to_list()


def test_a_specific_night_and_a_single_results_folder_are_read_too(night, capsys, monkeypatch):
    from evaluator import load_results

    data, cache = night
    home = cache / "suites" / "nightly"
    first = (home / "latest").resolve()
    code, out, err = run_cli(["suite", home.parent.parent.parent / "s.toml", "--cache", cache], capsys, monkeypatch)
    assert code == 0, out + err
    assert (home / "latest").resolve() != first
    assert load_results(first).runs["source"].to_list() == [str(first / "models" / m)
                                                           for m in ("my-model", "other-model")]
    assert load_results(home).runs["source"][0].startswith(str((home / "latest").resolve()))
    one = load_results(first / "models" / "my-model")
    assert one.runs.height == 1 and one.samples.height == 12 and one.tasks.height == 6


def test_hostile_results_files_are_skipped_and_named_never_raised(night):
    from evaluator import load_results

    data, cache = night
    models = (cache / "suites" / "nightly" / "latest" / "models").resolve()
    good = json.loads((models / "my-model" / "results.json").read_text())
    (models / "other-model" / "results.json").write_text("{" * 200_000)  # deeper than any parser goes
    with (models / "my-model" / "samples.jsonl").open("a") as handle:
        handle.write("not json\n[1, 2]\n" + "x" * (17 * 2**20) + "\n")
    wrong = dict(good, counts={"questions": 10**40, "answered": "many", "errors": True}, reason=["x"],
                 model={"name": 7}, scores={"overall": {"score": "1"}, "skills": [], "tasks": [1, "a", {"score": 1e400}]})
    write_jsonl(models.parent / "stray" / "x.jsonl", [])  # not a results folder: ignored
    (models / "third").mkdir()
    (models / "third" / "results.json").write_text(json.dumps(wrong).replace("1e+400", "1e400"))
    loaded = load_results(models.parent)
    assert loaded.runs.height == 2  # my-model and the garbled third
    third = loaded.runs.filter(loaded.runs["source"].str.ends_with("third")).row(0, named=True)
    assert third["model"] is None and third["questions"] is None and third["answered"] is None
    assert third["errors"] is None and third["reason"] is None and third["overall"] is None
    assert any("other-model" in s for s in loaded.skipped)
    assert any("3 line(s) unreadable" in s for s in loaded.skipped), loaded.skipped
    assert loaded.samples.filter(loaded.samples["model"] == "my-model").height == 12
    # the old key: a format 1 file named the dataset digest `data.sha256`
    old = dict(good, format_version=1, data={**{k: v for k, v in good["data"].items() if k != "dataset_sha256"},
                                             "sha256": good["data"]["dataset_sha256"]})
    (models / "third" / "results.json").write_text(json.dumps(old))
    assert load_results(models / "third").runs["dataset_sha256"][0] == good["data"]["dataset_sha256"]
    with pytest.raises(InputError):
        load_results(models.parent / "stray")


def test_a_model_that_left_no_results_folder_is_a_failed_run_with_its_reason(night):
    """A model whose server never started has no results folder: the night's summary names it."""
    from evaluator import load_results

    _, cache = night
    home = cache / "suites" / "nightly"
    summary_path = home / "latest" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["failed"] = [{"model": "ghost", "reason": "the vLLM server did not start: out of memory"},
                         {"model": "my-model", "reason": "listed twice"}, "garbage", {"model": 7}]
    summary_path.write_text(json.dumps(summary))
    runs = load_results(home).runs
    ghost = runs.filter(runs["model"] == "ghost").row(0, named=True)
    assert ghost["status"] == "failed" and ghost["reason"].startswith("the vLLM server did not start")
    assert runs.filter(runs["model"] == "my-model")["status"].to_list() == ["complete"]  # its folder wins
    assert runs.height == 3  # my-model, other-model and ghost: entries without a name are left out
    summary_path.write_text("[" * 100_000)
    loaded = load_results(home)
    assert loaded.runs.height == 2 and any("summary.json" in s for s in loaded.skipped)


def test_frames_carry_tags_errors_short_skills_prompts_and_native_truths(night, tmp_path):
    """What a notebook needs beside the scores: family/params_b/base and standard errors per run, skills by
    their short names with the track beside, each sample's prompt, truths as the data has them, pandas."""
    from evaluator import load_results, rescore

    data, cache = night
    night_frames = load_results(cache / "suites" / "nightly")
    runs = night_frames.runs
    assert {"family", "params_b", "base", "overall_stderr"} <= set(runs.columns)
    board = json.loads((cache / "suites" / "nightly" / "latest" / "leaderboard.json").read_text())
    for row in board:
        assert runs.filter(runs["model"] == row["model"])["overall_stderr"][0] == row["overall_stderr"]
    skills = night_frames.skills
    assert set(skills["track"]) == {"s0", "s1"} and skills["stderr"].null_count() == 0
    assert night_frames.tasks["stderr"].null_count() == 0 and "track" in night_frames.tasks.columns
    samples = night_frames.samples
    assert samples["prompt"].null_count() == 0 and samples["prompt"][0].startswith("You are a helpful")
    truths = sorted({t for t in samples["truth"].to_list()})
    assert truths == [0, 1, 2, 3]  # ints, as the data file has them, not JSON text
    assert runs.to_pandas().shape[0] == 2 and samples.to_pandas().shape[0] == 24
    saved = load_results(cache)
    assert set(saved.skills["track"]) == {"s0", "s1"} and saved.runs["overall_stderr"].null_count() == 0
    assert saved.tasks["stderr"].to_list() == night_frames.tasks.filter(
        night_frames.tasks["model"].is_in(saved.runs["model"].implode()))["stderr"].to_list()
    with pytest.raises(InputError, match="my-model"):
        rescore("my-modle", data, cache=cache)


def test_short_skill_names_for_the_official_tracks():
    from evaluator.notebook import _short

    row = _short({"skill": "amazon-kdd-cup-24-understanding-shopping-concepts", "task": "t"})
    assert row["skill"] == "concept" and row["track"] == "amazon-kdd-cup-24-understanding-shopping-concepts"


def test_a_lone_surrogate_anywhere_in_a_results_file_reads_as_text_and_a_bad_name_is_an_input_error(night):
    """Red-team finding 7: "\\ud800" in model.name, profile.family, answered.first_at... made Polars raise
    UnicodeEncodeError and lose every run; rescore of such a name (or of None) raised instead of InputError."""
    from evaluator import load_results, rescore

    data, cache = night
    folder = (cache / "suites" / "nightly" / "latest" / "models" / "my-model").resolve()

    def garble(value):
        if isinstance(value, dict):
            return {k: garble(v) for k, v in value.items()}
        if isinstance(value, list):
            return [garble(v) for v in value]
        return value + "\ud800" if isinstance(value, str) and value != "shopping-mmlu results" else value

    before = load_results(folder)
    doc = garble(json.loads((folder / "results.json").read_text()))
    (folder / "results.json").write_text(json.dumps(doc))  # ASCII JSON: "\ud800" escaped, as a hostile writer has it
    samples = [garble(json.loads(line)) for line in (folder / "samples.jsonl").read_text().splitlines()]
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    loaded = load_results(folder)
    assert loaded.runs.height == 1, loaded.skipped
    run = loaded.runs.row(0, named=True)
    assert run["model"] == "my-model?" and run["answered_first_at"].endswith("?")
    assert loaded.samples.height == before.samples.height == 12 and loaded.tasks.height == before.tasks.height
    for name in ("\ud800", None):
        with pytest.raises(InputError):
            rescore(name, data, cache=cache)
