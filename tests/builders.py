"""Small builders shared by the tests: questions in memory, files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from evaluator.records import Metric, Question, TaskType, question_id

TYPE_OF = {
    "accuracy": TaskType.MULTIPLE_CHOICE, "hit rate@3": TaskType.RETRIEVAL, "ndcg": TaskType.RANKING,
    "micro f1": TaskType.NER, "rougel": TaskType.GENERATION, "bleu": TaskType.GENERATION,
    "jp-bleu": TaskType.GENERATION, "sent-transformer": TaskType.GENERATION,
    "multilingual-sent-transformer": TaskType.GENERATION,
}


def question(metric: str, truth, task: str | None = None, skill: str = "s", text: str = "q",
             row: int = 0, choices: list[str] | None = None) -> Question:
    task = task or metric.replace(" ", "_")
    return Question(qid=question_id(task, f"{text}{row}", truth), source="mem", row=row, skill=skill, task=task,
                    task_type=TYPE_OF[metric], metric=Metric(metric), input=text, truth=truth, choices=choices)


def responses(outputs: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"row": pl.Series(range(len(outputs)), dtype=pl.UInt32), "output": outputs})


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
