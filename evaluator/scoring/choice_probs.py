"""The answer's probabilities at no extra request: a second, clearly named view of multiple choice.

The official score reads one generated character, so a model that ranks the right choice first but writes
" 2" or "The" scores 0. With `--choice-probs` every multiple-choice request (one token already) also asks for
the first token's top log-probabilities (`logprobs: 5` on completions; `logprobs: true, top_logprobs: 5` on
chat), kept with the answer. From them, per model, a view aggregated per task, skill and overall as the official
score is: multiple choice scored by the most probable valid choice (every other question by its official
score), and the probability mass on valid choices (how often the answer is well-formed). Never mixed into the
official score.
"""

from __future__ import annotations

import json
import math
import re

import polars as pl

from evaluator.client.http import TOP_LOGPROBS, log_probability
from evaluator.prompts import Protocol
from evaluator.scoring.structured import choice_read

SCALE = re.compile(r"scale of ([0-9]) to ([0-9])")  # review rating: "on a scale of 1 to 5"
# The option lines of a multiple-choice prompt: "0. text" (skill-wise, numbered CSV choices) or "(A) text".
OPTION = re.compile(r"(?m)^[ \t]*(?:\(([A-Za-z0-9])\)|([0-9])[.)])[ \t]")


def labels_of(text: str) -> list[str]:
    """The choice labels a multiple-choice prompt offers (its option lines, or a rating scale), in order,
    once each."""
    found = []
    for letter, digit in OPTION.findall(text or ""):
        label = letter or digit
        if label not in found:
            found.append(label)
    scale = SCALE.search(text or "") if not found else None
    if scale and int(scale.group(1)) < int(scale.group(2)):
        found = [str(n) for n in range(int(scale.group(1)), int(scale.group(2)) + 1)]
    return found


def pick(logprobs: str | None, labels: list[str], protocol: Protocol = Protocol.SKILL,
         letter_choices: bool = False) -> tuple[str | None, float | None]:
    """(the most probable valid label, the probability mass on valid labels) from one answer's top tokens; a
    token counts as the label the protocol's official scorer would read in it (`structured.choice_read`:
    skill-wise " 2" and "2" add up, "\u00a02" is no label; task-wise it is "2"). (None, None) without
    log-probabilities, or where any of them is not one (an old or foreign cache row); (None, 0.0) when no
    valid label is among them."""
    if logprobs is None:
        return None, None
    try:
        top = json.loads(logprobs)
    except (ValueError, RecursionError, TypeError):
        return None, None
    if not isinstance(top, dict):  # a cache row not written by `first_token`: no view for this question
        return None, None
    values = {token: log_probability(value) for token, value in top.items()}
    if None in values.values():
        return None, None
    mass: dict[str, float] = {}
    for token, value in values.items():
        label = choice_read(token, protocol, letter_choices)
        if label in labels:
            mass[label] = mass.get(label, 0.0) + math.exp(value)
    if not mass:
        return None, 0.0
    best = max(mass, key=lambda label: (mass[label], -labels.index(label)))
    return best, min(1.0, sum(mass.values()))


NO_LOGPROBS = "no log-probabilities kept with this answer"


def view(rows: pl.DataFrame, protocol: str = "skill") -> dict:
    """The view over a run's per-question rows (`answered`, `score`, `tp`/`fp`/`fn`, `unscored`, `prob_choice`,
    `valid_mass`, `truth_text`), aggregated exactly as the official score is (`aggregate.aggregate`: per task,
    then skill, then overall, with standard errors and completeness): a multiple-choice question scores 1 where
    its most probable valid choice is the truth (an answered one without log-probabilities is not scored);
    every other question keeps its official score, so a model whose most probable choice is always the one it
    wrote has a view equal to its official score. The mass on valid choices is aggregated the same way over
    the multiple-choice tasks alone. Full precision; the document has the shape of `score --json`'s."""
    from evaluator.scoring import task_totals
    from evaluator.scoring.aggregate import aggregate

    choice = pl.col("metric") == "accuracy"
    measured = rows.filter(choice & pl.col("valid_mass").is_not_null()).height
    questions = rows.filter(choice).height
    if measured == 0:
        return {"available": False, "questions": questions, "n": 0, "score": None, "stderr": None,
                "valid_mass": None,
                "note": "no log-probabilities: run with --choice-probs, on a server or API that returns them "
                        "(Anthropic's does not)"}
    answered = rows.filter(pl.col("answered")).with_columns(model=pl.lit("", dtype=pl.String))
    read = (answered.with_columns(
        score=pl.when(choice & pl.col("valid_mass").is_not_null())
        .then((pl.col("prob_choice") == pl.col("truth_text")).fill_null(False).cast(pl.Float64))
        .when(choice).then(None).otherwise(pl.col("score")),
        unscored=pl.when(choice & pl.col("valid_mass").is_null()).then(pl.lit(NO_LOGPROBS))
        .otherwise(pl.col("unscored")),
        official=pl.when(choice).then(None).otherwise(pl.col("official"))))
    doc = aggregate(read, protocol, task_totals(rows), [""]).for_model("")
    mass = aggregate(answered.filter(choice).with_columns(score=pl.col("valid_mass"),
                                                         unscored=pl.when(pl.col("valid_mass").is_null())
                                                         .then(pl.lit(NO_LOGPROBS)).otherwise(None)),
                     protocol, task_totals(rows.filter(choice)), [""]).for_model("")
    task_mass = {(t["skill"], t["task"]): t["score"] for t in mass["tasks"]}
    for task in doc["tasks"]:
        task["valid_mass"] = task_mass.get((task["skill"], task["task"]))
        task["from"] = "probabilities" if (task["skill"], task["task"]) in task_mass else "official score"
    for skill, summary in doc["skills"].items():
        summary["valid_mass"] = (mass["skills"].get(skill) or {}).get("score")
    overall = doc["overall"] or {}
    return {"available": True, "questions": questions, "n": measured, "score": overall.get("score"),
            "stderr": overall.get("stderr"), "valid_mass": (mass["overall"] or {}).get("score"), **doc,
            "note": "ours, not the official score: each multiple-choice question scored by its most probable valid "
                    f"choice among the first token's top {TOP_LOGPROBS} log-probabilities, every other question by "
                    "its official score, aggregated as the official score is; valid_mass: the probability mass "
                    "on valid choices, over the multiple-choice tasks"}
