"""Score responses against questions: per-row metrics, then task → skill → overall.

Input is a Polars responses table (`row`, `output`, optionally `model`) and the questions; every metric runs
over whole columns. Rows whose metric cannot be computed here (an embedding model that is not available) are
kept apart as *unscored*, with the reason; `strict` makes that an error instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from evaluator.prompts import PromptOptions, Protocol, answer_label
from evaluator.data.records import Metric, Question
from evaluator.scoring import embeddings, structured, text_overlap
from evaluator.scoring.aggregate import Scores, aggregate
from evaluator.scoring.embeddings import EmbeddingConfig, Embedder, EmbeddingUnavailable

__all__ = ["ScoringOptions", "Scores", "questions_frame", "score_rows", "score", "task_totals", "EmbeddingUnavailable"]


@dataclass(frozen=True)
class ScoringOptions:
    protocol: Protocol = Protocol.SKILL
    letter_choices: bool = False  # task-wise multiple choice rendered with (A)-(D)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    strict: bool = False  # unscorable rows are an error, not a note


def questions_frame(questions: list[Question], options: ScoringOptions = ScoringOptions()) -> pl.DataFrame:
    """One row per question, the truth split by shape: text, integer list or string list."""
    prompt_options = PromptOptions(letter_choices=options.letter_choices)

    def truth_text(q: Question) -> str | None:
        if q.metric is Metric.ACCURACY:
            return answer_label(q, prompt_options) if options.protocol is Protocol.TASK else str(q.truth)
        return q.truth if isinstance(q.truth, str) else None

    return pl.DataFrame(
        {
            "row": [i for i in range(len(questions))],
            "qid": [q.qid for q in questions],
            "skill": [q.skill for q in questions],
            "task": [q.task for q in questions],
            "metric": [q.metric.value for q in questions],
            "truth_text": [truth_text(q) for q in questions],
            "truth_ints": [q.truth if q.metric is Metric.HIT_RATE_3 else None for q in questions],
            "truth_nums": [q.truth if q.metric is Metric.NDCG else None for q in questions],
            "truth_strs": [([q.truth] if isinstance(q.truth, str) else q.truth)
                           if q.metric in (Metric.MICRO_F1, Metric.SENT_TRANSFORMER,
                                           Metric.MULTILINGUAL_SENT_TRANSFORMER) else None
                           for q in questions],
        },
        schema={"row": pl.UInt32, "qid": pl.String, "skill": pl.String, "task": pl.String, "metric": pl.String,
                "truth_text": pl.String, "truth_ints": pl.List(pl.Int64), "truth_nums": pl.List(pl.Float64),
                "truth_strs": pl.List(pl.String)},
    )


def _score_metric(part: pl.DataFrame, metric: Metric, options: ScoringOptions, embedder: Embedder) -> pl.DataFrame:
    """Adds `score` (and tp/fp/fn for NER) to the rows of one metric."""
    protocol = options.protocol
    if metric is Metric.MICRO_F1:
        return pl.concat([part, structured.ner_counts(part)], how="horizontal").with_columns(
            score=pl.lit(None, dtype=pl.Float64))
    if metric is Metric.ACCURACY:
        score = structured.accuracy(part, protocol, options.letter_choices)
    elif metric is Metric.HIT_RATE_3:
        score = structured.hit_rate(part, protocol)
    elif metric is Metric.NDCG:
        score, official = structured.ndcg(part, protocol)
        return part.with_columns(score=score, official=official)
    elif metric is Metric.ROUGEL:
        tag = f"rougel/rouge-score {text_overlap.library_version('rouge-score')}"
        score, official = text_overlap.score_pairs(part, text_overlap.rouge_l, tag, embedder.store)
        return part.with_columns(score=score, official=official)
    elif metric in (Metric.BLEU, Metric.JP_BLEU):
        japanese = metric is Metric.JP_BLEU
        tag = (f"{metric.value}/sacrebleu {text_overlap.library_version('sacrebleu')}"
               + (f"/mecab {text_overlap.library_version('mecab-python3')}" if japanese else ""))
        score, official = text_overlap.score_pairs(part, lambda o, t: text_overlap.bleu(o, t, japanese), tag,
                                                   embedder.store)
        return part.with_columns(score=score, official=official)
    else:
        score = embeddings.similarity(part, metric, embedder, clip=protocol is Protocol.SKILL)
    return part.with_columns(score=score.cast(pl.Float64))


def score_rows(responses: pl.DataFrame, questions: pl.DataFrame, options: ScoringOptions = ScoringOptions(),
               embedder: Embedder | None = None) -> pl.DataFrame:
    """Per-row scores. `responses` has `row` and `output` (and `model`, else one model named '')."""
    if "model" not in responses.columns:
        responses = responses.with_columns(model=pl.lit(""))
    joined = (responses.select("model", pl.col("row").cast(pl.UInt32), pl.col("output").fill_null(""))
              .with_row_index("order")
              .join(questions, on="row", how="inner", maintain_order="left"))
    own_embedder = embedder is None
    embedder = embedder or Embedder(options.embeddings)
    parts = []
    try:
        for (metric_name,), part in joined.partition_by("metric", as_dict=True, maintain_order=True).items():
            metric = Metric(metric_name)
            try:
                scored = _score_metric(part, metric, options, embedder)
            except EmbeddingUnavailable as exc:
                if options.strict:
                    raise
                scored = part.with_columns(score=pl.lit(None, dtype=pl.Float64), unscored=pl.lit(str(exc)))
            parts.append(scored)
    finally:
        if own_embedder:
            embedder.close()
    added = {"score": pl.Float64, "tp": pl.Int64, "fp": pl.Int64, "fn": pl.Int64, "unscored": pl.String,
             "official": pl.String}
    parts = [p.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in added.items() if c not in p.columns)
             for p in parts or [joined]]
    return pl.concat(parts, how="diagonal_relaxed").sort("order").drop("order")


def task_totals(frame: pl.DataFrame) -> pl.DataFrame:
    """Every task of a questions frame with its first row's metric and its question count."""
    return frame.group_by("skill", "task", maintain_order=True).agg(metric=pl.col("metric").first(),
                                                                    questions=pl.len().cast(pl.Int64))


def score(responses: pl.DataFrame, questions: list[Question], options: ScoringOptions = ScoringOptions(),
          embedder: Embedder | None = None) -> Scores:
    """Per-row scores aggregated to tasks, skills and overall; questions without a response count as errors."""
    frame = questions_frame(questions, options)
    return aggregate(score_rows(responses, frame, options, embedder), options.protocol.value, task_totals(frame))
