"""Accuracy, hit rate@3, NDCG and NER counts over whole columns, with the official parsing quirks.

Each function takes a frame with `output` and the truth column it needs and returns one value per row.
The skill-wise semantics are `skill_wise_eval/metrics.py`; the task-wise ones are `task_wise_eval/hf_*.py`.
"""

from __future__ import annotations

import polars as pl

from evaluator.prompts import Protocol
from evaluator.scoring.python_semantics import (
    PY_WHITESPACE,
    first_matching_char,
    int_lists,
    map_unique,
)


def choice_read(text: str, protocol: Protocol, letter_choices: bool = False) -> str:
    """The choice an output names, as the official scorer reads it. Skill-wise: spaces (only " ") stripped,
    the first character. Task-wise: the first numeric (or, with letter choices, alphanumeric) character, else
    the whole output. The choice-probability view reads each token through this too."""
    if protocol is Protocol.SKILL:
        return text.strip(" ")[:1]
    return first_matching_char(text, str.isalnum if letter_choices else str.isnumeric)


def accuracy(frame: pl.DataFrame, protocol: Protocol, letter_choices: bool = False) -> pl.Series:
    """1.0 where `choice_read` of the output is the truth's label."""
    first = map_unique(frame["output"], lambda text: choice_read(text, protocol, letter_choices), pl.String)
    return (first == frame["truth_text"]).cast(pl.Float64)


def _first_line_after_newline_trim(output: pl.Series) -> pl.Series:
    """`if '\\n' in s: s = s.lstrip('\\n').rstrip('\\n').split('\\n')[0]` (ndcg)."""
    first_line = output.str.strip_chars("\n").str.split("\n").list.first()
    return pl.select(pl.when(output.str.contains("\n", literal=True)).then(first_line).otherwise(output)).to_series()


def hit_rate(frame: pl.DataFrame, protocol: Protocol) -> pl.Series:
    """|truth ∩ first 3 integers of the output| / |truth|. Skill-wise splits the whole output on ','
    (its newline branch splits the whole text again); task-wise really takes the first line."""
    output = frame["output"].str.strip_chars(PY_WHITESPACE)  # matters: int() takes less whitespace than strip()
    if protocol is Protocol.TASK:
        output = output.str.split("\n").list.first()
    kept = int_lists(output.str.split(",")).list.head(3)
    truth = frame["truth_ints"]
    hits = kept.list.set_intersection(truth).list.len()
    return (hits / truth.list.len()).cast(pl.Float64)


def ndcg(frame: pl.DataFrame, protocol: Protocol) -> tuple[pl.Series, pl.Series]:
    """DCG of the parsed ranking over IDCG of the truth sorted descending; gain 2^rel - 1, discount log2(pos+1).

    Skill-wise (`metrics.py`) keeps at most as many indices as there are candidates; task-wise
    (`hf_ranking.py`) scores every parsed index, so repeats and extra indices keep adding (a score can pass 1).
    An index past the list counts 0; index 0 takes the last element and negative ones wrap, as Python's
    indexing does. Returns (score, official): where the official code gives no number (an index below -len
    raises IndexError, an all-zero truth is 0/0 = NaN) the row scores 0 and `official` says what it would do.
    """
    line = _first_line_after_newline_trim(frame["output"]).str.strip_chars(PY_WHITESPACE)
    truth = frame["truth_nums"]
    rows = pl.DataFrame({"ranked": int_lists(line.str.split(",")), "truth": truth}).with_row_index("i")
    if protocol is Protocol.SKILL:
        rows = rows.with_columns(pl.col("ranked").list.slice(0, pl.col("truth").list.len()))
    picks = (
        rows.explode("ranked")
        .drop_nulls("ranked")
        .with_columns(pos=pl.int_range(1, pl.len() + 1).over("i"), index=pl.col("ranked") - 1)
        .with_columns(rel=pl.when(pl.col("index") < pl.col("truth").list.len())
                      .then(pl.col("truth").list.get(pl.col("index"), null_on_oob=True))
                      .otherwise(0.0)
                      .fill_null(0.0),
                      below=pl.col("index") < -pl.col("truth").list.len().cast(pl.Int64))
        .group_by("i")
        .agg(dcg=(gain(pl.col("rel")) / (pl.col("pos") + 1).log(2)).sum(),
             below=pl.col("ranked").filter(pl.col("below")).first())
    )
    ideal = (
        rows.select("i", rel=pl.col("truth").list.sort(descending=True))
        .explode("rel")
        .with_columns(pos=pl.int_range(1, pl.len() + 1).over("i"))
        .group_by("i")
        .agg(idcg=(gain(pl.col("rel")) / (pl.col("pos") + 1).log(2)).sum())
    )
    scored = (
        rows.select("i")
        .join(picks, on="i", how="left")
        .join(ideal, on="i", how="left")
        .sort("i")
        .select(score=pl.when((pl.col("idcg") > 0) & pl.col("below").is_null())
                .then(pl.col("dcg").fill_null(0.0) / pl.col("idcg"))
                .otherwise(0.0),
                official=pl.when(pl.col("below").is_not_null())
                .then(pl.format("IndexError: index {} is below -len(truth)", pl.col("below")))
                .when(pl.col("idcg") == 0)
                .then(pl.lit("NaN: all-zero relevance (0/0)")))
    )
    return scored["score"].cast(pl.Float64), scored["official"]


def gain(relevance: pl.Expr) -> pl.Expr:
    """np.power(2, relevance) - 1 (exact for integer relevance, as in float64)."""
    return pl.lit(2.0, dtype=pl.Float64).pow(relevance) - 1.0


def ner_counts(frame: pl.DataFrame) -> pl.DataFrame:
    """Per-row (tp, fp, fn): first line after leading newlines, spaces stripped, split on ',', exact empty
    strings dropped, each lowercased and space-stripped; truth lowercased; set intersection."""
    line = frame["output"].str.strip_chars_start("\n").str.split("\n").list.first().str.strip_chars(" ")
    pieces = line.str.split(",").list.eval(pl.element().filter(pl.element() != ""))
    exploded = pl.DataFrame({"piece": pieces}).with_row_index("i").explode("piece", empty_as_null=True)
    lowered = map_unique(exploded["piece"], str.lower, pl.String).str.strip_chars(" ")
    predicted = (exploded.with_columns(piece=lowered)
                 .group_by("i", maintain_order=True).agg(pl.col("piece").drop_nulls())["piece"])
    truth = frame["truth_strs"]
    truth_exploded = pl.DataFrame({"t": truth}).with_row_index("i").explode("t")
    truth_lower = (truth_exploded.with_columns(t=map_unique(truth_exploded["t"], str.lower, pl.String))
                   .group_by("i", maintain_order=True).agg("t")["t"])
    tp = predicted.list.set_intersection(truth_lower).list.len().cast(pl.Int64)
    return pl.DataFrame({
        "tp": tp,
        "fp": predicted.list.len().cast(pl.Int64) - tp,
        "fn": truth.list.len().cast(pl.Int64) - tp,
    })


def micro_f1(tp: int, fp: int, fn: int) -> float:
    """compute_f1_score over pooled counts; 0 where precision or recall is undefined or both are 0."""
    if tp + fp == 0 or tp + fn == 0:
        return 0.0
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
