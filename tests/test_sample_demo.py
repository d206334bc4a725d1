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
    # pinned: the exact metrics are exact; cosines and BLEU are kept to 1e-4 (embeddings vary a little by build)
    tasks = {t["task"]: t["score"] for t in doc["tasks"]}
    assert {k: v for k, v in tasks.items() if v in (0.0, 1.0)} == {
        "attribute_relevance": 1.0, "complementary_reasoning": 1.0, "unit_reasoning": 0.0,
        "compatibility_reasoning": 1.0, "gift_retrieval": 1.0, "next_purchase": 1.0,
        "review_rating_prediction": 0.0, "multilingual_query_matching": 1.0}
    assert tasks["attribute_extraction"] == 0.75 and tasks["keyphrase_retrieval"] == pytest.approx(2 / 3)
    assert tasks["co_purchase_retrieval"] == pytest.approx(2 / 3)
    assert tasks["query_entity_recognition"] == pytest.approx(8 / 9)
    assert tasks["query_product_ranking"] == pytest.approx(0.8726262671, abs=1e-9)
    assert tasks["concept_explanation"] == pytest.approx(0.76495, abs=1e-4)
    assert tasks["reasoning_explanation"] == pytest.approx(0.77773, abs=1e-4)
    assert tasks["title_translation"] == pytest.approx(0.47080, abs=1e-4)
    assert doc["overall"]["score"] == pytest.approx(0.73497, abs=1e-4) and doc["complete"] is False
    assert doc["overall"]["n"] == 24 and doc["overall"]["unscored"] == 2
    assert "not scored" in out and "--multilingual-model" in out
