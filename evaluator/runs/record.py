"""A run scored from the cache alone and its saved record: `RunResult`, the per-question rows, completeness
(complete, incomplete or failed, and why), standard errors and the sessions that answered."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from evaluator.cache.responses import CacheFull, ResponseCache, run_key
from evaluator.client.http import LOGPROBS_REFUSED, logprobs_unavailable
from evaluator.data import loaders
from evaluator.data.records import Question
from evaluator.provenance import git_commit, iso, server_kind
from evaluator.redact import redact
from evaluator.runs.preflight import ServerFacts
from evaluator.runs.settings import Answered, Planned, RunConfig
from evaluator.scoring import ScoringOptions, questions_frame, score_rows, task_totals
from evaluator.scoring.aggregate import Scores, aggregate
from evaluator.scoring.embeddings import Embedder
from servers.profiles import ModelProfile


@dataclass
class RunResult:
    """Everything one run did and scored; `status` is complete, incomplete or failed."""

    config: RunConfig
    dataset: loaders.Dataset
    questions: list[Question]
    planned: list[Planned]
    scores: Scores
    rows: pl.DataFrame  # one per question: row, qid, skill, task, metric, answered, score, ... (samples)
    tasks: list[dict]
    status: str
    reason: str | None
    sent: int
    cached: int
    errors: int
    unscored: int
    seconds: float  # the fan-out: first send to last reply
    timings: dict[str, float]
    started_at: float
    finished_at: float
    server: ServerFacts | None
    dtype: str | None
    kept: dict | None = None  # the saved run that was kept instead of this one (it covered more)
    answering: dict = field(default_factory=dict)  # when its answers arrived and the sessions that sent them

    @property
    def overall(self) -> float | None:
        return self.scores.overall_score(self.config.profile.name)

    @property
    def answered(self) -> int:
        return len(self.questions) - self.errors

    @property
    def prompt_tokens(self) -> int:
        return int(sum(t["prompt_tokens"] for t in self.tasks))

    @property
    def completion_tokens(self) -> int:
        return int(sum(t["completion_tokens"] for t in self.tasks))

    def cost(self) -> float | None:
        """USD at the prices of when it ran: live answers at the live rate, batch answers at the batch rate."""
        profile = self.config.profile
        if profile.prices() is None:
            return None
        total = 0.0
        for batch, part in self.rows.filter(pl.col("answered")).group_by(pl.col("source").is_not_null()):
            prices = profile.prices(batch=bool(batch[0]))
            total += (part["prompt_tokens"].fill_null(0).sum() * prices[0]
                      + part["completion_tokens"].fill_null(0).sum() * prices[1]) / 1e6
        return total

    def document(self) -> dict:
        """The `--json` document: the `score` document plus completeness and request totals."""
        doc = self.scores.for_model(self.config.profile.name)
        doc.update(status=self.status, reason=self.reason, errors=self.errors, unscored=self.unscored,
                   requests={"sent": self.sent, "cached": self.cached, "errors": self.errors,
                             "seconds": round(self.seconds, 3)})
        if self.config.choice_probs:
            doc["choice_probabilities"] = self.choice_probabilities()
        return doc

    def choice_probabilities(self) -> dict:
        """The multiple-choice view from log-probabilities (`--choice-probs`), beside the official scores and
        aggregated as they are."""
        from evaluator.scoring.choice_probs import view

        found = view(self.rows, self.config.protocol.value)
        why = _no_logprobs(self.config.profile, self.rows)
        if why is not None and not found["available"]:
            return {**found, "note": f"not available for this model: {why}"}
        return found

    def write_json(self, path: Path) -> None:
        from evaluator.scoring.aggregate import write_json_atomic

        write_json_atomic(path, self.document())


def score_from_cache(questions: list[Question], runs: list[tuple[str, list[Planned]]], cache: ResponseCache,
                     options: ScoringOptions, embedder: Embedder | None = None
                     ) -> dict[str, tuple[Scores, pl.DataFrame, list[dict]]]:
    """For each (model, planned) on the same questions: scores over answered questions (a question without a
    cached answer counts as an error of its task), the per-question rows, and the per-task table with counts
    and tokens. Every model's answers are scored in one pass, so texts shared between models (the
    references above all) are encoded once."""
    frame = questions_frame(questions, options)
    found, tables = {}, []
    for model, planned in runs:
        keys = [p.key for p in planned]
        answers = cache.answers(keys)
        errors = cache.errors([k for k in keys if k not in answers])
        found[model] = (answers, errors)
        answered = [p for p in planned if p.key in answers]
        tables.append(pl.DataFrame({
            "model": pl.Series([model] * len(answered), dtype=pl.String),
            "row": pl.Series([p.row for p in answered], dtype=pl.UInt32),
            "output": pl.Series([answers[p.key].text for p in answered], dtype=pl.String),
        }))
    all_rows = score_rows(pl.concat(tables), frame, options, embedder)
    totals = task_totals(frame)
    out = {}
    for model, planned in runs:
        answers, errors = found[model]
        scored_rows = all_rows.filter(pl.col("model") == model)
        scores = aggregate(scored_rows, options.protocol.value, totals, [model])
        out[model] = (scores, *_per_question(frame, planned, answers, errors, scored_rows, scores, model, options))
    return out


def _per_question(frame: pl.DataFrame, planned: list[Planned], answers: dict, errors: dict,
                  scored_rows: pl.DataFrame, scores: Scores, model: str,
                  options: ScoringOptions) -> tuple[pl.DataFrame, list[dict]]:
    def error_of(p: Planned) -> str | None:
        if p.key in answers:
            return None
        if p.key not in errors:
            return "not asked yet"
        kind, status = errors[p.key][0], errors[p.key][1]
        return f"{kind}" + (f" {status}" if status else "")

    def field(name: str) -> list:
        return [getattr(answers[p.key], name) if p.key in answers else None for p in planned]

    meta = pl.DataFrame({
        "row": pl.Series(range(len(planned)), dtype=pl.UInt32),
        "answered": [p.key in answers for p in planned],
        "finish_reason": pl.Series(field("finish_reason"), dtype=pl.String),
        "prompt_tokens": pl.Series(field("prompt_tokens"), dtype=pl.Int64),
        "completion_tokens": pl.Series(field("completion_tokens"), dtype=pl.Int64),
        "latency_s": pl.Series(field("latency_s"), dtype=pl.Float64),
        "source": pl.Series(field("source"), dtype=pl.String),
        "error": pl.Series([error_of(p) for p in planned], dtype=pl.String),
        "error_message": pl.Series([errors[p.key][2] if p.key in errors and p.key not in answers else None
                                    for p in planned], dtype=pl.String),
        **_choice_columns(planned, answers, options),
    })
    rows = (frame.select("row", "qid", "skill", "task", "metric", "truth_text")
            .join(meta, on="row", how="left")
            .join(scored_rows.select("row", "output", "score", "tp", "fp", "fn", "unscored", "official"),
                  on="row", how="left")
            .sort("row"))
    tokens = rows.group_by("skill", "task").agg(prompt_tokens=pl.col("prompt_tokens").fill_null(0).sum(),
                                                completion_tokens=pl.col("completion_tokens").fill_null(0).sum())
    tasks = (scores.tasks.filter(pl.col("model") == model).drop("model")
             .join(tokens, on=["skill", "task"], how="left", maintain_order="left"))
    return rows, tasks.to_dicts()


def _choice_columns(planned: list[Planned], answers: dict, options: ScoringOptions) -> dict[str, pl.Series]:
    """prob_choice and valid_mass (`choice_probs.pick`) for the answers that kept log-probabilities."""
    from evaluator.scoring.choice_probs import labels_of, pick

    picks, refused = [], []
    for p in planned:
        logprobs = answers[p.key].logprobs if p.key in answers else None
        refused.append(logprobs == LOGPROBS_REFUSED)
        if logprobs is None:
            picks.append((None, None))
            continue
        text = p.body["prompt"] if "prompt" in p.body else p.body["messages"][-1]["content"]
        picks.append(pick(logprobs, labels_of(text), options.protocol, options.letter_choices))
    return {"prob_choice": pl.Series([c for c, _ in picks], dtype=pl.String),
            "valid_mass": pl.Series([m for _, m in picks], dtype=pl.Float64),
            "logprobs_refused": pl.Series(refused, dtype=pl.Boolean)}


def _no_logprobs(profile: ModelProfile, rows: pl.DataFrame) -> str | None:
    """Why a model's answers carry no log-probabilities: never asked of it, or refused by its endpoint."""
    why = logprobs_unavailable(profile.provider, profile.reasoning, profile.reasoning_effort)
    if why is None and rows["logprobs_refused"].any():
        why = "its endpoint refused them (a 400 naming logprobs); its questions were asked without them"
    return why


def _status(stopped: str | None, errors: int, unscored: int, questions: int) -> str:
    if stopped or (questions and errors == questions):
        return "failed"
    return "complete" if errors == 0 and unscored == 0 else "incomplete"


def result(run: Answered, scores: Scores, rows: pl.DataFrame, tasks: list[dict], scoring_s: float,
            cache: ResponseCache, save: bool) -> RunResult:
    config, sending = run.config, run.sending
    errors = int(sum(t["errors"] for t in tasks))
    unscored = int(sum(t["unscored"] for t in tasks))
    status = _status(sending.stopped, errors, unscored, len(run.questions))
    reason = redact(sending.stopped) if sending.stopped else (  # the breaker's reason quotes a reply
        f"no question answered ({errors} errors)" if status == "failed" else
        _why_incomplete(rows, scores) if status == "incomplete" else None)
    result = RunResult(
        config=config, dataset=run.dataset, questions=run.questions, planned=run.planned, scores=scores, rows=rows,
        tasks=tasks, status=status, reason=reason, sent=sending.sent, cached=run.cached, errors=errors,
        unscored=unscored, seconds=sending.seconds,
        timings={"startup_s": round(sending.startup_s, 3), "fan_out_s": round(sending.seconds, 3),
                 "scoring_s": round(scoring_s, 3), "total_s": round(time.monotonic() - run.clock, 3)},
        started_at=run.started_at, finished_at=time.time(), server=sending.server, dtype=config.served_dtype())
    result.answering = _answering(run, cache)
    if save:
        try:
            result.kept = cache.save_run(_record(result), _task_records(tasks))
        except CacheFull as exc:
            result.status = "failed"
            result.reason = (result.reason + "; " if result.reason else "") + f"scores not saved: {exc}"
    return result


def _why_incomplete(rows: pl.DataFrame, scores: Scores) -> str:
    """Why an incomplete run is: its questions without an answer by error kind, its answers not scored by
    reason (the three most common of each)."""
    parts = []
    missing = rows.filter(pl.col("error").is_not_null())["error"].value_counts(sort=True)
    if missing.height:
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in missing.head(3).iter_rows())
        parts.append(f"{int(missing['count'].sum())} question(s) have no answer ({kinds}"
                     + (", ..." if missing.height > 3 else "") + ")")
    unscored = scores.unscored.group_by("reason").agg(pl.col("n").sum()).sort("n", descending=True)
    if unscored.height:
        why = "; ".join(f"{r} ({n})" for r, n in unscored.select("reason", "n").head(3).iter_rows())  # whole
        parts.append(f"{int(unscored['n'].sum())} answer(s) not scored: {why}")
    return "; ".join(parts) or "not every question was answered and scored"


def _session(run: Answered) -> dict | None:
    """This run's answering session, kept with its run record: when it sent, how many, to what server, by
    which version of ours (None where it sent nothing)."""
    from evaluator import __version__

    sending, config = run.sending, run.config
    if not sending.sent:
        return None
    facts = sending.server
    return {"started_at": iso(run.started_at), "finished_at": iso(run.answered_at or time.time()),
            "sent": sending.sent, "server": server_kind(config), "batch": config.uses_batch,
            "vllm_version": facts.version if facts else None,
            "served_models": facts.models[:20] if facts else None,
            "startup_s": round(sending.startup_s, 3), "fan_out_s": round(sending.seconds, 3),
            "dtype": config.served_dtype(), "shopping_mmlu": __version__, "git_commit": git_commit()}


def _answering(run: Answered, cache: ResponseCache) -> dict:
    """When this run's answers arrived (first and last, from the cache) and the sessions that sent them:
    the saved record's, then this run's."""
    from evaluator.cache.responses import merge_sessions, sessions_of

    count, first, last = cache.answer_span(list({p.key for p in run.planned}))
    saved = cache.saved_run(run_key(run.config.profile.name, run.dataset.sha256, run.config.protocol.value,
                                    run.config.render_mode.value, run.config.variant))
    session = _session(run)
    sessions = merge_sessions(sessions_of(saved["details"]) if saved else [], [session] if session else [])
    return {"answers": count, "first_at": iso(first) if first is not None else None,
            "last_at": iso(last) if last is not None else None, "by": sessions}


def run_key_of(result: RunResult) -> str:
    config = result.config
    return run_key(config.profile.name, result.dataset.sha256, config.protocol.value, config.render_mode.value,
                   config.variant)


def _record(result: RunResult) -> dict:
    from evaluator.scoring.aggregate import finite

    config = result.config
    key = run_key_of(result)
    scored = int(sum(t["n"] for t in result.tasks))
    skills = result.scores.skills.filter(pl.col("model") == config.profile.name)
    skill_scores = finite(dict(zip(skills["skill"].to_list(), skills["score"].to_list())))
    return {"key": key, "model": config.profile.name, "data": str(Path(config.data).resolve()),
            "data_sha256": result.dataset.sha256, "protocol": config.protocol.value,
            "rendering": config.render_mode.value, "variant": config.variant, "questions": len(result.questions),
            "answered": result.answered, "scored": scored, "errors": result.errors, "unscored": result.unscored,
            "status": result.status, "reason": result.reason, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "cost": result.cost(),
            "details": json.dumps({"groups": result.dataset.groups, "prices": config.profile.prices(),
                                   "dtype": result.dtype, "timings": result.timings,
                                   "answered_by": result.answering.get("by", []),
                                   # the run's own aggregation, which every view shows as it is
                                   "skills": skill_scores, "overall": finite(result.overall),
                                   "stderr": _stderr(result), "profile": config.profile.public(),
                                   **({"choice_probs": result.choice_probabilities()}
                                      if result.config.choice_probs else {})}),
            "created_at": result.finished_at}


def _stderr(result: RunResult) -> dict:
    """The standard errors of the run's overall, skill and task scores (aggregate.py), kept with the scores."""
    from evaluator.scoring.aggregate import finite

    name = result.config.profile.name
    skills = result.scores.skills.filter(pl.col("model") == name)
    overall = result.scores.overall.filter(pl.col("model") == name)
    return finite({"overall": overall["stderr"][0] if overall.height else None,
                   "skills": dict(zip(skills["skill"].to_list(), skills["stderr"].to_list())),
                   "tasks": [[t["skill"], t["task"], t.get("stderr")] for t in result.tasks]})


def _task_records(tasks: list[dict]) -> list[dict]:
    return [{"skill": t["skill"], "task": t["task"], "metric": t["metric"], "questions": t["questions"],
             "scored": t["n"], "errors": t["errors"], "unscored": t["unscored"], "score": t["score"],
             "prompt_tokens": t["prompt_tokens"], "completion_tokens": t["completion_tokens"],
             "official": t["official"]} for t in tasks]
