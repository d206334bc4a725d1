"""Loaders for every format, the `score` and `data info` commands, and every bad-input path (exit 2, no traceback)."""

from __future__ import annotations

import json
import re

import pytest

from builders import run_cli, write_jsonl, write_official_layout
from evaluator.data import loaders
from evaluator.data.records import Metric, TaskType




# ---------------------------------------------------------------- loading

def test_skill_file_questions(tmp_path):
    path = write_official_layout(tmp_path) / "skills" / "skill1_concept.json"
    qs = loaders.load(path).questions
    assert [(q.skill, q.task, q.task_type, q.metric, q.row) for q in qs] == [
        ("skill1_concept", "attribute_selection", TaskType.MULTIPLE_CHOICE, Metric.ACCURACY, 0),
        ("skill1_concept", "keyphrase_retrieval", TaskType.RETRIEVAL, Metric.HIT_RATE_3, 1)]
    assert qs[1].truth == [1, 2, 3]
    assert [q.qid for q in loaders.load(path).questions] == [q.qid for q in qs]  # stable across loads
    assert len({q.qid for q in qs}) == 2


def test_folder_skill_protocol_reads_skills(tmp_path):
    ds = loaders.load(write_official_layout(tmp_path), "skill")
    assert [f.path.name for f in ds.files] == ["skill1_concept.json", "skill3_behavior.json"]
    assert len(ds.questions) == 3


def test_folder_task_protocol_reads_every_type_folder(tmp_path):
    ds = loaders.load(write_official_layout(tmp_path), "task")
    summary = [(q.task, q.skill, q.task_type.value, q.metric.value) for q in ds.questions]
    assert summary == [
        ("attribute_selection", "skill1_concept", "multiple-choice", "accuracy"),
        ("attribute_selection", "skill1_concept", "multiple-choice", "accuracy"),
        ("review_rating_prediction", "multiple_choice", "multiple-choice", "accuracy"),
        ("keyphrase_retrieval", "skill1_concept", "retrieval", "hit rate@3"),
        ("query_product_ranking", "skill3_behavior", "ranking", "ndcg"),
        ("query_ner", "named_entity_recognition", "named_entity_recognition", "micro f1"),
        ("attribute_extraction", "generation", "generation", "rougel"),
        ("title_translation_JP", "generation", "generation", "jp-bleu"),
    ]
    mc = ds.questions[0]
    assert (mc.input, mc.choices, mc.truth) == ("Pick, one", ["a", "b", "c", "d"], 1)
    assert ds.questions[1].choices == ["x", "y", "z", "w"]
    assert ds.questions[2].choices == [] and ds.questions[2].truth == 5


def test_identical_questions_get_distinct_ids(tmp_path):
    record = {"input_field": "same", "output_field": 1, "task_name": "t", "task_type": "multiple-choice",
              "metric": "accuracy"}
    qs = loaders.load(write_jsonl(tmp_path / "s.json", [record, record])).questions
    assert qs[0].qid != qs[1].qid and qs[1].qid.endswith("#2")


def test_kdd_development_set(kdd_dev):
    qs = loaders.load(kdd_dev).questions
    assert len(qs) == 96
    assert len({q.task for q in qs}) == 18
    assert len({q.skill for q in qs}) == 4
    assert {q.skill for q in qs} == {"amazon-kdd-cup-24-understanding-shopping-concepts",
                                     "amazon-kdd-cup-24-shopping-knowledge-reasoning",
                                     "amazon-kdd-cup-24-user-behavior-alignment",
                                     "amazon-kdd-cup-24-multi-lingual-abilities"}


# ---------------------------------------------------------------- data info

def test_data_info_json(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["data", "info", write_official_layout(tmp_path), "--protocol", "task", "--json"],
                           capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["questions"] == 8
    assert {"skill": "generation", "task": "title_translation_JP", "type": "generation", "metric": "jp-bleu",
            "questions": 1} in doc["tasks"]


def test_data_info_table(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["data", "info", write_official_layout(tmp_path)], capsys, monkeypatch)
    assert code == 0 and "keyphrase" in out and re.search(r"3\s+questions", out)


# ---------------------------------------------------------------- score

def test_score_json_schema_and_values(tmp_path, capsys, monkeypatch):
    data = write_official_layout(tmp_path / "data") / "skills" / "skill1_concept.json"
    responses = write_jsonl(tmp_path / "out.json", [{"model_output": " 1"}, {"model_output": "1, 2, 9"}])
    out_json = tmp_path / "scores.json"
    code, out, _ = run_cli(["score", "--data", data, "--responses", responses, "--json", out_json],
                           capsys, monkeypatch)
    assert code == 0 and "attribute_selection" in out
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"tasks", "skills", "overall", "complete", "aggregation"}
    counts = {"questions": 1, "n": 1, "errors": 0, "unscored": 0, "official": None, "complete": True,
              "stderr": None}  # one question: no standard error
    assert doc["tasks"] == [
        {"skill": "skill1_concept", "task": "attribute_selection", "metric": "accuracy", "score": 1.0, **counts},
        {"skill": "skill1_concept", "task": "keyphrase_retrieval", "metric": "hit rate@3", "score": 2 / 3,
         **counts}]
    assert doc["skills"]["skill1_concept"]["score"] == pytest.approx(5 / 6)
    assert doc["overall"]["score"] == pytest.approx(5 / 6) and doc["complete"] is True


def test_score_folder_with_a_responses_folder(tmp_path, capsys, monkeypatch):
    data = write_official_layout(tmp_path / "data")
    write_jsonl(tmp_path / "r" / "skill1_concept" / "vicuna2_run1.json",
                [{"model_output": "1"}, {"model_output": "1,2,3"}])
    write_jsonl(tmp_path / "r" / "skill3_behavior.json", [{"model_output": "1,2,3"}])
    out_json = tmp_path / "scores.json"
    code, _, err = run_cli(["score", "--data", data, "--responses", tmp_path / "r", "--json", out_json],
                           capsys, monkeypatch)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert doc["skills"]["skill1_concept"]["score"] == 1.0 and doc["skills"]["skill3_behavior"]["score"] == 1.0


def test_score_task_protocol(tmp_path, capsys, monkeypatch):
    """Task-wise accuracy reads the first digit (truths 1 and 3), or with --letter-choices the first letter or
    digit (truths B and D): each set of answers is right under one reading only, so ignoring the flag fails."""
    data = write_official_layout(tmp_path / "data") / "multiple_choice" / "attribute_selection_dataset.csv"
    digits = write_jsonl(tmp_path / "digits.json", [{"model_output": "The answer is 1"}, {"model_output": "3."}])
    letters = write_jsonl(tmp_path / "letters.json", [{"model_output": "(B)"}, {"model_output": "D"}])
    out_json = tmp_path / "s.json"
    for responses, flags, expected in ((digits, [], 1.0), (digits, ["--letter-choices"], 0.0),
                                       (letters, [], 0.0), (letters, ["--letter-choices"], 1.0)):
        code, _, err = run_cli(["score", "--data", data, "--responses", responses, "--protocol", "task",
                                "--json", out_json, *flags], capsys, monkeypatch)
        assert code == 0, err
        assert json.loads(out_json.read_text())["overall"]["score"] == expected, (responses.name, flags)


# ---------------------------------------------------------------- bad input

SKILL_OK = {"input_field": "x", "output_field": 1, "task_name": "t", "task_type": "multiple-choice",
            "metric": "accuracy"}


def bad_skill_line(**change):
    record = dict(SKILL_OK, **change)
    return {k: v for k, v in record.items() if v is not None}


@pytest.mark.parametrize("second_line, expected", [
    ("{not json", ["bad.json:2", "malformed JSON"]),
    (json.dumps(bad_skill_line(input_field=None)), ["bad.json:2", "field 'input_field'", "missing field"]),
    (json.dumps(bad_skill_line(metric="f2")), ["bad.json:2", "field 'metric'", "unknown metric 'f2'"]),
    (json.dumps(bad_skill_line(task_type="essay")), ["bad.json:2", "field 'task_type'", "unknown task type"]),
    (json.dumps(bad_skill_line(task_type="retrieval", metric="hit rate@3", output_field=3)),
     ["bad.json:2", "field 'output_field'", "non-empty list of integers"]),
    (json.dumps(bad_skill_line(task_type="named_entity_recognition", metric="micro f1", output_field="acme")),
     ["bad.json:2", "field 'output_field'", "list of strings"]),
    (json.dumps(bad_skill_line(input_field=7)), ["bad.json:2", "field 'input_field'", "expected a string"]),
    ("[1, 2]", ["bad.json:2", "JSON object"]),
])
def test_bad_skill_file(tmp_path, capsys, monkeypatch, second_line, expected):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(SKILL_OK) + "\n" + second_line + "\n", encoding="utf-8")
    responses = write_jsonl(tmp_path / "r.json", [{"model_output": "1"}] * 2)
    out_json = tmp_path / "s.json"
    code, out, err = run_cli(["score", "--data", data, "--responses", responses, "--json", out_json],
                             capsys, monkeypatch)
    assert code == 2
    assert "Traceback" not in err + out
    for fragment in expected:
        assert fragment in err
    assert not out_json.exists()


@pytest.mark.parametrize("content, expected", [
    ("question,choices,answer\nQ,\"['a', 'b'\",1\n", ["x_dataset.csv:2", "field 'choices'", "unparsable choices"]),
    ("question,choices,answer\nQ,\"['a', 'b']\",1\n", ["x_dataset.csv:2", "field 'choices'", "4 entries"]),
    ("question,choices,answer\nQ,\"['a','b','c','d']\",one\n", ["x_dataset.csv:2", "field 'answer'"]),
    ("question,choices,answer\nQ,\"['a','b','c','d']\",7\n", ["x_dataset.csv:2", "not a choice index"]),
    ("question,answer\nQ,1\n", ["x_dataset.csv:1", "field 'choices'", "missing column"]),
    ("question,choices,answer\nQ,\"['a','b','c','d']\",1,extra\n", ["x_dataset.csv:2", "wrong number of columns"]),
    ("question,choices,answer\nQ,\"['a','b','c','d']\"\n", ["x_dataset.csv:2", "wrong number of columns"]),
])
def test_bad_multiple_choice_csv(tmp_path, capsys, monkeypatch, content, expected):
    data = tmp_path / "multiple_choice" / "x_dataset.csv"
    data.parent.mkdir()
    data.write_text(content, encoding="utf-8")
    code, out, err = run_cli(["data", "info", data], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    for fragment in expected:
        assert fragment in err


def test_bad_task_file_truth_and_unknown_folder(tmp_path, capsys, monkeypatch):
    ranking = write_jsonl(tmp_path / "ranking" / "r_dataset.json",
                          [{"input_field": "x", "target_field": [1, 2]}, {"input_field": "x", "target_field": "1,2"}])
    code, _, err = run_cli(["data", "info", ranking], capsys, monkeypatch)
    assert code == 2 and "r_dataset.json:2" in err and "field 'target_field'" in err
    stray = write_jsonl(tmp_path / "elsewhere" / "r_dataset.json", [{"input_field": "x", "target_field": [1]}])
    code, _, err = run_cli(["data", "info", stray], capsys, monkeypatch)
    assert code == 2 and "cannot tell this task file's type" in err


def test_missing_paths(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["data", "info", tmp_path / "nope.json"], capsys, monkeypatch)
    assert code == 2 and "nope.json: no such file or folder" in err
    data = write_jsonl(tmp_path / "s.json", [SKILL_OK])
    code, _, err = run_cli(["score", "--data", data, "--responses", tmp_path / "none.json"], capsys, monkeypatch)
    assert code == 2 and "none.json: no such file or folder" in err


@pytest.mark.parametrize("lines, expected", [
    ([{"model_output": "1"}], ["r.json", "1 responses for 2 questions"]),
    ([{"model_output": "1"}, {"model_output": "1"}, {"model_output": "1"}], ["3 responses for 2 questions"]),
    ([{"model_output": "1"}, {"output": "1"}], ["r.json:2", "field 'model_output'", "missing field"]),
    ([{"model_output": "1"}, {"model_output": 3}], ["r.json:2", "field 'model_output'", "expected a string"]),
])
def test_bad_responses(tmp_path, capsys, monkeypatch, lines, expected):
    data = write_jsonl(tmp_path / "s.json", [SKILL_OK, SKILL_OK])
    responses = write_jsonl(tmp_path / "r.json", lines)
    code, _, err = run_cli(["score", "--data", data, "--responses", responses], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    for fragment in expected:
        assert fragment in err


def test_responses_not_json(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "s.json", [SKILL_OK])
    responses = tmp_path / "r.json"
    responses.write_bytes(b'{"model_output": "1"\n')
    code, _, err = run_cli(["score", "--data", data, "--responses", responses], capsys, monkeypatch)
    assert code == 2 and "r.json:1" in err and "malformed JSON" in err
