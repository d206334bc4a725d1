"""Each metric on hand-worked cases (quirks included), then against the per-row official loop on random text."""

from __future__ import annotations

import json
import math
import random

import polars as pl
import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from benchmarks import official_loop
from builders import question, responses
from evaluator.prompts import Protocol
from evaluator.scoring import ScoringOptions, questions_frame, score, score_rows
from evaluator.scoring.text_overlap import lcs_length, rouge_tokens


def row_scores(metric: str, truth, outputs: list[str], protocol: Protocol = Protocol.SKILL,
               letters: bool = False, column: str = "score") -> list:
    qs = [question(metric, truth, row=i) for i in range(len(outputs))]
    options = ScoringOptions(protocol=protocol, letter_choices=letters)
    rows = score_rows(responses(outputs), questions_frame(qs, options), options)
    return rows[column].to_list() if isinstance(column, str) else rows.select(column).rows()


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("output, expected", [
    (" 2", 1.0), ("2) because", 1.0), ("\n2", 0.0), ("", 0.0), ("   ", 0.0), ("12", 0.0), ("２", 0.0),
    ("2 ", 1.0), ("\t2", 0.0),
])
def test_skill_accuracy_strips_spaces_only_and_reads_the_first_character(output, expected):
    assert row_scores("accuracy", 2, [output]) == [expected]


@pytest.mark.parametrize("output, expected", [
    ("Answer: 2", 1.0), ("2", 1.0), ("none", 0.0), ("½ 2", 0.0), ("٣ 2", 0.0), ("", 0.0), ("\n\n 2.", 1.0),
])
def test_task_accuracy_takes_the_first_numeric_character(output, expected):
    assert row_scores("accuracy", 2, [output], Protocol.TASK) == [expected]


def test_task_accuracy_with_letters_takes_the_first_alphanumeric_character():
    # truth 1 -> label "B" under --letter-choices
    assert row_scores("accuracy", 1, ["(B)", " b", "A or B", "é B"], Protocol.TASK, letters=True) == [1, 0, 0, 0]


# ---------------------------------------------------------------- hit rate@3

@pytest.mark.parametrize("output, skill_wise, task_wise", [
    ("2, 3, 6", 2 / 3, 2 / 3),
    ("5,2\n3", 1 / 3, 2 / 3),  # skill-wise splits the whole text; task-wise takes the first line
    ("x, 2, 3, 5", 1.0, 1.0),  # failures are skipped before the first three are kept
    ("1, 4, 6, 2, 3", 0.0, 0.0),
    ("2,2,2", 1 / 3, 1 / 3),
    ("２,3", 2 / 3, 2 / 3),  # int() reads full-width digits
    (" +3 , 5", 2 / 3, 2 / 3),
    ("1_0,2", 1 / 3, 1 / 3),  # int("1_0") == 10
    ("99999999999999999999999,2,3,5", 2 / 3, 2 / 3),  # a huge number still takes a place
    ("", 0.0, 0.0),
    ("2\x1c", 1 / 3, 1 / 3),  # strip() removes \x1c, which int() alone would refuse
])
def test_hit_rate(output, skill_wise, task_wise):
    assert row_scores("hit rate@3", [2, 3, 5], [output]) == [skill_wise]
    assert row_scores("hit rate@3", [2, 3, 5], [output], Protocol.TASK) == [task_wise]


# ---------------------------------------------------------------- ndcg

TRUTH = [3, 0, 2, 1]
IDCG = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)


@pytest.mark.parametrize("output, dcg, task_dcg", [
    ("1,3,4,2", IDCG, IDCG),
    ("2,3\n1", 3 / math.log2(3), 3 / math.log2(3)),  # a newline: first line only
    ("\n\n2,3", 3 / math.log2(3), 3 / math.log2(3)),
    ("0", 1.0, 1.0),  # index 0 takes the last element (relevance 1)
    ("-1", 3.0, 3.0),  # -1 -> weight[-2] = 2
    ("9", 0.0, 0.0),  # past the list
    # repeats count; skill-wise keeps len(truth) = 4 indices, task-wise all of them
    ("1,1,1,1,1", 7 * (1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)),
     7 * (1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5) + 1 / math.log2(6))),
    ("1,3,4,2,1,9", IDCG, IDCG + 7 / math.log2(6)),  # extra in-range and out-of-range indices
    ("a, b", 0.0, 0.0),
])
def test_ndcg(output, dcg, task_dcg):
    assert row_scores("ndcg", TRUTH, [output])[0] == pytest.approx(dcg / IDCG, abs=1e-12)
    assert row_scores("ndcg", TRUTH, [output], Protocol.TASK)[0] == pytest.approx(task_dcg / IDCG, abs=1e-12)


@pytest.mark.parametrize("output, truth, skill_wise, task_wise", [
    # the cases of the fidelity report, computed by the unmodified official scripts
    ("1,1,1,1,1,1,1", [3, 2, 1, 0, 0], 2.197346630407209, 2.71122845071778),
    ("1,2,3,4,5,1,4", [1, 0.01, 0.1, 1, 0], 0.8809085602575659, 1.2938535436227703),
])
def test_task_wise_ndcg_scores_every_index_and_can_pass_one(output, truth, skill_wise, task_wise):
    assert row_scores("ndcg", truth, [output]) == [pytest.approx(skill_wise, abs=1e-12)]
    assert row_scores("ndcg", truth, [output], Protocol.TASK) == [pytest.approx(task_wise, abs=1e-12)]
    assert official_loop.ndcg_eval(output, truth) == pytest.approx(skill_wise, abs=1e-12)
    assert official_loop.ndcg_eval(output, truth, task_wise=True) == pytest.approx(task_wise, abs=1e-12)


@pytest.mark.parametrize("protocol", [Protocol.SKILL, Protocol.TASK])
def test_ndcg_where_the_official_code_gives_no_number_is_zero_and_says_so(protocol):
    rows = row_scores("ndcg", [0, 0], ["1,2"], protocol, column=["score", "official"])
    assert rows == [(0.0, "NaN: all-zero relevance (0/0)")]
    assert math.isnan(official_loop.ndcg_eval("1,2", [0, 0], protocol is Protocol.TASK))
    rows = row_scores("ndcg", TRUTH, ["2,-5,1"], protocol, column=["score", "official"])
    assert rows == [(0.0, "IndexError: index -5 is below -len(truth)")]
    with pytest.raises(IndexError):
        official_loop.ndcg_eval("2,-5,1", TRUTH, protocol is Protocol.TASK)
    qs = [question("ndcg", [0, 0], row=0), question("ndcg", TRUTH, row=1), question("ndcg", TRUTH, row=2)]
    task = score(responses(["1,2", "1,3,4,2", "-9"]), qs, ScoringOptions(protocol=protocol)).tasks.row(0, named=True)
    assert task["n"] == 3 and "crashes on 1 row(s) (first: IndexError" in task["official"]
    task = score(responses(["1,2", "1,3,4,2"]), qs[:2], ScoringOptions(protocol=protocol)).tasks.row(0, named=True)
    assert task["score"] == pytest.approx(0.5) and task["official"].startswith("official score is NaN: 1 row")
    assert score(responses(["1,3,4,2"]), qs[1:2]).tasks["official"].to_list() == [None]


# ---------------------------------------------------------------- micro f1

@pytest.mark.parametrize("output, counts", [
    ("acme, Water Bottle, stainless steel", (2, 1, 0)),
    ("\nacme,water bottle\nextra", (2, 0, 0)),
    (" , acme", (1, 0, 1)),  # the exact empty string is dropped before stripping
    ("acme, ,x", (1, 2, 1)),  # " " survives the filter, then becomes "" and counts as a false positive
    ("ACME,acme", (1, 1, 1)),
    ("", (0, 0, 2)),
    ("Acme\t, water bottle", (1, 1, 1)),  # only spaces are stripped
])
def test_ner_counts(output, counts):
    assert row_scores("micro f1", ["acme", "Water Bottle"], [output], column=["tp", "fp", "fn"]) == [counts]


def test_micro_f1_is_pooled_over_the_task():
    qs = [question("micro f1", ["a", "b"], row=0), question("micro f1", ["c"], row=1)]
    scores = score(responses(["a, x", "c"]), qs)
    tp, fp, fn = 2, 1, 1
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert scores.tasks["score"].to_list() == [2 * p * r / (p + r)]


def test_micro_f1_with_no_predictions_is_zero_where_the_official_code_divides_by_zero():
    scores = score(responses([""]), [question("micro f1", ["a"])])
    assert scores.tasks["score"].to_list() == [0.0]
    assert "ZeroDivisionError" in scores.tasks["official"][0]
    with pytest.raises(ZeroDivisionError):
        official_loop.micro_f1([official_loop.tp_fp_fn("", ["a"])])
    assert score(responses(["b"]), [question("micro f1", ["a"])]).tasks["official"].to_list() == [None]


# ---------------------------------------------------------------- rouge-L and bleu

@pytest.mark.parametrize("output, truth, expected", [
    ("Cotton", "cotton", 1.0),
    ("40 x 30 cm", "40 by 30 centimetres", 0.5),
    ("running shoes", "run shoe", 1.0),  # Porter stemming
    ("", "cotton", 0.0),
    ("!!!", "cotton", 0.0),
])
def test_rouge_l(output, truth, expected):
    assert row_scores("rougel", truth, [output]) == [expected]


def test_bleu_is_corpus_bleu_of_the_single_pair_not_sentence_bleu():
    reference = "Cheese buttons for winter coats"
    assert row_scores("bleu", reference, ["Cheese buttons"]) == [0.0]  # no 3- or 4-grams: corpus BLEU is 0
    # sentence BLEU's effective order would give a positive score: what we must not do
    assert sacrebleu.sentence_bleu("Cheese buttons", [reference], lowercase=True).score > 20


def test_bleu_takes_the_first_line_lowercased():
    got = row_scores("bleu", "a big red water bottle", ["\nA Big Red Water Bottle\nsecond line"])
    assert got == pytest.approx([1.0], abs=1e-12)


def test_japanese_bleu_uses_mecab():
    truth = "静音クリックのワイヤレスマウス"
    exact, partial = row_scores("jp-bleu", truth, [truth, "静音のワイヤレスマウス"])
    assert exact == pytest.approx(1.0, abs=1e-12)
    expected = sacrebleu.corpus_bleu(["静音のワイヤレスマウス"], [[truth]], lowercase=True, tokenize="ja-mecab")
    assert partial == pytest.approx(expected.score / 100, abs=1e-12) and 0 < partial < 1
    thirteen_a = sacrebleu.corpus_bleu(["静音のワイヤレスマウス"], [[truth]], lowercase=True).score / 100
    assert partial != thirteen_a


def test_bit_parallel_lcs_matches_rouge_scores_table():
    rng = random.Random(7)
    words = ["a", "b", "c", "d", "e"]
    for _ in range(300):
        a = tuple(rng.choice(words) for _ in range(rng.randint(0, 70)))
        b = tuple(rng.choice(words) for _ in range(rng.randint(0, 70)))
        table = rouge_scorer._lcs_table(a, b)
        assert lcs_length(a, b) == table[-1][-1]


# ---------------------------------------------------------------- against the per-row official loop

PIECES = st.sampled_from(["1", "2", "3", "4", "5", "0", "-1", "-7", "12", ",", ", ", "\n", " ", "\t", "a", "B",
                          "٣", "２", "½", "_", "+", "x,y", "Acme", "acme ", "ΟΔΟΣ", "İ", "\x1c", "\u3000",
                          "\x1f", "\x85", "\xa0", "\u2028", "\r", "\x0b"])
TEXT = st.lists(PIECES, max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=25))
def test_structured_metrics_equal_the_official_loop(outputs):
    n = len(outputs)
    assert row_scores("accuracy", 2, outputs) == [official_loop.accuracy(o, "2") for o in outputs]
    assert row_scores("accuracy", 2, outputs, Protocol.TASK) == [official_loop.task_accuracy(o, "2")
                                                                for o in outputs]
    assert row_scores("hit rate@3", [1, 2, 5], outputs) == [official_loop.hit_rate(o, [1, 2, 5]) for o in outputs]
    assert row_scores("hit rate@3", [1, 2, 5], outputs, Protocol.TASK) == [
        official_loop.hit_rate(o, [1, 2, 5], task_wise=True) for o in outputs]
    for protocol in Protocol:
        ours = row_scores("ndcg", [2, 0, 1, 3, 0], outputs, protocol, column=["score", "official"])
        for output, (value, official) in zip(outputs, ours):
            try:
                theirs = official_loop.ndcg_eval(output, [2, 0, 1, 3, 0], protocol is Protocol.TASK)
            except IndexError:
                assert value == 0.0 and official.startswith("IndexError"), output
            else:
                assert official is None and value == pytest.approx(theirs, abs=1e-12), output
    truth = ["acme", "ΟΔΟΣ", "b"]
    assert row_scores("micro f1", truth, outputs, column=["tp", "fp", "fn"]) == [
        official_loop.tp_fp_fn(o, truth) for o in outputs]
    assert n == len(outputs)


WORDS = st.sampled_from(["the", "bottle", "bottles", "running", "runs", "steel", "Steel", "750ml", "red", "a",
                         "of", "water", "\n", ",", "!", "é", "mug"])
SENTENCE = st.lists(WORDS, max_size=15).map(" ".join)


@settings(max_examples=40, deadline=None)
@given(st.lists(SENTENCE, min_size=1, max_size=10), SENTENCE)
def test_rouge_and_bleu_equal_the_official_loop(outputs, truth):
    assert row_scores("rougel", truth, outputs) == [official_loop.rougel(o, truth) for o in outputs]
    assert row_scores("bleu", truth, outputs) == [official_loop.bleu(o, truth) for o in outputs]


def test_rouge_tokens_are_rouge_scores_own():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    text = "Running shoes, 40x30 cm — généreux & ÜBER-sized bottles!"
    assert list(rouge_tokens(text)) == scorer._tokenizer.tokenize(text)


# ---------------------------------------------------------------- aggregation

def test_task_skill_overall_are_means_with_counts():
    qs = [question("accuracy", 1, task="t1", skill="A", row=0), question("accuracy", 1, task="t1", skill="A", row=1),
          question("accuracy", 2, task="t2", skill="A", row=2), question("accuracy", 3, task="t3", skill="B", row=3)]
    scores = score(responses(["1", "0", "2", "0"]), qs)
    assert scores.tasks.select("task", "n", "score").rows() == [("t1", 2, 0.5), ("t2", 1, 1.0), ("t3", 1, 0.0)]
    assert dict(scores.skills.select("skill", "score").rows()) == {"A": 0.75, "B": 0.0}
    assert scores.overall["score"].to_list() == [0.375]
    doc = scores.for_model()
    common = {"errors": 0, "unscored": 0, "official": None, "complete": True}
    assert doc["tasks"] == [  # standard error: sample sd / sqrt(n) (lm-eval's), unknown for one question
        {"skill": "A", "task": "t1", "metric": "accuracy", "questions": 2, "n": 2, "score": 0.5, "stderr": 0.5,
         **common},
        {"skill": "A", "task": "t2", "metric": "accuracy", "questions": 1, "n": 1, "score": 1.0, "stderr": None,
         **common},
        {"skill": "B", "task": "t3", "metric": "accuracy", "questions": 1, "n": 1, "score": 0.0, "stderr": None,
         **common}]
    assert doc["skills"]["A"]["stderr"] is None and doc["overall"]["stderr"] is None
    assert {k: v["score"] for k, v in doc["skills"].items()} == {"A": 0.75, "B": 0.0}
    assert doc["skills"]["A"]["tasks"] == doc["skills"]["A"]["tasks_total"] == 2
    assert doc["overall"]["score"] == 0.375 and doc["complete"] is True
    assert doc["aggregation"]["skills"].startswith("official") and doc["aggregation"]["overall"].startswith("ours")
    task_doc = score(responses(["1"]), qs[:1], ScoringOptions(protocol=Protocol.TASK)).for_model()
    assert task_doc["aggregation"]["skills"].startswith("ours")


def test_standard_errors_add_up_from_tasks_to_skills_to_the_overall():
    """Task: sd / sqrt(n) over its questions; skill: sqrt(sum of its tasks' squared errors) / tasks; overall
    the same over skills. NER's pooled micro F1: a bootstrap over whole questions, the same every time."""
    import statistics

    truths = [1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3]
    tasks = ["t1"] * 3 + ["t2"] * 5 + ["t3"] * 4
    answers = ["1", "1", "0", "1", "2", "0", "2", "2", "3", "3", "0", "3"]
    qs = [question("accuracy", truths[i], task=tasks[i], skill="A" if i < 8 else "B", row=i) for i in range(12)]
    scores = score(responses(answers), qs)
    per_task = {}
    for task in ("t1", "t2", "t3"):
        values = [1.0 if answers[i] == str(truths[i]) else 0.0 for i in range(12) if tasks[i] == task]
        per_task[task] = scores.tasks.filter(pl.col("task") == task)["stderr"][0]
        assert abs(per_task[task] - statistics.stdev(values) / len(values) ** 0.5) < 1e-12
    skill_a = scores.skills.filter(pl.col("skill") == "A")["stderr"][0]
    assert abs(skill_a - (per_task["t1"] ** 2 + per_task["t2"] ** 2) ** 0.5 / 2) < 1e-12
    skill_b = scores.skills.filter(pl.col("skill") == "B")["stderr"][0]
    assert abs(skill_b - per_task["t3"]) < 1e-12
    assert abs(scores.overall["stderr"][0] - (skill_a ** 2 + skill_b ** 2) ** 0.5 / 2) < 1e-12
    ner = [question("micro f1", ["a", "b"], row=0), question("micro f1", ["c"], row=1),
           question("micro f1", ["d", "e"], row=2)]
    first = score(responses(["a, b", "x", "d"]), ner).tasks["stderr"][0]
    assert first is not None and 0 < first < 1
    assert score(responses(["a, b", "x", "d"]), ner).tasks["stderr"][0] == first


def test_missing_answers_and_unscorable_tasks_are_counted_not_hidden():
    qs = [question("accuracy", 1, task="t1", skill="A", row=0), question("accuracy", 1, task="t1", skill="A", row=1),
          question("accuracy", 2, task="t2", skill="A", row=2), question("accuracy", 3, task="t3", skill="B", row=3)]
    table = pl.DataFrame({"row": pl.Series([0, 3], dtype=pl.UInt32), "output": ["1", "3"]})  # rows 1, 2 unanswered
    doc = score(table, qs).for_model()
    t1, t2, _ = doc["tasks"]
    assert (t1["questions"], t1["n"], t1["errors"], t1["score"], t1["complete"]) == (2, 1, 1, 1.0, False)
    assert (t2["n"], t2["errors"], t2["score"]) == (0, 1, None)  # its line stays, with no score
    assert (doc["skills"]["A"]["tasks"], doc["skills"]["A"]["tasks_total"]) == (1, 2)
    assert doc["overall"]["questions"] == 4 and doc["overall"]["n"] == 2 and doc["overall"]["errors"] == 2
    assert doc["complete"] is False and doc["overall"]["score"] == 1.0


def test_json_documents_hold_no_nan(tmp_path):
    from evaluator.scoring.aggregate import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5]}


def test_rows_of_one_task_are_scored_by_their_own_metric():
    qs = [question("bleu", "a b c d", task="translation", row=0),
          question("jp-bleu", "静音クリックのワイヤレスマウス", task="translation", row=1)]
    rows = score_rows(responses(["a b c d", "静音クリックのワイヤレスマウス"]), questions_frame(qs))
    assert rows["score"].to_list() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert score(responses(["a b c d", "x"]), qs).tasks.select("metric", "n").rows() == [("bleu", 2)]


def test_many_models_in_one_table_are_scored_apart():
    qs = [question("accuracy", 1, row=0), question("accuracy", 2, row=1)]
    table = pl.DataFrame({"model": ["m1", "m1", "m2", "m2"], "row": pl.Series([0, 1, 0, 1], dtype=pl.UInt32),
                          "output": ["1", "2", "0", "2"]})
    scores = score(table, qs)
    assert dict(scores.overall.select("model", "score").rows()) == {"m1": 1.0, "m2": 0.5}
