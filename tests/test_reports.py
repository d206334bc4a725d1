"""What users keep and read: results folders that round-trip through the official format, every terminal
table at 80 columns, a chart that fits one screen, an HTML report looked at in a real browser, CLI manners."""

from __future__ import annotations

import json
import random
import re
import struct
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl
from evaluator.cache.responses import ResponseCache, run_key
from evaluator.cli import sample_dir
from evaluator.reports import leaderboard, tables
from evaluator.reports.screenshot import chromium, rendered_dom, screenshot

PAPER_NAMES = ["llama2-7b", "llama2-13b", "llama2-70b", "llama2-7b-chat", "llama3-8b", "llama3-8b-instruct",
               "vicuna2", "vicuna2-13b", "yi6b", "zephyr", "mistral", "mistral-instruct", "mixtral-8x7b",
               "falcon7b", "qwen0.5b", "qwen1.8b", "qwen4b", "qwen7b", "qwen14b", "qwen72b", "qwen7b-chat", "phi2",
               "gemma2b", "gemma7b", "gemma7b-it", "ecellm-m", "ecellm-s"]
SKILLS = ["amazon-kdd-cup-24-understanding-shopping-concepts", "amazon-kdd-cup-24-shopping-knowledge-reasoning",
          "amazon-kdd-cup-24-user-behavior-alignment", "amazon-kdd-cup-24-multi-lingual-abilities"]


def narrow(capsys) -> str:
    return capsys.readouterr().out


def fill_cache(cache: Path, names: list[str], seed: int = 0) -> None:
    """Saved runs for many models: 18 tasks over the 4 KDD tracks, one run incomplete, one failed."""
    rng = random.Random(seed)
    store = ResponseCache(cache / "responses")
    for n, name in enumerate(names):
        status = "failed" if n == 3 else ("incomplete" if n == 5 else "complete")
        tasks = []
        for t in range(18):
            scored = 0 if status == "failed" else (3 if status == "incomplete" and t == 0 else 5)
            tasks.append({"skill": SKILLS[t % 4], "task": f"task{t}", "metric": "accuracy", "questions": 5,
                          "scored": scored, "errors": 5 - scored, "unscored": 0,
                          "score": None if not scored else rng.random(), "prompt_tokens": 100,
                          "completion_tokens": 5, "official": None})
        answered = sum(t["scored"] for t in tasks)
        store.save_run({"key": run_key(name, "sha", "skill", "completion", ""), "model": name,
                        "data": "/data/kddcup24_development.jsonl", "data_sha256": "sha", "protocol": "skill",
                        "rendering": "completion", "variant": "", "questions": 90, "answered": answered,
                        "scored": answered, "errors": 90 - answered, "unscored": 0, "status": status,
                        "reason": "pre-flight: the environment variable KEY is not set" if status == "failed" else None,
                        "prompt_tokens": 1800, "completion_tokens": 90, "cost": None, "details": "{}",
                        "created_at": 0.0}, tasks)
    store.close()


def assert_fits(text: str, width: int = 80) -> None:
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} columns: {line!r}"


# ---------------------------------------------------------------- 80 columns

def test_the_leaderboard_reads_at_80_columns(tmp_path):
    fill_cache(tmp_path / "c", PAPER_NAMES)
    store = ResponseCache(tmp_path / "c" / "responses", read_only=True)
    board = leaderboard.leaderboard(store.runs(), store.task_scores())
    store.close()
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    tables.print_leaderboard(board, console)
    text = console.export_text()
    assert_fits(text)
    for name in PAPER_NAMES:  # full names, never an ellipsis
        assert re.search(rf"\b{re.escape(name)}\b", text), name
    assert "…" not in text
    header = next(line for line in text.splitlines() if "overall" in line)
    assert all(label in header for label in ("concept", "reasoning", "behavior", "multilingual"))
    for line in text.splitlines():  # three-decimal scores, never broken across lines
        assert not re.search(r"\d\.\d{1,2}$", line.strip()) or "%" in line, line
    assert "failed" in text and "(incomplete)" in text


def test_every_terminal_table_reads_at_80_columns(tmp_path, capsys, monkeypatch, kdd_dev):
    monkeypatch.setenv("COLUMNS", "80")
    cache = tmp_path / "c"
    with Stub() as stub:
        for model in ("llama3-8b-instruct-long-name", "mistral-instruct"):
            run_cli(["run", "--model", model, "--base-url", stub.base_url, "--data", kdd_dev, "--cache", cache],
                    capsys, monkeypatch)
    outputs = {}
    for name, args in {
        "scores": ["rescore", "--model", "mistral-instruct", "--data", kdd_dev, "--cache", cache],
        "report": ["report", "--cache", cache],
        "compare": ["compare", "mistral-instruct", "llama3-8b-instruct-long-name", "--cache", cache,
                    "--bootstrap", "200"],
        "inspect": ["inspect", "--model", "mistral-instruct", "--task", "task11", "--data", kdd_dev, "--cache", cache],
        "data info": ["data", "info", kdd_dev],
        "dry run": ["suite", Path(__file__).resolve().parents[1] / "servers" / "suites" / "paper.toml", "--dry-run",
                    "--gpus", "8", "--gpu-mem", "80"],
        "models": ["models"],
    }.items():
        if name == "dry run":
            suite = tmp_path / "paper.toml"
            suite.write_text(Path(args[1]).read_text().replace("../../data/shopping_mmlu", str(kdd_dev)))
            args[1] = suite
        code, out, err = run_cli(args, capsys, monkeypatch)
        assert code in (0, 3), f"{name}: {err}"
        outputs[name] = out
        assert_fits(out)
    lines = outputs["report"].splitlines()
    first = next(i for i, line in enumerate(lines) if "llama3-8b-instruct" in line)
    start = lines[first].index("llama3")
    folded = lines[first][start:].split()[0] + lines[first + 1][start:].split()[0]
    assert folded == "llama3-8b-instruct-long-name"  # folded onto a second line, never cut
    assert "mean of 4/4 skills" in outputs["scores"] and "hit@3" in outputs["scores"]
    assert "95% CI" in outputs["compare"] and "overall" in outputs["compare"]


# ---------------------------------------------------------------- the results folder

def test_a_results_folder_describes_itself_and_round_trips_through_the_official_format(tmp_path, capsys,
                                                                                       monkeypatch, kdd_dev):
    cache, folder = tmp_path / "c", tmp_path / "results"
    with Stub() as stub:
        code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", kdd_dev, "--cache",
                                cache, "--output", folder, "--json", tmp_path / "run.json"], capsys, monkeypatch)
    assert code == 0, err
    results = json.loads((folder / "results.json").read_text())
    for key in ("model", "server", "data", "settings", "times", "software", "requests", "tokens", "cost", "scores"):
        assert key in results, key
    assert results["data"]["dataset_sha256"] and results["data"]["questions"] == 96
    assert results["settings"]["protocol"] == "skill" and results["settings"]["temperature"] == 0.0
    assert results["software"]["python"] and results["times"]["started_at"].endswith("+00:00")
    assert results["complete"] is True and results["model"]["profile"]["name"] == "m"
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    # the stub's answers within each request's budget: one token ('s') for multiple choice
    assert len(samples) == 96 and all(s["answer"].startswith("stub-")
                                      or (s["answer"], s["metric"]) == ("s", "accuracy") for s in samples)
    assert {"id", "skill", "task", "metric", "prompt", "answer", "truth", "score", "completion_tokens",
            "latency_s"} <= set(samples[0])
    official = results["files"]["official_outputs"]
    assert official["written"] == [f"{kdd_dev.stem}.json"] and not official["skipped"]
    code, _, err = run_cli(["score", "--data", kdd_dev, "--responses", folder / "official" / f"{kdd_dev.stem}.json",
                            "--json", tmp_path / "rescored.json"], capsys, monkeypatch)
    assert code == 0, err
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    ran = json.loads((tmp_path / "run.json").read_text())
    assert rescored["tasks"] == ran["tasks"] and rescored["overall"] == ran["overall"]


# ---------------------------------------------------------------- pictures

def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_the_chart_of_27_models_fits_one_screen(tmp_path, capsys, monkeypatch):
    fill_cache(tmp_path / "c", PAPER_NAMES)
    code, _, err = run_cli(["report", "--cache", tmp_path / "c", "--chart", tmp_path / "board.png"], capsys,
                           monkeypatch)
    assert code == 0, err
    width, height = png_size(tmp_path / "board.png")
    assert width <= 1000 and height <= 1080, (width, height)


def build_report(tmp_path: Path, capsys, monkeypatch) -> Path:
    """A real report: two models answered by the stub on the sample set, plus 27 saved paper-suite runs."""
    cache = tmp_path / "c"
    fill_cache(cache, PAPER_NAMES)
    with Stub() as stub:
        for model in ("stub-a", "stub-b"):
            run_cli(["run", "--model", model, "--base-url", stub.base_url, "--data", sample_dir(), "--cache", cache],
                    capsys, monkeypatch)
    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--cache", cache, "--html", page], capsys, monkeypatch)
    assert code == 0, err
    return page


def test_the_html_report_is_one_self_contained_file(tmp_path, capsys, monkeypatch):
    page = build_report(tmp_path, capsys, monkeypatch)
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN: it works offline
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
                      .group(1).replace("<\\/", "</"))
    by_run = {r["run"]: r["model"] for r in data["board"]}
    assert len(data["board"]) == 29 and {by_run[k] for k in data["runs"]} == {"stub-a", "stub-b"}
    run_a = next(k for k in data["runs"] if by_run[k] == "stub-a")
    assert data["runs"][run_a]["questions_total"] == 26
    notes = " ".join(data["notes"])
    assert "llama2-7b" in notes and "no per-question view" in notes  # saved runs whose data is gone say so


@pytest.mark.browser
@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium); "
                                                "the HTML report is checked in a real browser where it is")
def test_the_html_report_in_a_real_browser(tmp_path, capsys, monkeypatch):
    page = build_report(tmp_path, capsys, monkeypatch)
    dom = rendered_dom(page)
    assert dom.count('class="click') > 29  # the scripts drew the leaderboard rows and the heatmap
    assert "stub-a" in dom and "Questions shown" in dom and "background:rgb(" in dom
    shot = screenshot(page, tmp_path / "report.png", "1280x800")
    assert png_size(shot) == (1280, 800)
    keep = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
    keep.mkdir(exist_ok=True)
    (keep / "report-1280x800.png").write_bytes(shot.read_bytes())  # for a person to look at


@pytest.mark.browser
@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium); "
                                                "the HTML report is checked in a real browser where it is")
def test_the_drill_down_shows_the_clicked_runs_own_questions_with_two_data_sets(tmp_path, capsys, monkeypatch):
    """One model on two data sets (two rankings): each leaderboard row drills into its own data's questions."""
    cache = tmp_path / "c"
    first = write_jsonl(tmp_path / "first.json", [
        {"input_field": f"FIRST-SET question {i}?", "output_field": 1, "task_name": "alpha",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(5)])
    second = write_jsonl(tmp_path / "second.json", [
        {"input_field": f"SECOND-SET question {i}?", "output_field": 1, "task_name": "beta",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(7)])
    with Stub() as stub:
        for data in (first, second):
            code, out, err = run_cli(["run", "--model", "one", "--base-url", stub.base_url, "--data", data,
                                      "--cache", cache], capsys, monkeypatch)
            assert code == 0, out + err
    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--cache", cache, "--html", page], capsys, monkeypatch)
    assert code == 0, err
    for marker, other in (("FIRST-SET", "SECOND-SET"), ("SECOND-SET", "FIRST-SET")):
        data_path = first if marker == "FIRST-SET" else second
        text = page.read_text()
        board = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
                           .group(1).replace("<\\/", "</"))["board"]
        run = next(r["run"] for r in board if r["data"] == str(data_path.resolve()))
        clicked = tmp_path / f"click-{marker}.html"  # the page, told to click this run's leaderboard row
        clicked.write_text(text.replace("</body>", f"<script>pick({json.dumps(run)});</script></body>"))
        dom = rendered_dom(clicked)
        start = dom.index('id="questions"')
        questions = dom[start:dom.index("</table>", start)]
        assert marker in questions and other not in questions


# ---------------------------------------------------------------- CLI manners

def test_cli_conventions(capsys, monkeypatch):
    code, out, _ = run_cli(["--version"], capsys, monkeypatch)
    assert code == 0 and re.match(r"shopping-mmlu \d+\.\d+", out)
    code, out, _ = run_cli(["--help"], capsys, monkeypatch)
    for needle in ("SHOPPING_MMLU_CACHE", "SHOPPING_MMLU_PROFILES", "SHOPPING_MMLU_VLLM_PYTHON", "Exit codes"):
        assert needle in out
    code, out, _ = run_cli(["run", "--help"], capsys, monkeypatch)
    assert re.search(r"--refresh\s+ignore", out) and "[skill|task]" not in out and "<skill|task>" in out
    assert "completion: the prompt as plain text" in out.replace("\n", " ").replace("  ", " ")
    code, out, _ = run_cli(["models"], capsys, monkeypatch)
    assert code == 0 and "gpt-4o" in out and "llama2-70b" in out
    code, out, _ = run_cli(["models", "--format", "json"], capsys, monkeypatch)
    assert {m["name"] for m in json.loads(out)} >= {"demo", "gpt-4o", "claude-sonnet"}


@pytest.mark.browser  # and where there is none, the page's size and caps still count
def test_a_night_of_27_long_named_models_makes_a_small_page_with_names_told_apart(tmp_path, capsys, monkeypatch):
    """27 models whose names share a long prefix, 600 questions each: per-question rows are capped for the
    page as a whole, inputs and truths are stored once per data set, and every heatmap name differs."""
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": f"A question long enough to matter, number {i}, with choices\n0. a\n1. b\n2. c\n3. d",
         "output_field": i % 4, "task_name": f"t{i % 6}", "task_type": "multiple-choice", "metric": "accuracy"}
        for i in range(600)])
    names = [f"organization/very-long-model-name-{i}-instruct" for i in range(27)]
    with Stub() as stub:
        suite = tmp_path / "s.toml"
        suite.write_text(f'[suite]\ndata = "{data}"\nconcurrency = 64\n[models]\n' + "".join(
            f'"{n}" = {{ provider = "openai-compatible", model = "m{i}", api_base = "{stub.base_url}" }}\n'
            for i, n in enumerate(names)), encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", tmp_path / "c", "--output", tmp_path / "night"],
                                 capsys, monkeypatch)
    assert code == 0, out[-2000:] + err
    page = tmp_path / "night" / "latest" / "report.html"
    payload = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(),
                                   re.S).group(1))
    assert all(len(run["questions"]) <= run["limit"] < 600 for run in payload["runs"].values())
    assert len(payload["texts"]) == 1  # one data set: its texts once
    assert page.stat().st_size < 4 * 2**20, page.stat().st_size
    if chromium() is None:
        pytest.skip("no Chromium here: the heatmap's names are checked in a real browser where it is")
    dom = rendered_dom(page)
    shown = [n for n in re.findall(r'<td class="name" title="[^"]*">([^<]*)', dom) if not n.startswith("${")]
    assert len(shown) == 27 and len(set(shown)) == 27, shown


def test_a_saved_run_is_rebuilt_with_the_profile_it_was_answered_with(tmp_path, capsys, monkeypatch):
    """A model first run in a suite (inline profile: served as 'first-name'), later run ad hoc under the same
    name on other data (served as itself): the suite's run is still rebuilt from its own profile, so its
    per-question view finds every answer (it used to take the model's latest profile and find none)."""
    from evaluator.runs.runner import rescore_saved

    cache = tmp_path / "c"
    first = write_jsonl(tmp_path / "a.json", [{"input_field": f"Q{i}?", "output_field": "x", "task_name": "t",
                                               "task_type": "generation", "metric": "rougel"} for i in range(6)])
    other = write_jsonl(tmp_path / "b.json", [{"input_field": f"R{i}?", "output_field": "y", "task_name": "t",
                                               "task_type": "generation", "metric": "rougel"} for i in range(3)])
    with Stub() as stub:
        suite = tmp_path / "s.toml"
        suite.write_text(f'[suite]\ndata = "{first}"\n[models]\nm = {{ provider = "openai-compatible", '
                         f'model = "first-name", api_base = "{stub.base_url}" }}\n', encoding="utf-8")
        code, _, err = run_cli(["suite", suite, "--cache", cache, "--output", tmp_path / "night"], capsys, monkeypatch)
        assert code == 0, err
        code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", other, "--cache", cache],
                               capsys, monkeypatch)
        assert code == 0, err
    store = ResponseCache(cache / "responses", read_only=True)
    runs = store.runs()
    store.close()
    record = next(r for r in runs.iter_rows(named=True) if r["data"].endswith("a.json"))
    result = rescore_saved(cache, record)
    assert not isinstance(result, str) and result.answered == 6 and result.status == "complete"


def test_a_saved_run_with_prompt_options_we_cannot_rebuild_says_so(tmp_path, capsys, monkeypatch):
    """A run saved by another version with a variant part this one does not know is not rebuilt, and the
    reason names its options (it used to blame a shot pool it does not have)."""
    from evaluator.runs.runner import rescore_saved

    cache = tmp_path / "c"
    data = write_jsonl(tmp_path / "a.json", [{"input_field": "Q?", "output_field": "x", "task_name": "t",
                                              "task_type": "generation", "metric": "rougel"}])
    with Stub() as stub:
        code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", cache],
                               capsys, monkeypatch)
    assert code == 0, err
    store = ResponseCache(cache / "responses", read_only=True)
    record = store.runs().row(0, named=True)
    store.close()
    reason = rescore_saved(cache, {**record, "variant": "future-option"})
    assert isinstance(reason, str) and "'future-option'" in reason and "pool" not in reason
