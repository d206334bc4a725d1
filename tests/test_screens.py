"""Every screen at 80 columns with long real model names: nothing cut, no trailing spaces, names folded only
at their own boundaries; a suite's log one line per event naming its model; progress rates that are the
fan-out's, with the time left saying what it covers."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl
from evaluator.reports.screen import Screen, fold
from evaluator import night
from evaluator.runs.progress import Throughput, time_left
from servers.suite import load_suite

LONG = ["meta-llama/Llama-2-70b-chat-hf", "mistralai/Mistral-7B-Instruct-v0.2", "gpt-5.4-mini-2026-03-17"]


def check_screen(text: str) -> list[str]:
    lines = text.splitlines()
    for line in lines:
        assert len(line) <= 80, f"{len(line)} columns: {line!r}"
        assert line == line.rstrip(), f"trailing spaces: {line!r}"
    assert "…" not in text
    return lines


def reads_back(lines: list[str], name: str) -> bool:
    """`name` whole on one line, or folded over the next lines of the same column (blank to its left)."""
    for i, line in enumerate(lines):
        for word in re.finditer(r"\S+", line):
            joined, j = word.group(), i
            while name.startswith(joined) and joined != name and j + 1 < len(lines):
                j += 1
                if lines[j][:word.start()].strip():
                    break
                joined += lines[j][word.start():].split(" ")[0]
            if joined == name:
                return True
    return False


def test_fold_breaks_at_boundaries_and_reads_back():
    assert fold("meta-llama/Llama-2-70b-chat-hf", 22) == ["meta-llama/", "Llama-2-70b-chat-hf"]
    assert fold("gpt-5.4-mini-2026-03-17", 20) == ["gpt-5.4-mini-", "2026-03-17"]  # no lone "17"
    assert fold("abcdefghij", 4) == ["abcd", "efgh", "ij"]  # no boundary: cut, nothing else fits
    for width in range(6, 31):
        assert "".join(fold(LONG[0], width)) == LONG[0]


def test_the_screen_console_leaves_no_trailing_spaces(capsys):
    Screen(width=20).print("aaaa bbbb cccc dddd eeee ffff gggg")
    out = capsys.readouterr().out
    assert out == "aaaa bbbb cccc dddd\neeee ffff gggg\n"


def test_report_models_data_info_and_inspect_read_at_80_columns(tmp_path, capsys, monkeypatch, kdd_dev):
    monkeypatch.setenv("COLUMNS", "80")
    cache = tmp_path / "c"
    with Stub() as stub:
        for model in LONG:
            code, _, err = run_cli(["run", "--model", model, "--base-url", stub.base_url, "--data", kdd_dev,
                                    "--cache", cache], capsys, monkeypatch)
            assert code in (0, 3), err
    code, out, _ = run_cli(["report", "--cache", cache], capsys, monkeypatch)
    lines = check_screen(out)
    header = next(line for line in lines if "overall" in line)
    assert header.split() == ["#", "model", "overall", "concept", "reasoning", "behavior", "multilingual", "done"]
    rows = [line for line in lines if re.match(r"\s*\d+ ", line)]
    assert len(rows) == 3 and all(row.split()[-1] == "all" for row in rows)  # the last column whole
    for name in LONG:
        assert reads_back(lines, name), name

    code, out, _ = run_cli(["models"], capsys, monkeypatch)
    lines = check_screen(out)
    assert reads_back(lines, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert reads_back(lines, "meta-llama/Llama-2-70b-chat-hf") and reads_back(lines, "claude-sonnet-5.5")
    assert "https://api.openai.com/v1" in out  # the endpoint an API profile asks

    code, out, _ = run_cli(["data", "info", kdd_dev], capsys, monkeypatch)
    lines = check_screen(out)
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("skill concept"))
    assert lines[first].endswith("-")  # folded at a boundary, and reads back whole
    assert lines[first].strip() + lines[first + 1].strip() == \
        "skill concept (amazon-kdd-cup-24-understanding-shopping-concepts)"

    code, out, _ = run_cli(["inspect", "--model", LONG[2], "--task", "task11", "--data", kdd_dev, "--cache", cache],
                           capsys, monkeypatch)
    lines = check_screen(out)
    options = [line for line in lines if re.fullmatch(r"\s+[0-3]\. (irrelevant|substitute|complement|narrowing)",
                                                      line)]
    assert len(options) == 8 * 4  # every option of every question whole

    code, out, _ = run_cli(["--help"], capsys, monkeypatch)
    check_screen(out)
    assert "130  interrupted" in out


def suite_file(tmp_path: Path, base_url: str, data: Path, names: list[str], extra: str = "") -> Path:
    models = "\n".join(f'"{n}" = {{ provider = "openai-compatible", model = "m{i}", api_base = "{base_url}" }}'
                       for i, n in enumerate(names))
    path = tmp_path / "s.toml"
    path.write_text(f'[suite]\nname = "night"\ndata = "{data}"\n{extra}[models]\n{models}\n', encoding="utf-8")
    return path


def test_a_suite_log_is_one_line_per_event_naming_its_model_and_a_note_is_said_once(tmp_path):
    """Ten models with the same unscored row (its embedding model is missing): one note naming all ten;
    no line of the log wrapped, every model line grep-able by its name; nothing from a library's bar."""
    names = [f"org-{i}/model-with-a-rather-long-name-{i}" for i in range(10)]
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": f"Q{i}? " + "word " * 40, "output_field": i % 4, "task_name": "t1",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(20)] + [
        {"input_field": "Describe", "output_field": "a mug", "task_name": "t2", "task_type": "generation",
         "metric": "sent-transformer"}])
    terminal = tmp_path / "terminal.txt"
    with Stub() as stub, terminal.open("w") as screen:
        console = Console(file=screen, width=80, force_terminal=True)
        suite = load_suite(suite_file(tmp_path, stub.base_url, data, names,
                                      f'embedding_model = "{tmp_path / "missing"}"\n'))
        outcomes = night.run_suite_to_folder(suite, [], tmp_path / "c", tmp_path / "night", console)
    assert all(o.unscored == 1 for o in outcomes)
    log = (tmp_path / "night" / "latest" / "suite.log").read_text()
    lines = log.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+: |\[night\] )", line) for line in lines)
    notes = [line for line in lines if "note for" in line]
    assert len(notes) == 1 and "not scored:" in notes[0] and all(name in notes[0] for name in names)
    for name in names:
        done = [line for line in lines if f" {name}: complete" in line or f" {name}: incomplete" in line]
        assert len(done) == 1 and "not scored" in done[0]
    assert "Loading weights" not in log and "%|" not in log
    reason = [line for line in lines if f"{names[0]}, {names[1]}" in line and "note for" not in line
              and "] * " not in line]
    assert len(reason) == 1 and "and 4 more:" in reason[0]  # the results table's notes: a shared reason once
    board = [line for line in lines if "] * " in line]  # the leaderboard's notes: one account for all ten
    assert len(board) == 1 and f"{names[0]}, {names[1]}" in board[0] and "and 4 more (incomplete):" in board[0]
    shown = terminal.read_text()
    assert shown.count("note for") == 1 and "Loading weights" not in shown
    assert "ETA" not in shown and "/210 questions" in shown and "models scored" in shown  # the live view
    assert "answering: time left unknown yet" in shown or "answering: ~" in shown


def test_the_rate_leaves_out_the_start_up_and_the_time_left_says_what_it_is():
    rate = Throughput()
    for i in range(200):  # a server ready after 80 s, then 4.5 replies a second
        rate.add(1000.0 + 80 + i / 4.5)
    assert abs(rate.rate() - 4.5) < 0.01
    assert time_left(564, 4.5) == "~2 min left"
    assert time_left(30, 4.5) == "~7 s left"  # never "0 min"
    assert time_left(0, 4.5) == "all done" and time_left(10, None) == "time left unknown yet"
    late = Throughput(window_s=60)
    late.add(0.0)
    for i in range(100):
        late.add(200.0 + i)  # the old reply falls out of the window
    assert abs(late.rate() - 1.0) < 0.01


def test_inspect_shows_a_ranking_tasks_candidates_numbered_and_its_metric(tmp_path, capsys, monkeypatch, kdd_dev):
    """An answer `3, 1` can only be checked against the candidates: every numbered line is shown, one line
    each, after the clipped question, and the title names the metric."""
    monkeypatch.setenv("COLUMNS", "120")
    cache = tmp_path / "c"
    with Stub() as stub:
        code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", kdd_dev,
                                "--cache", cache], capsys, monkeypatch)
        assert code in (0, 3), err
    for task, metric, count in (("task12", "ndcg", 5), ("task13", "hit rate@3", 10)):
        code, out, err = run_cli(["inspect", "--model", "m", "--task", task, "--data", kdd_dev, "--cache", cache],
                                 capsys, monkeypatch)
        assert code == 0, err
        assert f"({metric})" in " ".join(out.split())
        questions = int(re.search(r"(\d+) questions", out).group(1))
        starts = [int(n) for n in re.findall(r"(?:^|\s)(\d{1,2})\. \S", out)]
        for n in range(1, count + 1):
            assert starts.count(n) >= questions, (task, n, out)  # every candidate of every question


def test_a_stalled_fan_out_says_so_and_its_time_left_grows_with_the_clock():
    from evaluator.runs.progress import clock_left

    rate = Throughput()
    for i in range(100):
        rate.add(1000.0 + i)  # one reply a second, then nothing
    assert clock_left(60, rate, 1099.0) == "~60 s left"
    stalled = clock_left(60, rate, 1199.0)
    assert stalled == "~3 min left (no reply for 100 s)"  # the last minute's rate, stretched to now
    assert clock_left(0, rate, 1199.0) == "all done"


def test_suite_progress_shows_each_models_state_and_counts_only_scored_models_as_scored():
    from evaluator.night import SuiteProgress
    from evaluator.runs.suite import Outcome

    out = io.StringIO()
    progress = SuiteProgress(Console(file=out, width=120), models=4, questions=10)
    outcomes = {name: Outcome(name, "pending") for name in ("a", "b", "c", "d")}
    progress.track(outcomes)
    outcomes["a"].started_at = 10.0  # its server starting
    outcomes["b"].started_at = outcomes["b"].evaluating_at = 11.0
    outcomes["b"].replied, outcomes["b"].to_send = 20, 26
    for _ in range(20):
        progress.reply(None)
    outcomes["c"].status, outcomes["c"].started_at = "failed", 5.0
    progress.model_done(outcomes["c"])
    lines = progress.model_lines(21.0)
    assert lines == ["a: starting", "b: sending, 20/26 replies, 2.0 req/s"]
    summary = progress.summary(21.0)
    assert "0/4 models scored, 1 failed (1 starting, 1 sending, 1 waiting)" in summary, summary
    assert "30/40 questions done" in summary  # the failed model's questions are given up
    outcomes["b"].finished_at, outcomes["b"].status = 12.0, "complete"
    assert progress.model_lines(21.0)[1].startswith("b: scoring")
    progress.model_done(outcomes["b"])
    assert "1/4 models scored, 1 failed" in progress.summary(21.0)
    assert "models scored" in out.getvalue()  # a log gets a line as each model ends
