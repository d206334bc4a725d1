"""`--choice-probs`: the first token's log-probabilities kept with each multiple-choice answer, and the view
scored from them (most probable valid choice, mass on valid choices) beside the official score, on loopback
servers that return them in OpenAI's shapes and ones that do not."""

from __future__ import annotations

import json
import math
import re

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl
from evaluator.cache.responses import ResponseCache
from evaluator.client.http import LOGPROBS_KEPT, first_token
from evaluator.scoring.choice_probs import labels_of, pick

N = 12


def data(tmp_path):
    rows = [{"input_field": f"MC question {i}?\n0. red\n1. green\n2. blue\n3. grey\nAnswer: ", "output_field": i % 4,
             "task_name": "pick", "task_type": "multiple-choice", "metric": "accuracy"} for i in range(N)]
    rows.append({"input_field": "Describe a towel.", "output_field": "a soft towel", "task_name": "describe",
                 "task_type": "generation", "metric": "rougel"})
    return write_jsonl(tmp_path / "d.json", rows)


def truth(body: dict) -> int:
    text = body.get("prompt") or body["messages"][-1]["content"]
    return int(re.search(r"MC question (\d+)\?", text).group(1)) % 4 if "MC question" in text else -1


def wordy(body: dict) -> str:
    """A chat model's habit: it writes a word first, so the official first-character score is 0."""
    return "The answer is " + str(truth(body)) if truth(body) >= 0 else "a soft towel"


def ranks_right(body: dict) -> dict[str, float]:
    """The right choice most probable (as " 2" and "2"), then a wrong one and a word."""
    right = truth(body)
    return {" " + str(right): math.log(0.5), str(right): math.log(0.2), str((right + 1) % 4): math.log(0.1),
            "The": math.log(0.15)}


@pytest.mark.parametrize("render", ["completion", "chat"])
def test_the_view_beside_the_official_score(tmp_path, capsys, monkeypatch, render):
    folder, cache = tmp_path / "out", tmp_path / "c"
    with Stub(answers=wordy, logprobs=ranks_right) as stub:
        code, out, err = run_cli(["run", "--model", "wordy", "--base-url", stub.base_url, "--data", data(tmp_path),
                                  "--cache", cache, "--render", render, "--choice-probs", "--output", folder],
                                 capsys, monkeypatch)
    assert code == 0, out + err
    results = json.loads((folder / "results.json").read_text())
    task = next(t for t in results["scores"]["tasks"] if t["task"] == "pick")
    assert task["score"] == 0.0  # the official score reads "T"
    view = results["choice_probabilities"]
    assert view["available"] and view["n"] == view["questions"] == N
    by_task = {t["task"]: t for t in view["tasks"]}
    official = {t["task"]: t for t in results["scores"]["tasks"]}
    assert (by_task["pick"]["score"], by_task["pick"]["from"]) == (1.0, "probabilities")  # read from " 2"
    assert by_task["describe"]["score"] == official["describe"]["score"] and by_task["describe"]["valid_mass"] is None
    assert view["valid_mass"] == pytest.approx(0.8) and by_task["pick"]["valid_mass"] == pytest.approx(0.8)
    skills = [s["score"] for s in view["skills"].values()]
    assert view["score"] == view["overall"]["score"] == sum(skills) / len(skills)  # aggregated as the official
    assert "mass on valid choices 0.8000" in " ".join(out.split())
    assert f"overall {view['score']:.4f}" in " ".join(out.split())
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    mc = [s for s in samples if s["task"] == "pick"]
    assert all(s["prob_choice"] == str(s["truth"]) and s["valid_mass"] == pytest.approx(0.8) for s in mc)
    assert [s["prob_choice"] for s in samples if s["task"] == "describe"] == [None]
    store = ResponseCache(cache / "responses")
    kept = store.db.execute("SELECT request, logprobs FROM answers").fetchall()
    store.close()
    asked = [json.loads(r) for r, lp in kept if lp is not None]
    assert len(asked) == N and all(("top_logprobs" in b) == (render == "chat") for b in asked)
    assert all("logprobs" not in json.loads(r) for r, lp in kept if lp is None)  # generation: not asked

    code, out, err = run_cli(["rescore", "--model", "wordy", "--data", data(tmp_path), "--cache", cache,
                              "--render", render, "--choice-probs", "--json", tmp_path / "r.json"], capsys, monkeypatch)
    assert code == 0, err
    assert f"overall {view['score']:.4f}" in " ".join(out.split())
    code, board, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    [row] = json.loads(board)
    assert (row["choice_probs_score"], row["choice_probs_n"], row["overall"]) == (view["score"], N,
                                                                                 results["scores"]["overall"]["score"])
    assert json.loads((tmp_path / "r.json").read_text())["choice_probabilities"]["score"] == view["score"]


def test_without_the_option_nothing_changes_and_a_server_without_logprobs_says_so(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "c"
    with Stub(answers=wordy) as stub:  # returns no log-probabilities, as Anthropic's API
        code, out, err = run_cli(["run", "--model", "wordy", "--base-url", stub.base_url, "--data", data(tmp_path),
                                  "--cache", cache, "--output", tmp_path / "plain"], capsys, monkeypatch)
        assert code == 0, err
        plain = json.loads((tmp_path / "plain" / "results.json").read_text())
        assert plain["choice_probabilities"] is None and plain["settings"]["variant"] == ""
        code, out, err = run_cli(["run", "--model", "wordy", "--base-url", stub.base_url, "--data", data(tmp_path),
                                  "--cache", cache, "--choice-probs", "--output", tmp_path / "probs"], capsys,
                                 monkeypatch)
    assert code == 0, err
    probs = json.loads((tmp_path / "probs" / "results.json").read_text())
    assert probs["settings"]["variant"] == "probs" and probs["requests"]["sent"] == N  # only the MC requests
    assert probs["choice_probabilities"]["available"] is False
    assert "no log-probabilities" in probs["choice_probabilities"]["note"]
    assert probs["scores"]["overall"]["score"] == plain["scores"]["overall"]["score"]
    code, board, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    assert sorted(r["variant"] for r in json.loads(board)) == ["", "probs"]  # two rankings, never mixed


def test_hostile_log_probabilities_are_bounded_or_dropped():
    many = {"choices": [{"text": "1", "logprobs": {"top_logprobs": [{f"t{i}": -i / 10 for i in range(500)}]}}]}
    kept = json.loads(first_token(json.dumps(many).encode(), chat=False))
    assert len(kept) == LOGPROBS_KEPT and list(kept)[0] == "t0"
    bad = {"choices": [{"text": "1", "logprobs": {"top_logprobs": [{"a": "x", "b": 3.0, "c": True, "d" * 500: -1.0,
                                                                     "\ud800": -1.0}]}}]}
    assert first_token(json.dumps(bad).encode(), chat=False) is None
    for payload in (b"not json", b'{"choices": []}', b'{"choices": [{"logprobs": null}]}',
                    b'{"choices": [{"logprobs": {"content": "x"}}]}', b"[" * 100_000):
        assert first_token(payload, chat=True) is None and first_token(payload, chat=False) is None
    assert first_token(b'{"choices": [{"logprobs": {"top_logprobs": [{"1": 1e999}]}}]}', chat=False) is None


def test_labels_and_picks():
    assert labels_of("Q?\n0. a\n1. b\n2. c\nAnswer: ") == ["0", "1", "2"]
    assert labels_of("Which?\n(A) x\n(B) y\n(C) z\n(D) w") == ["A", "B", "C", "D"]
    assert labels_of("Rate it on a scale of 1 to 5.\nOutput:\nAnswer: ") == ["1", "2", "3", "4", "5"]
    assert labels_of("I bought 2 packs.\n3 of them broke") == []
    top = json.dumps({" 1": math.log(0.3), "1": math.log(0.1), "2": math.log(0.35), "x": math.log(0.2)})
    assert pick(top, ["0", "1", "2"]) == ("1", pytest.approx(0.75))  # " 1" and "1" add up past "2"
    assert pick(json.dumps({"x": -0.1}), ["0", "1"]) == (None, 0.0)
    assert pick(None, ["0"]) == (None, None)


def hostile_logprobs(body: dict) -> object:
    """A different malformed `logprobs` per question (by its number), in both shapes: a huge integer, a
    5,000-digit one (past Python's int limit), a string, a bool, null, a positive number, wrong nesting."""
    n = truth_row(body)
    chat = "messages" in body
    bad_values = ["9" * 350, "-" + "9" * 350, "9" * 5000, '"x"', "true", "null", "3.5", "[1]", '{"a": 1}']
    shapes = ["not an object", 42, [], {"content": "x"}, {"top_logprobs": "x"}, {"content": [{}]},
              {"top_logprobs": [[1, 2]]}, {"content": [{"top_logprobs": {"2": -0.1}}]}, {"top_logprobs": [None]}]
    if n % 2 == 0:  # the right shape, one value that is no log-probability (JSON text, spliced in)
        value = bad_values[(n // 2) % len(bad_values)]
        if chat:
            return ('{"content": [{"token": "2", "logprob": -0.1, "top_logprobs": [{"token": "2", "logprob": %s}, '
                    '{"token": "1", "logprob": -2.0}]}]}' % value).encode()
        return ('{"tokens": ["2"], "token_logprobs": [-0.1], "top_logprobs": [{"2": %s, "1": -2.0}]}'
                % value).encode()
    return shapes[(n // 2) % len(shapes)]


def truth_row(body: dict) -> int:
    text = body.get("prompt") or body["messages"][-1]["content"]
    return int(re.search(r"MC question (\d+)\?", text).group(1))


def right_or_wrong(body: dict) -> str:
    """Right on every third question, so the official score is neither 0 nor 1."""
    if truth(body) < 0:
        return "a soft towel"
    return str(truth(body)) if truth_row(body) % 3 == 0 else str((truth(body) + 1) % 4)


@pytest.mark.parametrize("render", ["completion", "chat"])
def test_unreadable_log_probabilities_never_cost_the_official_answer(tmp_path, capsys, monkeypatch, render):
    """Issue 27.1: a huge integer made `math.isfinite` raise and the whole reply an error; any malformed
    `logprobs` now leaves the answer as it is and only that question's view unavailable."""
    monkeypatch.chdir(tmp_path)
    n = 36
    rows = [{"input_field": f"MC question {i}?\n0. red\n1. green\n2. blue\n3. grey\nAnswer: ",
             "output_field": i % 4, "task_name": "pick", "task_type": "multiple-choice", "metric": "accuracy"}
            for i in range(n)]
    write_jsonl(tmp_path / "d.json", rows)
    with Stub(answers=right_or_wrong) as stub:
        code, _, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", "d.json", "--cache",
                                "plain", "--render", render, "--output", "plain-out"], capsys, monkeypatch)
    assert code == 0, err
    with Stub(answers=right_or_wrong, raw_logprobs=hostile_logprobs) as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", "d.json", "--cache",
                                  "probs", "--render", render, "--choice-probs", "--output", "probs-out"],
                                 capsys, monkeypatch)
    assert code == 0, out + err
    plain = json.loads((tmp_path / "plain-out" / "results.json").read_text())
    probs = json.loads((tmp_path / "probs-out" / "results.json").read_text())
    assert probs["status"] == "complete" and probs["requests"]["errors"] == 0
    assert probs["scores"]["overall"]["score"] == plain["scores"]["overall"]["score"]  # to the last digit
    assert [t["score"] for t in probs["scores"]["tasks"]] == [t["score"] for t in plain["scores"]["tasks"]]
    assert probs["choice_probabilities"]["available"] is False and probs["choice_probabilities"]["n"] == 0
    store = ResponseCache(tmp_path / "probs" / "responses")
    assert store.db.execute("SELECT count(*), count(logprobs) FROM answers").fetchone() == (n, 0)
    store.close()


def test_a_foreign_cache_row_of_log_probabilities_gives_no_view():
    for kept in ("[1, 2]", '"x"', '{"1": 1e400}', '{"1": 5}', '{"1": "x"}', '{"1": -0.1, "2": null}', "[" * 10_000,
                 '{"1": ' + "9" * 500 + "}"):
        assert pick(kept, ["1", "2"]) == (None, None), kept


def reasoning_profiles(tmp_path, base_url: str) -> None:
    """Two OpenAI reasoning-model profiles on the stub: effort low (refused log-probabilities) and none."""
    text = "".join(f'[models.{name}]\nprovider = "openai"\nmodel = "gpt-r"\napi_base = "{base_url}"\n'
                   f'api_key_env = "OPENAI_API_KEY"\nrendering = "chat"\nreasoning = true\n'
                   f'reasoning_effort = "{effort}"\nreasoning_budget = 64\n'
                   for name, effort in (("thinker", "low"), ("quick", "none")))
    (tmp_path / "profiles.toml").write_text(text, encoding="utf-8")


def reasoning_stub(bodies: list) -> Stub:
    """The stub as OpenAI serves a reasoning model: log-probabilities refused unless reasoning_effort is none."""
    def answer(body: dict) -> str:
        bodies.append(body)
        return right_or_wrong(body)

    stub = Stub(answers=answer, logprobs=ranks_right)
    stub.reasoning = True
    return stub


def test_a_reasoning_model_is_never_asked_for_log_probabilities_it_cannot_give(tmp_path, capsys, monkeypatch):
    """Issue 26.5: OpenAI refuses `logprobs` from a reasoning model unless its effort is none; five such 400s
    tripped the breaker and failed the model. A profile that cannot give them is not asked; one that can is."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-for-a-reasoning-profile")
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", "profiles.toml")
    write_jsonl(tmp_path / "d.json", [{"input_field": f"MC question {i}?\n0. red\n1. green\n2. blue\n3. grey\n"
                                                      "Answer: ", "output_field": i % 4, "task_name": "pick",
                                       "task_type": "multiple-choice", "metric": "accuracy"} for i in range(N)])
    bodies: list[dict] = []
    with reasoning_stub(bodies) as stub:
        reasoning_profiles(tmp_path, stub.base_url)
        docs = {}
        for model, probs in (("thinker", False), ("thinker", True), ("quick", True)):
            name = f"{model}-{'probs' if probs else 'plain'}"
            code, out, err = run_cli(["run", "--model", model, "--data", "d.json", "--cache", "cache", "--json",
                                      f"{name}.json", *(["--choice-probs"] if probs else [])], capsys, monkeypatch)
            assert code == 0, out + err
            docs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    thinker = [b for b in bodies if b.get("reasoning_effort") == "low"]
    assert thinker and not any("logprobs" in b or "top_logprobs" in b for b in thinker)  # never asked
    assert docs["thinker-probs"]["status"] == "complete" and docs["thinker-probs"]["errors"] == 0
    assert docs["thinker-probs"]["overall"]["score"] == docs["thinker-plain"]["overall"]["score"]
    view = docs["thinker-probs"]["choice_probabilities"]
    assert view["available"] is False and view["note"].startswith("not available for this model")
    assert docs["thinker-probs"]["requests"]["sent"] == 0  # the same requests as the official run: its answers
    assert docs["quick-probs"]["choice_probabilities"]["available"] is True  # effort none: asked, and given
    assert all(b["logprobs"] is True for b in bodies if b.get("reasoning_effort") == "none")


def test_a_400_naming_logprobs_asks_the_question_again_without_them(tmp_path, capsys, monkeypatch):
    """A model the profile does not know to be a reasoning one (an ad hoc name): the first 400 naming
    `logprobs` is followed by the same question without them; the rest of the fan-out is sent without them,
    the breaker never sees a refusal, the official score is the run's without --choice-probs, to the digit,
    and the view (rescored too) says it is not available for this model."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.json", [{"input_field": f"MC question {i}?\n0. red\n1. green\n2. blue\n3. grey\n"
                                                      "Answer: ", "output_field": i % 4, "task_name": "pick",
                                       "task_type": "multiple-choice", "metric": "accuracy"} for i in range(N)])
    bodies: list[dict] = []
    with reasoning_stub(bodies) as stub:
        base = ["--model", "r", "--data", "d.json", "--cache", "cache", "--render", "chat"]
        code, out, err = run_cli(["run", *base, "--base-url", stub.base_url, "--json", "plain.json"], capsys,
                                 monkeypatch)
        assert code == 0, out + err
        code, out, err = run_cli(["run", *base, "--base-url", stub.base_url, "--json", "probs.json",
                                  "--choice-probs", "--concurrency", "1", "--stop-after-failures", "1"],
                                 capsys, monkeypatch)
    assert code == 0, out + err
    plain, probs = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "probs"))
    assert probs["status"] == "complete" and probs["errors"] == 0
    assert probs["overall"]["score"] == plain["overall"]["score"]
    assert 1 <= sum("logprobs" in b for b in bodies) <= 2  # pre-flight's refusal, then the fan-out's first
    assert probs["choice_probabilities"]["note"].startswith("not available for this model: its endpoint refused")
    code, out, err = run_cli(["rescore", *base, "--choice-probs", "--json", "again.json"], capsys, monkeypatch)
    assert code == 0, err
    again = json.loads((tmp_path / "again.json").read_text())["choice_probabilities"]
    assert again["available"] is False and "its endpoint refused" in again["note"]


def test_a_batch_line_with_an_unreadable_log_probability_keeps_its_answer():
    """The same through OpenAI's batch output: the log-probability's OverflowError stopped reading the whole
    batch's results (every question an error row); now the answer is kept without the view."""
    from evaluator.client.batch.openai_batch import _result

    top = '[{"token": "2", "logprob": %s}]' % ("9" * 350)
    line = ('{"custom_id": "k", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "2"}, '
            '"finish_reason": "stop", "logprobs": {"content": [{"token": "2", "logprob": -0.1, "top_logprobs": %s}]}}]}}}'
            % top)
    [(key, reply)] = list(_result(line.encode(), chat=True))
    assert (key, reply.ok, reply.text, reply.logprobs) == ("k", True, "2", None)


@pytest.mark.parametrize("protocol", ["skill", "task"])
@pytest.mark.parametrize("prefix", ["\u00a0", "\n"])
def test_the_view_reads_a_token_as_the_official_scorer_reads_the_answer(tmp_path, capsys, monkeypatch, protocol,
                                                                        prefix):
    """A model that writes (and ranks first) the right digit after a no-break space or a newline: skill-wise
    the official scorer strips only " " and reads that character (0), task-wise it takes the first digit (1);
    the view read every token with str.strip() and gave 1 either way."""
    monkeypatch.chdir(tmp_path)
    def prefixed(body: dict) -> str:
        return prefix + str(truth(body)) if truth(body) >= 0 else "a soft towel"

    with Stub(answers=prefixed, logprobs=lambda body: {prefixed(body): math.log(0.9)}) as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data(tmp_path),
                                  "--cache", "c", "--protocol", protocol, "--choice-probs",
                                  "--output", tmp_path / "o"], capsys, monkeypatch)
    assert code == 0, out + err
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    official = next(t["score"] for t in results["scores"]["tasks"] if t["task"] == "pick")
    assert official == (0.0 if protocol == "skill" else 1.0)
    view = results["choice_probabilities"]
    assert view["n"] == N
    assert next(t["score"] for t in view["tasks"] if t["task"] == "pick") == official


def test_log_probabilities_past_the_reply_cap_never_cost_the_official_answer(tmp_path, capsys, monkeypatch):
    """Red-team finding 1: a `logprobs` field over 1 MiB (sent only when asked) made every multiple-choice reply
    'oversized', an error row, and the breaker stopped the model; the question is now asked again without them."""
    monkeypatch.chdir(tmp_path)
    huge = (b'{"tokens": ["0"], "token_logprobs": [-0.1], "top_logprobs": ['
            + b",".join(b'{"%d": -0.1}' % i for i in range(100_000)) + b'], "text_offset": [0]}')
    runs = {}
    for name, extra in (("plain", []), ("probs", ["--choice-probs"])):
        with Stub(answers=right_or_wrong, raw_logprobs=lambda body: huge) as stub:
            code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data(tmp_path),
                                      "--cache", name, "--output", name + "-out", *extra], capsys, monkeypatch)
        assert code == 0, out + err
        runs[name] = json.loads((tmp_path / (name + "-out") / "results.json").read_text())
    probs, plain = runs["probs"], runs["plain"]
    assert probs["status"] == "complete" and probs["requests"]["errors"] == 0
    assert probs["scores"] == plain["scores"]  # to the last digit
    assert probs["choice_probabilities"]["available"] is False
