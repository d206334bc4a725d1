"""Typed benchmark records: one `Question` per data row, with the metric that scores it."""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Union

from pydantic import BaseModel, ConfigDict


class TaskType(str, Enum):
    MULTIPLE_CHOICE = "multiple-choice"
    RETRIEVAL = "retrieval"
    RANKING = "ranking"
    NER = "named_entity_recognition"
    GENERATION = "generation"


class Metric(str, Enum):
    ACCURACY = "accuracy"
    HIT_RATE_3 = "hit rate@3"
    NDCG = "ndcg"
    MICRO_F1 = "micro f1"
    ROUGEL = "rougel"
    BLEU = "bleu"
    JP_BLEU = "jp-bleu"
    SENT_TRANSFORMER = "sent-transformer"
    MULTILINGUAL_SENT_TRANSFORMER = "multilingual-sent-transformer"


# The metric each task type takes in the task-wise protocol (generation depends on the task name).
TASK_TYPE_METRIC = {
    TaskType.MULTIPLE_CHOICE: Metric.ACCURACY,
    TaskType.RETRIEVAL: Metric.HIT_RATE_3,
    TaskType.RANKING: Metric.NDCG,
    TaskType.NER: Metric.MICRO_F1,
}

# Folder names of the official data.zip, one per task type.
TYPE_FOLDERS = {
    "multiple_choice": TaskType.MULTIPLE_CHOICE,
    "retrieval": TaskType.RETRIEVAL,
    "ranking": TaskType.RANKING,
    "named_entity_recognition": TaskType.NER,
    "generation": TaskType.GENERATION,
}


def generation_metric(task: str) -> Metric:
    """The official task-wise rule: the metric of a generation task follows its name."""
    if "extraction" in task:
        return Metric.ROUGEL
    if "translation" in task:
        return Metric.JP_BLEU if "JP" in task else Metric.BLEU
    if "multilingual" in task:
        return Metric.MULTILINGUAL_SENT_TRANSFORMER
    return Metric.SENT_TRANSFORMER


Truth = Union[int, str, list[int], list[float], list[str]]


class Question(BaseModel):
    """One benchmark question as loaded from a data file (row is 0-based among its file's data rows)."""

    model_config = ConfigDict(frozen=True)

    qid: str
    source: str
    row: int
    skill: str
    task: str
    task_type: TaskType
    metric: Metric
    input: str
    truth: Truth
    choices: list[str] | None = None


def question_id(task: str, input_text: str, truth: Truth) -> str:
    """Stable content id: the same question gets the same id in every file and every run."""
    payload = json.dumps([task, input_text, truth], ensure_ascii=False, separators=(",", ":"))
    return f"{task}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"
