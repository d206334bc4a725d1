"""Commands as people type them: from a working folder of their own, with relative paths and `~`.

The house rule for every path a user gives: an option or argument is read relative to the working folder,
with `~` expanded (`paths.as_typed`, applied to every `Path` parameter of every command where options are
parsed, so a new option follows it by being typed `Path`); a path inside a suite file is read relative to
the suite file's folder. A new command or path option gets a case here: run as a subprocess with cwd = a
scratch folder, relative paths only, asserting its exit code and the files it leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.stubs.openai_stub import Stub
from tests.builders import write_jsonl, write_official_layout
from tests.conftest import ROOT

ROWS = [  # no embedding or text-overlap rows: scoring stays quick, and complete offline
    {"input_field": "Pick one\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": 1, "task_name": "pick",
     "task_type": "multiple-choice", "metric": "accuracy"},
    {"input_field": "Pick another\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": 2, "task_name": "pick",
     "task_type": "multiple-choice", "metric": "accuracy"},
    {"input_field": "Which 3 of 5?", "output_field": [1, 2, 3], "task_name": "which", "task_type": "retrieval",
     "metric": "hit rate@3"},
    {"input_field": "Entities of 'acme mug'?", "output_field": ["acme", "mug"], "task_name": "ner",
     "task_type": "named_entity_recognition", "metric": "micro f1"},
]


def shopping_mmlu(args: list[str], work: Path, home: Path) -> subprocess.CompletedProcess:
    """`shopping-mmlu ARGS` typed in `work` (HOME is `home`, so `~` is there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("XDG_CACHE_HOME", None)
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)


def ok(done: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert done.returncode == code, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def stub():
    with Stub() as server:
        yield server


@pytest.fixture(scope="module")
def night(tmp_path_factory, stub) -> dict:
    """A night typed as a newcomer types it: `suite suites/night.toml --cache cache --output nights` in their
    folder, the suite's data written relative to the suite file."""
    base = tmp_path_factory.mktemp("newcomer")
    work, home = base / "work", base / "home"
    home.mkdir()
    write_jsonl(work / "data" / "skill.json", ROWS)
    (work / "suites").mkdir()
    (work / "suites" / "night.toml").write_text(
        '[suite]\nname = "night"\ndata = "../data/skill.json"\n[models]\n'
        f'a = {{ provider = "openai-compatible", model = "a", api_base = "{stub.base_url}" }}\n'
        f'b = {{ provider = "openai-compatible", model = "b", api_base = "{stub.base_url}" }}\n', encoding="utf-8")
    done = ok(shopping_mmlu(["suite", "suites/night.toml", "--cache", "cache", "--output", "nights"], work, home))
    return {"work": work, "home": home, "done": done}


def test_a_suite_with_relative_cache_and_output_leaves_its_night(night):
    work = night["work"]
    latest = work / "nights" / "latest"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "summary.json", "report.html",
                 "suite.log", "models/a/results.json", "models/b/results.json"):
        assert (latest / name).is_file(), name
    summary = json.loads((latest / "summary.json").read_text())
    assert summary["results"] == {"a": "models/a", "b": "models/b"}
    assert summary["complete"] == ["a", "b"]
    assert summary["data"] == str(work / "data" / "skill.json")  # relative to the suite file, not to cwd
    assert (work / "cache" / "responses" / "responses.sqlite").is_file()
    assert "No GPU" not in night["done"].stdout + night["done"].stderr  # endpoint models only


def test_a_suite_output_through_a_link_and_a_suite_data_path_from_home(night, stub):
    """A folder reached through a symbolic link (its resolved name differs from the one typed) and a suite
    whose data is `~/...`."""
    work, home = night["work"], night["home"]
    write_jsonl(home / "mine" / "skill.json", ROWS[:2])
    (work / "real").mkdir()
    (work / "link").symlink_to("real")
    (work / "home.toml").write_text(
        '[suite]\ndata = "~/mine/skill.json"\n[models]\n'
        f'c = {{ provider = "openai-compatible", model = "c", api_base = "{stub.base_url}" }}\n', encoding="utf-8")
    ok(shopping_mmlu(["suite", "home.toml", "--cache", "cache", "--output", "link/nights"], work, home))
    summary = json.loads((work / "real" / "nights" / "latest" / "summary.json").read_text())
    assert summary["results"] == {"c": "models/c"} and summary["data"] == str(home / "mine" / "skill.json")


def test_run_rescore_and_their_files(night, stub):
    work, home = night["work"], night["home"]
    ok(shopping_mmlu(["run", "--model", "m", "--base-url", stub.base_url, "--data", "data/skill.json", "--cache",
                      "cache", "--json", "out.json", "--output", "res"], work, home))
    assert json.loads((work / "out.json").read_text())["tasks"]
    assert (work / "res" / "results.json").is_file() and (work / "res" / "samples.jsonl").is_file()
    write_jsonl(work / "pool.json", ROWS)
    ok(shopping_mmlu(["run", "--model", "m", "--base-url", stub.base_url, "--data", "data/skill.json", "--cache",
                      "cache", "--shots", "1", "--shot-pool", "pool.json", "--json", "~/shots.json"], work, home))
    assert (home / "shots.json").is_file()  # `~` expanded where no shell did it
    ok(shopping_mmlu(["rescore", "--model", "m", "--data", "data/skill.json", "--cache", "cache", "--json",
                      "re.json", "--output", "res2"], work, home))
    assert (work / "re.json").is_file() and (work / "res2" / "results.json").is_file()


def test_report_analyze_inspect_compare(night):
    work, home = night["work"], night["home"]
    done = ok(shopping_mmlu(["report", "--cache", "cache", "--html", "r.html", "--chart", "c.png"], work, home))
    assert (work / "r.html").stat().st_size > 0 and (work / "c.png").read_bytes()[:4] == b"\x89PNG", done.stderr
    (work / "other.csv").write_text("model,score\na,0.5\nb,0.7\n", encoding="utf-8")
    ok(shopping_mmlu(["analyze", "--cache", "cache", "--output", "a", "--data", "data/skill.json",
                      "--variant", "", "--external", "other.csv"], work, home))
    assert json.loads((work / "a" / "analysis.json").read_text())["external"][0]["n"] == 2  # other.csv was read
    assert "pick" in ok(shopping_mmlu(["inspect", "--model", "a", "--task", "pick", "--data", "data/skill.json",
                                       "--cache", "cache"], work, home)).stdout
    assert "overall" in ok(shopping_mmlu(["compare", "a", "b", "--cache", "cache", "--data", "data/skill.json"],
                                         work, home)).stdout


def test_score_and_data_info(night):
    work, home = night["work"], night["home"]
    write_jsonl(work / "answers.jsonl", [{"model_output": "1"}, {"model_output": "0"}, {"model_output": "1,2,3"},
                                         {"model_output": "acme, mug"}])
    ok(shopping_mmlu(["score", "--data", "data/skill.json", "--responses", "answers.jsonl", "--json", "s.json",
                      "--cache-dir", "scoring-cache"], work, home))
    assert json.loads((work / "s.json").read_text())["tasks"]
    assert "pick" in ok(shopping_mmlu(["data", "info", "data/skill.json"], work, home)).stdout


def test_data_download_from_a_relative_archive_into_a_relative_folder(night, tmp_path):
    work, home = night["work"], night["home"]
    layout = write_official_layout(tmp_path / "layout")
    archive = work / "data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(layout.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(layout).as_posix())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    ok(shopping_mmlu(["data", "download", "--from", "./data.zip", "--dest", "./d", "--sha256", digest], work, home))
    assert (work / "d" / "skills" / "skill1_concept.json").is_file()
    (home / "data.zip").write_bytes(archive.read_bytes())
    ok(shopping_mmlu(["data", "download", "--from=~/data.zip", "--dest=~/d", "--sha256", digest], work, home))
    assert (home / "d" / "skills" / "skill1_concept.json").is_file()


def test_a_dry_run_plan_and_missing_data_name_the_command_that_fetches_it(night):
    work, home = night["work"], night["home"]
    ok(shopping_mmlu(["suite", "suites/night.toml", "--dry-run", "--json", "plan.json"], work, home))
    assert [m["name"] for m in json.loads((work / "plan.json").read_text())["models"]] == ["a", "b"]
    (work / "paper.toml").write_text('[suite]\ndata = "data/shopping_mmlu"\n[models]\n"qwen0.5b" = {}\n',
                                     encoding="utf-8")
    done = ok(shopping_mmlu(["suite", "paper.toml", "--dry-run"], work, home), 2)
    line = done.stderr.strip().splitlines()[-1]
    assert line.endswith("`shopping-mmlu data download --dest data/shopping_mmlu` puts the official data there")
    assert "Traceback" not in done.stderr


def test_every_path_parameter_of_every_command_is_read_as_typed(tmp_path, monkeypatch):
    """The rule itself, for options added later: every parameter whose value is a path comes out absolute
    and from `~`, whatever command it belongs to."""
    import typer
    from typer._click.core import Context

    from evaluator.cli import app

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    seen = 0

    def walk(command, name: str) -> None:
        nonlocal seen
        for sub_name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{name} {sub_name}")
        for param in command.params:
            try:
                value = param.process_value(Context(command), "~/x")
            except Exception:  # noqa: BLE001: not a path (a number, a choice, a list)
                continue
            if isinstance(value, Path):
                seen += 1
                assert value == tmp_path / "x", f"{name} {param.name}"

    walk(typer.main.get_command(app), "shopping-mmlu")
    assert seen >= 30  # 37 when written
