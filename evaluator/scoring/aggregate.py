"""Task → skill → overall, as skill_evaluation.py aggregates (micro F1 pooled over a whole NER task), with
how complete each level is: a score is never shown as more complete than it is.

Every level carries `questions` (all of them), `n` (scored), `errors` (no answer) and `unscored` (answered,
but its metric's model is not available); a task without one scored row keeps its line with no score; a
skill's score is the mean over the tasks that have one (`tasks` of `tasks_total`), the overall over the
skills that have one (`skills` of `skills_total`). `complete` is true only where nothing is missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl

MICRO_F1 = "micro f1"
# Which levels the official scripts compute and which are ours, said in every --json document.
AGGREGATION = {
    "skill": {"tasks": "official: skill_wise_eval/skill_evaluation.py, per task",
              "skills": "official: skill_evaluation.py's track_wise score, the mean of the skill file's tasks",
              "overall": "ours: the mean of the skill scores (the official scripts stop at skills)"},
    "task": {"tasks": "official: task_wise_eval/hf_*.py, one task file at a time",
             "skills": "ours: the mean of the task scores per skill (or per task type where no skills/ folder "
                       "names the skill); the task-wise scripts have no aggregation",
             "overall": "ours: the mean of those group scores"},
}
COUNTS = ("questions", "n", "errors", "unscored")
STDERR_BOOTSTRAP = 1000  # resamples for the standard error of a pooled (micro F1) task, as lm-eval bootstraps


@dataclass(frozen=True)
class Scores:
    """Aggregated scores for one or more models, and what could not be scored."""

    tasks: pl.DataFrame  # model, skill, task, metric, questions, n, errors, unscored, score, stderr, official, complete
    skills: pl.DataFrame  # model, skill, tasks, tasks_total, questions, n, errors, unscored, score, stderr, complete
    overall: pl.DataFrame  # model, skills, skills_total, questions, n, errors, unscored, score, stderr, complete
    unscored: pl.DataFrame  # model, skill, task, metric, n, reason
    protocol: str = "skill"

    def for_model(self, model: str = "") -> dict:
        """The `score --json` document for one model (NaN never reaches JSON: it becomes null)."""
        tasks = self.tasks.filter(pl.col("model") == model).drop("model")
        skills = self.skills.filter(pl.col("model") == model).drop("model")
        overall = self.overall.filter(pl.col("model") == model).drop("model")
        return finite({
            "tasks": tasks.to_dicts(),
            "skills": {r.pop("skill"): r for r in skills.to_dicts()},
            "overall": overall.to_dicts()[0] if overall.height else None,
            "complete": bool(overall["complete"][0]) if overall.height else False,
            "aggregation": AGGREGATION[self.protocol],
        })

    def overall_score(self, model: str = "") -> float | None:
        row = self.overall.filter(pl.col("model") == model)
        return row["score"][0] if row.height else None

    def write_json(self, path: Path, model: str = "", extra: dict | None = None) -> None:
        write_json_atomic(path, {**self.for_model(model), **(extra or {})})


def finite(value):
    """The value with every NaN or infinity replaced by None, so that json.dumps writes valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json_atomic(path: Path, document) -> None:
    """Write atomically (a reader never sees half a file); strict JSON (no NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(finite(document), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                       encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _micro_f1(tp: pl.Expr, fp: pl.Expr, fn: pl.Expr) -> pl.Expr:
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    undefined = ((tp + fp) == 0) | ((tp + fn) == 0)
    return pl.when(undefined).then(0.0).when(precision + recall == 0).then(0.0).otherwise(f1)


def _official_note() -> pl.Expr:
    """Why the official code gives no number for a task where we give one (None where it gives the same)."""
    ner_zero = (pl.col("metric") == MICRO_F1) & ((pl.col("tp") + pl.col("fp") == 0) | (pl.col("tp") + pl.col("fn") == 0))
    return (pl.when(pl.col("n") == 0).then(pl.lit(None, dtype=pl.String))
            .when(pl.col("crashes") > 0)
            .then(pl.format("official code crashes on {} row(s) (first: {}); we score those rows 0",
                            pl.col("crashes"), pl.col("crash")))
            .when(ner_zero)
            .then(pl.lit("official code crashes (ZeroDivisionError): no entity predicted or none to find in "
                         "the whole task; we score 0"))
            .when(pl.col("nans") > 0)
            .then(pl.format("official score is NaN: {} row(s) with all-zero relevance (0/0); we score those "
                            "rows 0", pl.col("nans")))
            .otherwise(pl.lit(None, dtype=pl.String)))


def _mean_stderr() -> pl.Expr:
    """The standard error of a mean of independent scores: sqrt(sum of their squared errors) / their count,
    over the scores that exist (a skill over its tasks, the overall over its skills); unknown where one of
    them has no standard error (a task of one question)."""
    known = pl.col("score").is_not_null()
    unknown_error = (known & pl.col("stderr").is_null()).any()  # a part of one question: no error to add up
    return (pl.when((known.sum() == 0) | unknown_error).then(None)
            .otherwise((pl.col("stderr").filter(known) ** 2).sum().sqrt() / known.sum()))


def _task_stderr(scored: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Each task's standard error over its questions, as lm-eval gives it: the sample standard deviation over
    sqrt(n) where the task score is a mean of per-question scores; a bootstrap over questions (fixed seed)
    where the official aggregation pools counts across the task (NER's micro F1), so a question's entities
    stay together."""
    import numpy as np

    means = (scored.filter(pl.col("metric") != MICRO_F1).group_by(keys, maintain_order=True)
             .agg(stderr=pl.col("score").std(ddof=1) / pl.len().sqrt()))
    pooled = []
    rng = np.random.default_rng(0)
    for key, part in scored.filter(pl.col("metric") == MICRO_F1).group_by(keys, maintain_order=True):
        counts = part.select("tp", "fp", "fn").fill_null(0).to_numpy().astype(float)
        n = len(counts)
        if n < 2:
            pooled.append((*key, None))
            continue
        step = max(1, 2_000_000 // n)  # resampled indices held at once: bounded memory
        values = []
        for start in range(0, STDERR_BOOTSTRAP, step):
            idx = rng.integers(0, n, size=(min(step, STDERR_BOOTSTRAP - start), n))
            tp, fp, fn = (counts[idx].sum(axis=1)[:, k] for k in range(3))
            with np.errstate(invalid="ignore", divide="ignore"):
                precision, recall = tp / (tp + fp), tp / (tp + fn)
                values.append(np.nan_to_num(2 * precision * recall / (precision + recall), nan=0.0))
        pooled.append((*key, float(np.std(np.concatenate(values), ddof=1))))
    schema = {"model": pl.String, "skill": pl.String, "task": pl.String, "stderr": pl.Float64}
    pooled_frame = pl.DataFrame(pooled, schema=schema, orient="row")
    return pl.concat([means.select(pl.col("model").cast(pl.String), pl.col("skill").cast(pl.String),
                                   pl.col("task").cast(pl.String), pl.col("stderr").cast(pl.Float64)),
                      pooled_frame])


def aggregate(rows: pl.DataFrame, protocol: str = "skill", totals: pl.DataFrame | None = None,
              models: list[str] | None = None) -> Scores:
    """`rows` from score_rows: model, skill, task, metric, score, tp, fp, fn, unscored, official.
    `totals` (skill, task, metric, questions) names every task and its question count, answered or not;
    without it the answered rows are all there is. `models` names the models even if none answered."""
    keys = ["model", "skill", "task"]
    rows = rows.with_columns(pl.col("model").cast(pl.String))
    if totals is None:
        totals = rows.group_by("skill", "task", maintain_order=True).agg(metric=pl.col("metric").first(),
                                                                         questions=pl.len().cast(pl.Int64))
    if models is not None:
        models = pl.DataFrame({"model": models}, schema={"model": pl.String})
    else:
        models = rows.select("model").unique(maintain_order=True)
        if models.is_empty():
            models = pl.DataFrame({"model": [""]})
    scored = rows.filter(pl.col("unscored").is_null())
    nans = pl.col("official").str.starts_with("NaN")
    crashes = pl.col("official").is_not_null() & ~nans
    per_task = (
        scored.group_by(keys, maintain_order=True)
        .agg(n=pl.len().cast(pl.Int64), mean=pl.col("score").mean(), row_metric=pl.col("metric").first(),
             tp=pl.col("tp").sum(), fp=pl.col("fp").sum(), fn=pl.col("fn").sum(),
             crashes=crashes.sum(), nans=nans.sum(), crash=pl.col("official").filter(crashes).first())
    )
    unscored_counts = (rows.filter(pl.col("unscored").is_not_null())
                       .group_by(keys).agg(unscored=pl.len().cast(pl.Int64)))
    tasks = (
        models.join(totals.select("skill", "task", "metric", pl.col("questions").cast(pl.Int64)), how="cross")
        .join(per_task, on=keys, how="left", maintain_order="left")
        .join(unscored_counts, on=keys, how="left", maintain_order="left")
        .with_columns(n=pl.col("n").fill_null(0), unscored=pl.col("unscored").fill_null(0),
                      metric=pl.coalesce("metric", "row_metric"))
        .with_columns(errors=pl.col("questions") - pl.col("n") - pl.col("unscored"),
                      score=pl.when(pl.col("n") == 0).then(None)
                      .when(pl.col("metric") == MICRO_F1).then(_micro_f1(pl.col("tp"), pl.col("fp"), pl.col("fn")))
                      .otherwise(pl.col("mean")),
                      official=_official_note())
        .with_columns(complete=(pl.col("n") == pl.col("questions")))
        .join(_task_stderr(scored, keys), on=keys, how="left", maintain_order="left")
        .with_columns(stderr=pl.when(pl.col("score").is_null()).then(None).otherwise(pl.col("stderr")))
        .select(*keys, "metric", *COUNTS, "score", "stderr", "official", "complete")
    )
    sums = [pl.col(c).sum() for c in COUNTS]
    skills = (tasks.group_by("model", "skill", maintain_order=True)
              .agg(tasks=pl.col("score").is_not_null().sum().cast(pl.Int64), tasks_total=pl.len().cast(pl.Int64),
                   *sums, score=pl.col("score").mean(), stderr=_mean_stderr(), complete=pl.col("complete").all()))
    overall = (skills.group_by("model", maintain_order=True)
               .agg(skills=pl.col("score").is_not_null().sum().cast(pl.Int64), skills_total=pl.len().cast(pl.Int64),
                    *sums, score=pl.col("score").mean(), stderr=_mean_stderr(), complete=pl.col("complete").all()))
    unscored = (rows.filter(pl.col("unscored").is_not_null())
                .group_by(*keys, maintain_order=True)
                .agg(metric=pl.col("metric").first(), n=pl.len().cast(pl.Int64), reason=pl.col("unscored").first()))
    return Scores(tasks=tasks, skills=skills, overall=overall, unscored=unscored, protocol=protocol)
