"""k-shot prompting: the examples' format byte for byte, how they are drawn, and runs, suites, the report and
`compare` on loopback stubs (issue 21, item 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl

from benchmarks.stubs.openai_stub import Stub
from builders import question, run_cli, write_jsonl
from evaluator.data.records import Metric, Question, TaskType
from evaluator.prompts import PromptOptions, Protocol, Rendering, draw_shots, gold_answer, render, template
from evaluator.runs.planning import plan
from evaluator.runs.settings import RunConfig
from evaluator.scoring import ScoringOptions, score
from servers.profiles import ModelProfile

SYSTEM = template("system")
STUB = ModelProfile(name="stub", model="m", provider="openai-compatible", api_base="http://127.0.0.1:9/v1")
MC = Question(qid="attribute_selection-1", source="mem", row=0, skill="s", task="attribute_selection",
              task_type=TaskType.MULTIPLE_CHOICE, metric=Metric.ACCURACY, input="Pick one", truth=1,
              choices=["a", "b", "c", "d"])
GEN = Question(qid="attribute_extraction-1", source="mem", row=1, skill="s", task="attribute_extraction",
               task_type=TaskType.GENERATION, metric=Metric.ROUGEL, input="Extract it\nOutput: ", truth="red")

# Keys and variants computed by the code before k-shot prompting existed (commit aa4c935): a zero-shot run must
# keep hitting the answers cached then.
KEYS_BEFORE_SHOTS = {
    ("skill", "completion"): ["8e9307848f4e128cad83f276f8ba72ed72dc4e48dc9bb249c0db14ff6bd7af9a",
                              "c4eb46a1054eeb7ac5109038aa51cf37bc867d316529ef0b3090f767dd5a6154"],
    ("skill", "chat"): ["93bcf68f0c63ed9b75c2bb6c37d2f38bd72ee1ddb82e1767f691d76d03a68365",
                        "406bc9679beb7ef6139b11d08cfaab58b6fcecae5b0f34838e79ac30ce0d3a5c"],
    ("task", "completion"): ["30d850ed204413b0e4424270d54bc2df97edde909523db8e985b79cb0a3c158d",
                             "c1c7bc67a2f277278debc71b5105bbf0402b8d9ab7789c86f8c8746c75789d87"],
    ("task", "chat"): ["fdfb481b3a32820b022feb05632bdb07b6812e1f6549d93a8bd229618fded070",
                       "96069542c2d66f4d0b1e0400710f8cb790409c0976baba399cc4714ec1e87862"],
}


def test_zero_shots_leave_every_key_and_variant_as_it_was():
    for (protocol, rendering), keys in KEYS_BEFORE_SHOTS.items():
        config = RunConfig(profile=STUB, data=Path("x"), protocol=Protocol(protocol), rendering=Rendering(rendering))
        planned = plan([MC, GEN], config)
        assert [p.key for p in planned] == keys and config.variant == ""
        assert [p.shots for p in planned] == [0, 0]
        shot = RunConfig(profile=STUB, data=Path("x"), protocol=Protocol(protocol), rendering=Rendering(rendering),
                         shots=1)
        assert [p.key for p in plan([MC, GEN], shot, [MC, GEN])] == keys  # a task with no other question
        assert shot.variant == "1-shot"


def mc(text: str, truth: int, choices: list[str], row: int = 0, task: str = "attribute_selection") -> Question:
    return question("accuracy", truth, task=task, text=text, row=row, choices=choices)


def test_a_multiple_choice_k_shot_prompt_byte_for_byte():
    target = mc("Pick one", 1, ["a", "b", "c", "d"], row=0)
    first = mc("Which colour?", 3, ["red", "green", "blue", "black"], row=1)
    second = mc("Which size?", 0, ["S", "M", "L", "XL"], row=2)
    prompt = render(target, Protocol.TASK, shots=[first, second]).prompt
    assert prompt == (SYSTEM
                      + "Which colour?\n0. red\n1. green\n2. blue\n3. black\nAnswer: 3\n\n"
                      + "Which size?\n0. S\n1. M\n2. L\n3. XL\nAnswer: 0\n\n"
                      + "Pick one\n0. a\n1. b\n2. c\n3. d\nAnswer: ")
    letters = render(target, Protocol.TASK, options=PromptOptions(letter_choices=True), shots=[first]).prompt
    instruction = "\n\nPlease answer the question with a single letter indicating the choice. \nAnswer: "
    assert letters == (SYSTEM + "Which colour?\n(A) red\n(B) green\n(C) blue\n(D) black" + instruction + "D\n\n"
                       + "Pick one\n(A) a\n(B) b\n(C) c\n(D) d" + instruction)
    chat = render(target, Protocol.TASK, Rendering.CHAT, shots=[first, second]).messages
    assert chat == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt[len(SYSTEM):]}]
    # through the run's planning: each question's example is the other one (a task of two)
    config = RunConfig(profile=STUB, data=Path("x"), protocol=Protocol.TASK, shots=1)
    bodies = [p.body["prompt"] for p in plan([target, first], config)]
    assert bodies == [SYSTEM + "Which colour?\n0. red\n1. green\n2. blue\n3. black\nAnswer: 3\n\n"
                      + "Pick one\n0. a\n1. b\n2. c\n3. d\nAnswer: ",
                      SYSTEM + "Pick one\n0. a\n1. b\n2. c\n3. d\nAnswer: 1\n\n"
                      + "Which colour?\n0. red\n1. green\n2. blue\n3. black\nAnswer: "]


def test_a_generation_k_shot_prompt_byte_for_byte():
    target = question("rougel", "red", task="attribute_extraction", text="Title: Red mug\nOutput: ", row=0)
    example = question("rougel", ["blue", "navy"], task="attribute_extraction", text="Title: Blue cup\nOutput: ",
                       row=1)
    assert render(target, shots=[example]).prompt == (SYSTEM + "Title: Blue cup\nOutput: blue\n\n"
                                                      + "Title: Red mug\nOutput: ")
    review = question("accuracy", 5, task="review_rating_prediction", text="Rate: great!", row=2, choices=[])
    assert render(review, Protocol.TASK, shots=[review]).prompt == (
        SYSTEM + "Rate: great!\nAnswer: 5\n\n" + "Rate: great!\nAnswer: ")


def test_gold_answers_get_full_marks_from_the_official_scorers():
    examples = [mc("Pick", 2, ["a", "b", "c", "d"]),
                question("hit rate@3", [6, 9, 15], task="keyphrase_retrieval", text="r"),
                question("ndcg", [1, 0.01, 0.1, 1, 0], task="query_product_ranking", text="k"),
                question("micro f1", ["cadbury", "xmas"], task="query_ner", text="n"),
                question("rougel", "super comfortable", task="attribute_extraction", text="g")]
    golds = [gold_answer(q, PromptOptions()) for q in examples]
    assert golds == ["2", "6, 9, 15", "1, 4, 3, 2, 5", "cadbury, xmas", "super comfortable"]
    examples = [q.model_copy(update={"row": n}) for n, q in enumerate(examples)]
    outputs = pl.DataFrame({"row": pl.Series(range(len(golds)), dtype=pl.UInt32), "output": golds})
    for protocol in (Protocol.SKILL, Protocol.TASK):
        tasks = score(outputs, examples, ScoringOptions(protocol=protocol)).tasks
        assert tasks["score"].to_list() == [1.0] * len(examples), protocol


def task_of(n: int, task: str = "t") -> list[Question]:
    return [question("accuracy", i % 4, task=task, text=f"Q{i}\n0. a\n1. b\n2. c\n3. d\nAnswer: ", row=i)
            for i in range(n)]


def test_the_question_is_never_among_its_shots_and_repeats_count_as_it():
    questions = task_of(6)
    repeat = questions[2].model_copy(update={"qid": questions[2].qid + "#2", "row": 6})
    questions.append(repeat)
    drawn = draw_shots(questions, questions, 10)
    for q in questions:
        ids = {e.qid.split("#")[0] for e in drawn[q.qid]}
        assert q.qid.split("#")[0] not in ids
        assert len(drawn[q.qid]) == 5  # 6 distinct questions: every other one
        assert len(ids) == len(drawn[q.qid])  # a repeated question is one example, not two
    config = RunConfig(profile=STUB, data=Path("x"), shots=5)
    for item, q in zip(plan(questions, config), questions):
        assert item.body["prompt"].count(q.input) == 1 and item.shots == 5


def test_a_pool_that_is_the_data_file_itself_never_gives_a_question_itself(tmp_path):
    from evaluator.runs.planning import load_and_plan

    data = skill_data(tmp_path / "d.json", per_task=3)
    config = RunConfig(profile=STUB, data=data, shots=5, shot_pool=data)
    _, questions, planned = load_and_plan(config)
    for item, q in zip(planned, questions):
        assert item.body["prompt"].count(q.input) == 1 and item.shots == 2


def test_the_same_seed_draws_the_same_shots_and_another_seed_others():
    questions = task_of(20) + task_of(20, task="u")
    ids = lambda drawn: {k: [e.qid for e in v] for k, v in drawn.items()}  # noqa: E731
    first = ids(draw_shots(questions, questions, 3, seed=0))
    assert first == ids(draw_shots(questions, questions, 3, seed=0))
    assert first == ids(draw_shots(questions, list(reversed(questions)), 3, seed=0))  # file order does not matter
    assert first != ids(draw_shots(questions, questions, 3, seed=1))
    # a task's questions share their examples (one prefix), except those that are one of them
    shared = [tuple(v) for k, v in first.items() if k.startswith("t-")]
    assert max(shared.count(s) for s in shared) >= 17
    assert all(all(e.startswith(q.task) for e in first[q.qid]) for q in questions)  # never another task's


def skill_data(path: Path, per_task: int = 8, tasks: tuple[str, ...] = ("concept", "reasoning", "behavior",
                                                                          "multilingual")) -> Path:
    return write_jsonl(path, [{"input_field": f"MC question {i} of {skill}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ",
                               "output_field": i % 4, "task_name": f"{skill}_task", "task_type": "multiple-choice",
                               "metric": "accuracy", "track": skill}
                              for skill in tasks for i in range(per_task)])


def answers_better_with_shots(body: dict) -> str:
    """Right on every question when shown examples; zero-shot, right on even-numbered questions only."""
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    i = int(re.findall(r"MC question (\d+) of", prompt)[-1])
    shown = prompt.count("Answer: ") > 1
    return str(i % 4) if shown or i % 2 == 0 else str((i + 1) % 4)


def test_zero_and_three_shot_runs_rank_apart_and_compare_gives_the_gain(tmp_path, capsys, monkeypatch):
    data, cache = skill_data(tmp_path / "d.json"), tmp_path / "cache"
    with Stub(answers=answers_better_with_shots) as stub:
        base = ["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", cache]
        code, _, err = run_cli([*base, "--output", tmp_path / "zero"], capsys, monkeypatch)
        assert code == 0, err
        sent = sum(stub.seen.values())
        code, _, err = run_cli([*base, "--shots", "3", "--output", tmp_path / "three"], capsys, monkeypatch)
        assert code == 0, err
        assert sum(stub.seen.values()) == 2 * sent == 64  # other prompts, other keys: every question asked again
        code, printed, _ = run_cli([*base, "--shots", "3"], capsys, monkeypatch)
        assert sum(stub.seen.values()) == 64 and "nothing to send" in printed
    zero = json.loads((tmp_path / "zero" / "results.json").read_text())
    three = json.loads((tmp_path / "three" / "results.json").read_text())
    assert zero["settings"]["variant"] == "" and zero["settings"]["shots"] == {"k": 0}
    assert three["settings"]["variant"] == "3-shot"
    assert three["settings"]["shots"] == {"k": 3, "seed": 0, "pool": "the run's own data",
                                          "pool_sha256": three["data"]["dataset_sha256"], "short_tasks": {}}
    assert zero["scores"]["overall"]["score"] == 0.5 and three["scores"]["overall"]["score"] == 1.0
    code, out, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0 and sorted((r["variant"], r["rank"]) for r in rows) == [("", 1), ("3-shot", 1)]
    assert len({r["group"] for r in rows}) == 2
    code, _, err = run_cli(["compare", "m", "--cache", cache], capsys, monkeypatch)
    assert code == 2 and "two variants" in err
    code, out, err = run_cli(["compare", "m", "--cache", cache, "--shots", "3", "0"], capsys, monkeypatch)
    assert code == 0, err
    assert "m [3-shot] − m [official prompt]" in out
    overall = next(line for line in out.splitlines() if line.strip().startswith("overall"))
    assert "+0.500" in overall and "1.000" in overall and "0.500" in overall
    for skill in ("concept", "reasoning", "behavior", "multilingual"):
        line = next(line for line in out.splitlines() if line.strip().startswith(skill))
        assert "+0.500" in line
    code, again, _ = run_cli(["compare", "m", "--cache", cache, "--variant-a", "3-shot", "--variant-b", ""],
                             capsys, monkeypatch)
    assert code == 0 and again == out
    code, _, err = run_cli(["compare", "m", "--cache", cache, "--shots", "5", "0"], capsys, monkeypatch)
    assert code == 2 and "at 5 and 0 shots" in err


def test_a_task_with_fewer_examples_uses_all_it_has_and_says_so(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "d.json", [
        *[{"input_field": f"MC question {i} of big?\nAnswer: ", "output_field": 1, "task_name": "big",
           "task_type": "multiple-choice", "metric": "accuracy"} for i in range(5)],
        *[{"input_field": f"MC question {i} of small?\nAnswer: ", "output_field": 1, "task_name": "small",
           "task_type": "multiple-choice", "metric": "accuracy"} for i in range(2)]])
    with Stub() as stub:
        code, printed, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache",
                                      tmp_path / "c", "--shots", "3", "--output", tmp_path / "out",
                                      "--allow-incomplete"], capsys, monkeypatch)
    assert code == 0, err
    assert "warning: task small has 1 example(s) to draw from, not 3" in " ".join(printed.split())
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["settings"]["shots"]["short_tasks"] == {"small": 1} and doc["settings"]["variant"] == "3-shot"
    inspect = ["inspect", "--model", "m", "--task", "small", "--data", data, "--cache", tmp_path / "c"]
    code, out, err = run_cli([*inspect, "--shots", "3"], capsys, monkeypatch)
    assert code == 0 and "MC question 1 of small?" in out, err
    code, _, err = run_cli(inspect, capsys, monkeypatch)  # zero-shot: other prompts, never asked
    assert code == 2 and "no answer" in err


def test_a_named_pool_is_part_of_the_variant_and_rescore_and_compare_rebuild_it(tmp_path, capsys, monkeypatch):
    data, cache = skill_data(tmp_path / "d.json"), tmp_path / "cache"
    pool = skill_data(tmp_path / "pool.json", per_task=4)
    pool_text = pool.read_text(encoding="utf-8")
    with Stub(answers=answers_better_with_shots) as stub:
        base = ["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", cache]
        assert run_cli([*base, "--json", tmp_path / "zero.json"], capsys, monkeypatch)[0] == 0
        code, _, err = run_cli([*base, "--shots", "2", "--shot-pool", pool, "--shot-seed", "7",
                                "--output", tmp_path / "pooled"], capsys, monkeypatch)
        assert code == 0, err
        sent = sum(stub.seen.values())
    doc = json.loads((tmp_path / "pooled" / "results.json").read_text())
    from evaluator.data import loaders

    digest = loaders.load(pool).sha256
    assert doc["settings"]["variant"] == f"2-shot+seed-7+pool-{digest[:12]}"
    assert doc["settings"]["shots"]["pool_sha256"] == digest and doc["settings"]["shots"]["pool"] == str(pool)
    # rescore with the same options finds every answer (nothing to send: the same prompts)
    code, _, err = run_cli(["rescore", "--model", "m", "--data", data, "--cache", cache, "--shots", "2",
                            "--shot-pool", pool, "--shot-seed", "7", "--json", tmp_path / "re.json"],
                           capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((tmp_path / "re.json").read_text())["overall"]["score"] == doc["scores"]["overall"]["score"]
    assert doc["scores"]["overall"]["score"] == 1.0
    assert sent == 64
    code, out, err = run_cli(["compare", "m", "--cache", cache, "--shots", "2", "0"], capsys, monkeypatch)
    assert code == 0 and "+0.500" in out, err
    pool.write_text(pool_text.replace("MC question 0", "MC question 9"), encoding="utf-8")  # the pool changed
    code, _, err = run_cli(["compare", "m", "--cache", cache, "--shots", "2", "0"], capsys, monkeypatch)
    assert code == 2 and "has changed since it was scored" in err


def test_bad_shot_options_and_pools_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    data = skill_data(tmp_path / "d.json")
    base = ["run", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--data", data, "--cache", tmp_path / "c"]
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text('{"input_field": "x", "output_field": 1, "task_name": "t"\n', encoding="utf-8")
    cases = [(["--shot-seed", "3"], "give --shots K"),
             (["--shot-pool", data], "give --shots K"),
             (["--shots", "65"], "--shots"),
             (["--shots", "2", "--shot-pool", tmp_path / "missing.json"], "no such file"),
             (["--shots", "2", "--shot-pool", empty], "empty.json"),
             (["--shots", "2", "--shot-pool", broken], "broken.json")]
    for extra, expected in cases:
        code, _, err = run_cli([*base, *extra], capsys, monkeypatch)
        assert code == 2 and expected in err and "Traceback" not in err, (extra, err)


def test_a_suite_mixing_shots_ranks_them_apart(tmp_path, capsys, monkeypatch):
    data, cache = skill_data(tmp_path / "d.json"), tmp_path / "cache"
    with Stub(answers=answers_better_with_shots) as stub:
        entry = f'provider = "openai-compatible", model = "m", api_base = "{stub.base_url}"'
        suite = tmp_path / "mixed.toml"
        suite.write_text(f'[suite]\nname = "mixed"\ndata = "{data}"\n[models]\n'
                         f'"m" = {{ {entry} }}\n"m-3shot" = {{ {entry}, shots = 3 }}\n'
                         f'"n-3shot" = {{ {entry}, shots = 3, shot_seed = 1 }}\n', encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", cache, "--output", tmp_path / "night"], capsys,
                                 monkeypatch)
        assert code == 0, out + err
    code, out, _ = run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)
    rows = {r["model"]: r for r in json.loads(out)}
    assert {m: (r["variant"], r["rank"], r["overall"]) for m, r in rows.items()} == {
        "m": ("", 1, 0.5), "m-3shot": ("3-shot", 1, 1.0), "n-3shot": ("3-shot+seed-1", 1, 1.0)}
    code, out, err = run_cli(["compare", "m-3shot", "m", "--cache", cache, "--shots", "3", "0"], capsys, monkeypatch)
    assert code == 0 and "+0.500" in out, err
    bad = tmp_path / "bad.toml"
    for models, field in (('"m" = { model = "m", provider = "openai-compatible", shot_seed = 2 }', "models.m.shots"),
                          ('"m" = { model = "m", provider = "openai-compatible", shots = -1 }', "models.m.shots"),
                          ('"m" = { model = "m", provider = "openai-compatible", shots = 2, shot_pool = "nope" }',
                           "models.m.shot_pool")):
        bad.write_text(f'[suite]\ndata = "{data}"\n[models]\n{models}\n', encoding="utf-8")
        code, _, err = run_cli(["suite", bad, "--dry-run"], capsys, monkeypatch)
        assert code == 2 and field in err, err
    bad.write_text(f'[suite]\ndata = "{data}"\nshots = 100\n[models]\n"m" = {{ {entry} }}\n', encoding="utf-8")
    code, _, err = run_cli(["suite", bad, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and "suite.shots" in err, err


def test_a_suite_fits_a_local_models_context_to_its_k_shot_prompts(tmp_path):
    from evaluator.runs.suite import fit_context
    from servers.suite import load_suite
    from test_suite import qwen_like

    weights = qwen_like(tmp_path / "qwen")
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": f"{i} " + "word " * 1500, "output_field": "x", "task_name": "g", "task_type": "generation",
         "metric": "rougel"} for i in range(4)])
    suite_file = tmp_path / "s.toml"
    entry = f'model = "{weights}", params_b = 7.7, dtype = "bfloat16"'
    suite_file.write_text(f'[suite]\ndata = "{data}"\n[models]\nzero = {{ {entry} }}\n'
                          f'three = {{ {entry}, shots = 3 }}\n', encoding="utf-8")
    lengths = {m.name: m.max_model_len for m in fit_context(load_suite(suite_file)).models}
    # 7,500 characters a question (<= 3,750 tokens): one of them zero-shot, four with 3 examples (~15,100 tokens
    # with the system prompt and the chat template's allowance), plus 100 to generate, rounded up to 1,024
    assert lengths == {"zero": 4096, "three": 15360}


def test_the_dry_run_counts_a_k_shot_models_examples(tmp_path, capsys, monkeypatch):
    """The plan's input-token estimate of a 3-shot model includes its examples (it counted the zero-shot
    prompts before): four questions' text beside one system prompt, each."""
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Question number {i}? " + "word " * 30,
                                             "output_field": "an answer", "task_name": "t", "task_type": "generation",
                                             "metric": "rougel"} for i in range(12)])
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\ndata = "{data}"\n[models]\n'
                     'zero = { provider = "openai-compatible", model = "z", api_base = "http://127.0.0.1:9/v1" }\n'
                     'three = { provider = "openai-compatible", model = "t", api_base = "http://127.0.0.1:9/v1", '
                     'shots = 3 }\n', encoding="utf-8")
    code, out, err = run_cli(["suite", suite, "--dry-run"], capsys, monkeypatch)
    assert code == 0, err
    tokens = {line.split()[1]: int(re.search(r"([\d,]+)/", line).group(1).replace(",", ""))
              for line in out.splitlines() if re.match(r"\s*- (zero|three) ", line)}
    # each example adds another question's text and its answer (4 characters a token): three of them, not two
    # or four, give the difference within half an example a request
    example = sum(len(f"Question number {i}? " + "word " * 30 + "an answer") for i in range(12)) / 12 / 4
    assert abs(tokens["three"] - tokens["zero"] - 12 * 3 * example) < 12 * example / 2, (tokens, example)


# A digest of the 3-shot keys of ten questions (two tasks, no input repeated), as the code before issue 27.2
# computed them (commit 40d4801): comparing questions by what the model sees changes no k-shot prompt where no
# pool row repeats the asked question.
KEYS_3_SHOT = {("skill", "completion"): "a8418e299208a73f0ba36ffb278a548bf3c222595090517a270d9f956b078056",
               ("task", "chat"): "244874e005dd4373b870316250a5dc901fb08efb2d5f61c40d5541d3387558db"}


def test_k_shot_keys_without_repeated_questions_stay_as_they_were():
    import hashlib

    questions = [question("accuracy", i % 4, task=f"t{i % 2}", text=f"Q{i}\n0. a\n1. b\n2. c\n3. d\nAnswer: ", row=i,
                          choices=["a", "b", "c", "d"]) for i in range(10)]
    for (protocol, rendering), digest in KEYS_3_SHOT.items():
        config = RunConfig(profile=STUB, data=Path("x"), protocol=Protocol(protocol), rendering=Rendering(rendering),
                           shots=3)
        keys = "".join(p.key for p in plan(questions, config))
        assert hashlib.sha256(keys.encode()).hexdigest() == digest, (protocol, rendering)


def retyped(rows: list[dict]) -> list[dict]:
    """The same questions as another file writes them: a multiple-choice truth as a string, an input with a
    trailing space or its line breaks doubled (other content ids, the same question to the model)."""
    out = []
    for n, row in enumerate(rows):
        row = dict(row)
        if n % 3 == 0 and isinstance(row["output_field"], int):
            row["output_field"] = str(row["output_field"])
        elif n % 3 != 2:
            row["input_field"] = row["input_field"] + " "
        else:
            row["input_field"] = row["input_field"].replace("\n", "\n\n", 1)
        out.append(row)
    return out


def test_a_pool_that_writes_the_question_otherwise_never_shows_it_its_own_answer(tmp_path, monkeypatch):
    """Issue 27.2: the pool's copy of the asked question has another content id (truth "2" for 2, a trailing
    space), so it was drawn as one of the question's own examples, its gold answer shown."""
    from evaluator.runs.planning import load_and_plan

    monkeypatch.chdir(tmp_path)
    skill_data(tmp_path / "d.json", per_task=4)
    rows = [json.loads(line) for line in (tmp_path / "d.json").read_text().splitlines()]
    write_jsonl(tmp_path / "pool.json", retyped(rows))
    for protocol in ("skill", "task"):
        config = RunConfig(profile=STUB, data=Path("d.json"), protocol=Protocol(protocol), shots=3,
                           shot_pool=Path("pool.json"))
        _, questions, planned = load_and_plan(config)
        for item, q in zip(planned, questions):
            asked = q.input.split("?")[0]
            assert item.body["prompt"].count(asked + "?") == 1, item.body["prompt"]  # the question, once
            assert item.shots == 3


def test_the_development_set_never_shows_a_question_its_own_answer(tmp_path):
    import pytest

    from conftest import KDD_DEV
    from evaluator.runs.planning import load_and_plan

    if not KDD_DEV.is_file():
        pytest.skip("the KDD development set is not in ../shared/")
    rows = [json.loads(line) for line in KDD_DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
    write_jsonl(tmp_path / "pool.json", retyped(rows))
    config = RunConfig(profile=STUB, data=KDD_DEV, shots=3, shot_pool=tmp_path / "pool.json")
    _, questions, _ = load_and_plan(config)
    drawn = draw_shots(questions, config.pool_data.questions, 3)
    own = [q.qid for q in questions if any(e.input.split() == q.input.split() for e in drawn[q.qid])]
    assert own == []


def test_rescore_after_the_shot_pool_changed_says_so_and_saves_nothing(tmp_path, capsys, monkeypatch):
    """Issue 27.7: rescore with an edited pool file saved a new, incomplete run under a pool variant never run,
    and report ranked it."""
    monkeypatch.chdir(tmp_path)
    skill_data(tmp_path / "d.json", per_task=4)
    skill_data(tmp_path / "pool.json", per_task=6)
    args = ["--model", "m", "--data", "d.json", "--cache", "cache", "--shots", "2", "--shot-pool", "pool.json"]
    with Stub(answers=answers_better_with_shots) as stub:
        code, _, err = run_cli(["run", *args, "--base-url", stub.base_url], capsys, monkeypatch)
    assert code == 0, err
    code, board, _ = run_cli(["report", "--cache", "cache", "--format", "json"], capsys, monkeypatch)
    [ran] = json.loads(board)
    rows = [json.loads(line) for line in (tmp_path / "pool.json").read_text().splitlines()]
    rows[-1]["input_field"] = rows[-1]["input_field"].replace("MC question", "An edited question")
    write_jsonl(tmp_path / "pool.json", rows)
    pointers = sorted((tmp_path / "cache" / "shot-pools").iterdir())

    code, out, err = run_cli(["rescore", *args], capsys, monkeypatch)
    assert code == 2 and out == "", out
    [line] = err.strip().splitlines()
    assert "pool.json" in line and "has changed" in line and f"'{ran['variant']}'" in line, line
    code, board, _ = run_cli(["report", "--cache", "cache", "--format", "json"], capsys, monkeypatch)
    assert [r["variant"] for r in json.loads(board)] == [ran["variant"]]  # nothing saved, nothing ranked
    assert sorted((tmp_path / "cache" / "shot-pools").iterdir()) == pointers
    rows[-1]["input_field"] = rows[-1]["input_field"].replace("An edited question", "MC question")
    write_jsonl(tmp_path / "pool.json", rows)  # restored: rescored as it was run
    code, out, err = run_cli(["rescore", *args], capsys, monkeypatch)
    assert code == 0, err


def test_a_pool_that_writes_the_question_in_other_unicode_never_shows_it_its_own_answer(tmp_path, monkeypatch):
    """Red-team finding 8: the pool's copy of the asked question NFD-normalised, with a zero-width space,
    upper-cased or with full-width digits was drawn as the question's own example, its gold answer shown."""
    import unicodedata

    from evaluator.runs.planning import load_and_plan

    monkeypatch.chdir(tmp_path)
    asked = "Which café sells 24 coffees?\n0. Alpha\n1. Beta\n2. Gamma\n3. Delta\nAnswer: "

    def row(text: str) -> dict:
        return {"input_field": text, "output_field": 2, "task_name": "t", "task_type": "multiple-choice",
                "metric": "accuracy"}

    write_jsonl(tmp_path / "d.json", [row(asked)])
    others = [row(f"Another question {n}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ") for n in range(3)]
    copies = [unicodedata.normalize("NFD", asked), asked.replace("café", "caf\u200bé"),
              asked.replace("Which", "WHICH"), asked.replace("24", "\uff12\uff14")]
    write_jsonl(tmp_path / "pool.json", [row(text) for text in copies] + others)
    config = RunConfig(profile=STUB, data=Path("d.json"), shots=3, shot_pool=Path("pool.json"))
    _, _, planned = load_and_plan(config)
    prompt = planned[0].body["prompt"]
    assert planned[0].shots == 3 and prompt.count("Another question") == 3, prompt
    assert prompt.lower().count("coffees") == 1, prompt  # the question, once
