"""Issue 28 (1, 2, 8): the views people read carry their uncertainty and never hide or blur the official
score: the choice-probability view aggregated as the official score, standard errors on every screen, ranks
that a failed run does not take and equal scores share, words that are not cut mid-word."""

from __future__ import annotations

import json
import math
import re

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl

TRACKS = ("shopping_concept_understanding", "shopping_knowledge_reasoning", "user_behavior_alignment",
          "multi_lingual_abilities")


def mixed_data(path):
    """Four tracks, each with two multiple-choice tasks and one task of another type (NER, retrieval,
    generation), so a skill's mean mixes both kinds."""
    rows = []
    for t, track in enumerate(TRACKS):
        for k in range(2):
            rows += [{"input_field": f"MC question {t}-{k}-{i}?\n0. red\n1. green\n2. blue\n3. grey\nAnswer: ",
                      "output_field": i % 4, "task_name": f"pick_{t}_{k}", "task_type": "multiple-choice",
                      "metric": "accuracy", "track": track} for i in range(7 + 3 * k)]
        other = [("entities", "named_entity_recognition", "micro f1", ["acme", "mug"]),
                 ("which_three", "retrieval", "hit rate@3", [1, 2, 3]),
                 ("describe", "generation", "rougel", "a soft cotton towel"),
                 ("entities_b", "named_entity_recognition", "micro f1", ["towel"])][t]
        rows += [{"input_field": f"Other question {t}-{i}.", "output_field": other[3], "task_name": other[0],
                  "task_type": other[1], "metric": other[2], "track": track} for i in range(5)]
    return write_jsonl(path, rows)


def numbers(body: dict) -> tuple[int, int] | None:
    text = body.get("prompt") or body["messages"][-1]["content"]
    found = re.search(r"MC question \d+-\d+-(\d+)\?", text)
    return (int(found.group(1)), int(found.group(1)) % 4) if found else None


def written(body: dict) -> str:
    """Right on two questions in five, some other choice else; other tasks a fixed, partly right text."""
    text = body.get("prompt") or body["messages"][-1]["content"]
    mc = numbers(body)
    if mc is None:
        i = int(re.search(r"Other question \d+-(\d+)", text).group(1))
        return ["acme, cup", "1, 5, 3", "a soft towel", "towel", "x"][i]
    row, truth = mc
    return str(truth if row % 5 < 2 else (truth + 1 + row % 3) % 4)


def same_as_written(body: dict) -> dict[str, float]:
    """The written choice most probable (split over " 2" and "2"), the right one second."""
    answer = written(body)
    truth = str(numbers(body)[1])
    probs = {" " + answer: math.log(0.35), answer: math.log(0.3), "The": math.log(0.1)}
    if truth != answer:
        probs[truth] = math.log(0.2)
    return probs


@pytest.mark.parametrize("render", ["completion", "chat"])
def test_a_view_whose_most_probable_choice_is_the_written_answer_equals_the_official_score(
        tmp_path, capsys, monkeypatch, render):
    monkeypatch.chdir(tmp_path)
    mixed_data(tmp_path / "d.json")
    with Stub(answers=written, logprobs=same_as_written) as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", "d.json",
                                  "--cache", "c", "--render", render, "--choice-probs", "--output", "out",
                                  "--json", "scores.json"], capsys, monkeypatch)
    assert code == 0, out + err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    official, view = results["scores"], results["choice_probabilities"]
    assert 0 < official["overall"]["score"] < 1 and view["n"] == view["questions"] == 4 * (7 + 10)
    # to the last digit, at every level, with the same standard errors and counts
    assert view["score"] == view["overall"]["score"] == official["overall"]["score"]
    assert view["stderr"] == official["overall"]["stderr"] is not None
    assert view["skills"].keys() == official["skills"].keys()
    for skill, summary in official["skills"].items():
        assert {k: view["skills"][skill][k] for k in summary} == summary
    keys = ("skill", "task", "metric", "questions", "n", "errors", "unscored", "score", "stderr")
    assert [{k: t[k] for k in keys} for t in view["tasks"]] == [{k: t[k] for k in keys} for t in official["tasks"]]
    froms = {t["task"]: t["from"] for t in view["tasks"]}
    assert froms["pick_0_0"] == "probabilities" and froms["entities"] == "official score"
    # full precision in every machine-readable file: the --json document and the leaderboard's csv and json
    assert json.loads((tmp_path / "scores.json").read_text())["choice_probabilities"]["score"] == view["score"]
    code, board, _ = run_cli(["report", "--cache", "c", "--format", "json"], capsys, monkeypatch)
    [row] = json.loads(board)
    assert (row["choice_probs_score"], row["choice_probs_stderr"]) == (view["score"], view["stderr"])
    code, csv, _ = run_cli(["report", "--cache", "c", "--format", "csv"], capsys, monkeypatch)
    header, line = csv.splitlines()[:2]
    assert float(dict(zip(header.split(","), line.split(",")))["choice_probs_score"]) == view["score"]
    # the mass on valid choices, aggregated the same way over the multiple-choice tasks alone: 0.65 where the
    # written choice is right, 0.85 where the right one is second; a task's mean, then the tasks', the skills'
    tasks = [sum(0.65 if i % 5 < 2 else 0.85 for i in range(n)) / n for n in (7, 10)]
    assert view["valid_mass"] == pytest.approx(sum(tasks) / 2, abs=1e-12)


def test_the_view_differs_where_the_most_probable_choice_is_not_written(tmp_path, capsys, monkeypatch):
    """Every multiple-choice question read from its probabilities (here: the truth most probable) moves the
    view, task by task; the other tasks keep their official scores."""
    monkeypatch.chdir(tmp_path)
    mixed_data(tmp_path / "d.json")

    def right_first(body: dict) -> dict[str, float]:
        return {str(numbers(body)[1]): math.log(0.6), "x": math.log(0.3)}

    with Stub(answers=written, logprobs=right_first) as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", "d.json",
                                  "--cache", "c", "--choice-probs", "--output", "out"], capsys, monkeypatch)
    assert code == 0, out + err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    official = {t["task"]: t["score"] for t in results["scores"]["tasks"]}
    view = {t["task"]: t["score"] for t in results["choice_probabilities"]["tasks"]}
    assert all(view[t] == 1.0 and official[t] < 1.0 for t in view if t.startswith("pick"))
    assert all(view[t] == official[t] for t in view if not t.startswith("pick"))
    tracks = results["choice_probabilities"]["skills"]
    assert tracks["user_behavior_alignment"]["score"] == pytest.approx((1.0 + 1.0 + official["describe"]) / 3)


def same_answers(body: dict) -> str:
    return written(body)


@pytest.fixture
def night_of_three(tmp_path, capsys, monkeypatch):
    """Two models that answer alike (equal scores) and one whose pre-flight fails, in one cache."""
    monkeypatch.chdir(tmp_path)
    mixed_data(tmp_path / "d.json")
    with Stub(answers=same_answers) as stub:
        for name in ("Meta-Llama-3-70B-Instruct", "mixtral-8x7b-instruct-v0.1"):
            code, _, err = run_cli(["run", "--model", name, "--base-url", stub.base_url, "--data", "d.json",
                                    "--cache", "c"], capsys, monkeypatch)
            assert code == 0, err
    code, out, err = run_cli(["run", "--model", "gone-model", "--base-url", "http://127.0.0.1:9/v1", "--data",
                              "d.json", "--cache", "c"], capsys, monkeypatch)
    assert code == 1
    return out


def report(args: list, width: int, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_cli(["report", "--cache", "c", *args], capsys, monkeypatch)
    assert code == 0, err
    return out


def test_equal_scores_share_a_rank_and_a_failed_run_has_none_in_every_view(night_of_three, capsys, monkeypatch):
    board = json.loads(report(["--format", "json"], 80, capsys, monkeypatch))
    assert [(r["model"], r["rank"]) for r in board] == [
        ("Meta-Llama-3-70B-Instruct", 1), ("mixtral-8x7b-instruct-v0.1", 1), ("gone-model", None)]
    assert board[0]["overall_stderr"] > 0 and all(board[0][f"stderr:{t}"] > 0 for t in TRACKS)
    csv = report(["--format", "csv"], 80, capsys, monkeypatch).splitlines()
    ranks = [dict(zip(csv[0].split(","), line.split(",")))["rank"] for line in csv[1:]]
    assert ranks == ["1", "1", ""]
    md = report(["--format", "md"], 80, capsys, monkeypatch)
    rows = [line for line in md.splitlines() if "gone-model |" in line or "Instruct |" in line or "v0.1 |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "1", "", "1", "1", ""]  # scores, then errors
    errors = rows[3].split("|")
    assert errors[3].strip() == f"{board[0]['overall_stderr']:.3f}"
    assert [e.strip() for e in errors[4:8]] == [f"{board[0][f'stderr:{t}']:.3f}" for t in TRACKS]
    assert "Standard errors of the scores above" in md


def test_the_terminal_board_shows_standard_errors_and_no_legend_nobody_needs(night_of_three, capsys, monkeypatch):
    narrow = report([], 80, capsys, monkeypatch)
    lines = narrow.splitlines()
    assert max(map(len, lines)) <= 80
    llama = next(line for line in lines if "Meta-Llama" in line)
    assert re.search(r"^ ?1 Meta-Llama.* 0\.\d{3}±\.\d{3} +0\.\d{3} +0\.\d{3}", llama), narrow  # the overall's error
    assert re.search(r"^ +gone-model +- ", next(line for line in lines if "gone-model" in line and " - " in line))
    assert "~ averaged" not in narrow  # no row is averaged over fewer tasks: no legend for a mark nobody has
    assert "skill(s)" not in narrow and "part of their tasks" not in narrow  # a failed model scored none
    wide = report([], 120, capsys, monkeypatch)
    row = next(line for line in wide.splitlines() if "Meta-Llama" in line)
    assert len(re.findall(r"0\.\d{3}±\.\d{3}", row)) == 5  # every score with its error
    assert "pre-flight: the endpoint http://127.0.0.1:9/v1 does not answer" in " ".join(wide.split())


def test_a_failed_pre_flight_prints_its_reason_alone_wrapped_at_spaces(night_of_three):
    out = night_of_three
    assert "Shopping MMLU scores" not in out and "pick_0_0" not in out  # no table of '-'
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("reason: pre-flight"))
    reason = lines[start:next(i for i, line in enumerate(lines) if line.startswith("requests:"))]
    assert all(len(line) <= 80 for line in reason) and len(reason) > 1
    joined = " ".join(reason)
    assert "ClientConnectorError: Cannot connect to host 127.0.0.1:9" in joined  # no word broken at a line end


def test_compare_names_its_metrics_and_prints_p_as_people_read_it(night_of_three, capsys, monkeypatch):
    from evaluator.reports.compare import p_text

    assert [p_text(p) for p in (1.0, 0.5, 0.0421, 0.0012, 0.0004, None)] == [
        "p=1.00", "p=0.50", "p=0.042", "p=0.001", "p<0.001", "-"]
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["compare", "Meta-Llama-3-70B-Instruct", "mixtral-8x7b-instruct-v0.1", "--cache", "c"],
                             capsys, monkeypatch)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.lstrip().startswith("task"))
    assert header.split()[:2] == ["task", "metric"]
    pick = next(line for line in out.splitlines() if line.lstrip().startswith("pick_0_0"))
    assert pick.split()[1] == "accuracy" and pick.split()[-1] == "p=1.00"  # the same answers: no difference
    assert "micro-f1" in out and "hit@3" in out and "rouge-l" in out


def test_notes_keep_the_whole_reason_in_the_files_and_say_a_shared_one_once(tmp_path):
    from evaluator.reports.leaderboard import notes

    reason = "the endpoint answered 503 " + "and then some more words " * 12 + "END"
    rows = [{"model": f"m{i}", "status": "failed", "answered": 0, "questions": 5, "unscored": 0, "skills_scored": 0,
             "skills_total": 4, "partial_skills": 0, "reason": reason} for i in range(8)]
    rows.append({**rows[0], "model": "half", "status": "incomplete", "answered": 3, "skills_scored": 2,
                 "partial_skills": 1, "reason": None})
    whole = notes(rows)
    assert whole[0] == f"* {', '.join(f'm{i}' for i in range(8))} (failed): 0/5 answered; {reason}"
    assert whole[1] == "* half (incomplete): 3/5 answered; 2/4 skills scored; 1 skill(s) scored on part of their tasks"
    assert notes(rows, names_shown=6)[0].startswith("* m0, m1, m2, m3, m4, m5 and 2 more (failed): ")


def test_a_models_folder_has_a_hash_suffix_only_where_names_collide():
    from evaluator.paths import folder_names

    names = ["meta-llama/Llama-3-8B", "gpt-4o", "org/x", "org_x", "ORG/X", "../..", "a b"]
    folders = folder_names(names)
    assert folders["meta-llama/Llama-3-8B"] == "meta-llama_Llama-3-8B" and folders["gpt-4o"] == "gpt-4o"
    assert folders["a b"] == "a_b"
    assert folders["org_x"] == "org_x"  # safe as it is: its own name
    assert re.fullmatch(r"org_x-[0-9a-f]{8}", folders["org/x"]) and re.fullmatch(r"ORG_X-[0-9a-f]{8}", folders["ORG/X"])
    assert re.fullmatch(r"model-[0-9a-f]{8}", folders["../.."])
    assert len({f.lower() for f in folders.values()}) == len(names)


def test_the_dry_run_shows_an_api_models_size_and_asks_no_price_of_a_server_of_ones_own(tmp_path, capsys,
                                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    mixed_data(tmp_path / "d.json")
    (tmp_path / "suite.toml").write_text('''[suite]
name = "mixed"
data = "d.json"
[models]
"cluster-llama" = { provider = "openai-compatible", model = "llama", api_base = "http://10.0.0.5:8000/v1", params_b = 70 }
"here-llama" = { provider = "openai-compatible", model = "llama", api_base = "http://127.0.0.1:8000/v1", params_b = 8 }
"node-llama" = { provider = "openai-compatible", model = "llama", api_base = "http://gpu17:8000/v1" }
"hosted-llama" = { provider = "openai-compatible", model = "llama", api_base = "https://api.example.com/v1", params_b = 405 }
''', encoding="utf-8")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["suite", "suite.toml", "--dry-run", "--cache", "c"], capsys, monkeypatch)
    assert code == 0, err
    sizes = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith(" - ")}
    assert sizes == {"cluster-llama": "70B", "here-llama": "8B", "node-llama": "-", "hosted-llama": "405B"}
    said = " ".join(out.split())
    assert "unknown for 1 API model(s) without prices in their profile (hosted-llama)" in said


def test_a_bounded_message_is_cut_after_a_whole_word():
    from evaluator.client.http import Reply
    from evaluator.errors import clip_words
    from evaluator.runs.breaker import Breaker, BreakerPolicy

    text = "Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)] " * 10
    cut = clip_words(text, 200)
    assert len(cut) <= 200 and cut.endswith("…") and text.startswith(cut[:-1]) and text[len(cut) - 1] == " "
    assert clip_words("short", 200) == "short"
    assert clip_words("x" * 500, 100) == "x" * 99 + "…"  # no space to cut at: still bounded

    breaker = Breaker(BreakerPolicy(consecutive=1))
    said = breaker.see(Reply(ok=False, attempts=1, latency_s=0.1, status=404, error_kind="http_error", message=text))
    assert said.endswith("…") and said.removesuffix("…").split()[-1] in text.split()  # a whole word last



def test_no_plus_minus_legend_where_no_score_carries_one(tmp_path, capsys, monkeypatch):
    """A run whose tasks have one question each has no known standard error: its leaderboard writes no ±,
    and so no legend for one; two questions a task give the ± and its legend."""
    from benchmarks.stubs.openai_stub import Stub
    from builders import run_cli, write_jsonl

    monkeypatch.setenv("COLUMNS", "80")
    for per_task, legend in ((1, False), (2, True)):
        data = write_jsonl(tmp_path / f"d{per_task}.json", [
            {"input_field": f"Q{t}-{i}\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": i % 4,
             "task_name": f"t{t}", "task_type": "multiple-choice", "metric": "accuracy"}
            for t in range(2) for i in range(per_task)])
        cache = tmp_path / f"c{per_task}"
        with Stub(answers=lambda body: "1") as stub:
            code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data,
                                    "--cache", cache], capsys, monkeypatch)
        assert code == 0, err
        code, out, err = run_cli(["report", "--cache", cache], capsys, monkeypatch)
        assert code == 0, err
        rows = [line for line in out.splitlines() if line.strip().startswith("1 m")]
        assert len(rows) == 1 and ("±" in rows[0]) is legend, out
        assert ("± standard error" in out) is legend, out
