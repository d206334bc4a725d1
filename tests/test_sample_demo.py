"""The shipped sample set covers every metric and skill, and its shipped responses score end to end."""

from __future__ import annotations

import json
import sys

import pytest

from evaluator.data import loaders
from evaluator.cli import main, sample_dir
from evaluator.data.records import Metric, TaskType


def test_sample_set_covers_all_metrics_types_and_languages():
    questions = loaders.load(sample_dir()).questions
    assert {q.metric for q in questions} == set(Metric)
    assert {q.task_type for q in questions} == set(TaskType)
    assert len({q.skill for q in questions}) == 4
    text = " ".join(q.input for q in questions)
    assert "Welches" in text  # German
    assert any("\u3040" <= ch <= "\u30ff" for ch in text)  # Japanese kana


def test_sample_responses_score_and_the_unavailable_model_is_reported(tmp_path, capsys, monkeypatch):
    out_json = tmp_path / "sample.json"
    monkeypatch.setattr(sys, "argv", ["shopping-mmlu", "score", "--data", str(sample_dir()), "--responses",
                                      str(sample_dir() / "responses"), "--json", str(out_json)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 3  # incomplete: the multilingual rows cannot be scored offline
    out = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert set(doc["skills"]) == {"skill1_concept", "skill2_reasoning", "skill3_behavior", "skill4_multilingual"}
    # jp-bleu rows share the title_translation task with bleu rows: the task shows its first row's metric
    assert {t["metric"] for t in doc["tasks"]} == {m.value for m in Metric} - {"jp-bleu"}
    unscored = [t for t in doc["tasks"] if t["metric"] == "multilingual-sent-transformer"]
    assert unscored and all(t["score"] is None and t["unscored"] == t["questions"] for t in unscored)
    assert {t["task"]: t["n"] for t in doc["tasks"]}["title_translation"] == 4
    assert 0 < doc["overall"]["score"] < 1 and doc["complete"] is False
    assert "not scored" in out and "--multilingual-model" in out
