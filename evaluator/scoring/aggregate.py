"""Task → skill → overall, as skill_evaluation.py aggregates (micro F1 pooled over a whole NER task)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

MICRO_F1 = "micro f1"


@dataclass(frozen=True)
class Scores:
    """Aggregated scores for one or more models, and what could not be scored."""

    tasks: pl.DataFrame  # model, skill, task, metric, n, score
    skills: pl.DataFrame  # model, skill, tasks, n, score
    overall: pl.DataFrame  # model, skills, n, score
    unscored: pl.DataFrame  # model, skill, task, metric, n, reason

    def for_model(self, model: str = "") -> dict:
        """The `score --json` document for one model."""
        tasks = self.tasks.filter(pl.col("model") == model)
        skills = self.skills.filter(pl.col("model") == model)
        overall = self.overall.filter(pl.col("model") == model)["score"]
        return {
            "tasks": tasks.select("skill", "task", "metric", "n", "score").to_dicts(),
            "skills": dict(zip(skills["skill"].to_list(), skills["score"].to_list())),
            "overall": overall[0] if len(overall) else None,
        }

    def write_json(self, path: Path, model: str = "", extra: dict | None = None) -> None:
        """Write atomically: a reader never sees half a file."""
        document = {**self.for_model(model), **(extra or {})}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)


def _micro_f1(tp: pl.Expr, fp: pl.Expr, fn: pl.Expr) -> pl.Expr:
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    undefined = ((tp + fp) == 0) | ((tp + fn) == 0)
    return pl.when(undefined).then(0.0).when(precision + recall == 0).then(0.0).otherwise(f1)


def aggregate(rows: pl.DataFrame) -> Scores:
    """`rows` from score_rows: model, skill, task, metric, score, tp, fp, fn, unscored."""
    scored = rows.filter(pl.col("unscored").is_null())
    keys = ["model", "skill", "task"]
    tasks = (
        scored.group_by(keys, maintain_order=True)
        .agg(metric=pl.col("metric").first(), n=pl.len().cast(pl.Int64), mean=pl.col("score").mean(),
             tp=pl.col("tp").sum(), fp=pl.col("fp").sum(), fn=pl.col("fn").sum())
        .with_columns(score=pl.when(pl.col("metric") == MICRO_F1)
                      .then(_micro_f1(pl.col("tp"), pl.col("fp"), pl.col("fn")))
                      .otherwise(pl.col("mean")))
        .select(*keys, "metric", "n", "score")
    )
    skills = (tasks.group_by("model", "skill", maintain_order=True)
              .agg(tasks=pl.len().cast(pl.Int64), n=pl.col("n").sum(), score=pl.col("score").mean()))
    overall = (skills.group_by("model", maintain_order=True)
               .agg(skills=pl.len().cast(pl.Int64), n=pl.col("n").sum(), score=pl.col("score").mean()))
    unscored = (rows.filter(pl.col("unscored").is_not_null())
                .group_by(*keys, maintain_order=True)
                .agg(metric=pl.col("metric").first(), n=pl.len().cast(pl.Int64), reason=pl.col("unscored").first()))
    return Scores(tasks=tasks, skills=skills, overall=overall, unscored=unscored)
