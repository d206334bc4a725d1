"""The answer's probabilities at no extra request: a second, clearly named view of multiple choice.

The official score reads one generated character, so a model that ranks the right choice first but writes
" 2" or "The" scores 0. With `--choice-probs` every multiple-choice request (one token already) also asks for
the first token's top log-probabilities (`logprobs: 5` on completions; `logprobs: true, top_logprobs: 5` on
chat), kept with the answer. From them, per model: the accuracy of the most probable valid choice, and the
probability mass on valid choices (how often the answer is well-formed). Never mixed into the official score.
"""

from __future__ import annotations

import json
import math
import re

import polars as pl

from evaluator.client.http import TOP_LOGPROBS, log_probability

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


def pick(logprobs: str | None, labels: list[str]) -> tuple[str | None, float | None]:
    """(the most probable valid label, the probability mass on valid labels) from one answer's top tokens; a
    token counts as the label it is once spaces are stripped (" 2" and "2" add up), as the official skill-wise
    scorer strips them. (None, None) without log-probabilities, or where any of them is not one (an old or
    foreign cache row); (None, 0.0) when no valid label is among them."""
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
        label = token.strip()
        if label in labels:
            mass[label] = mass.get(label, 0.0) + math.exp(value)
    if not mass:
        return None, 0.0
    best = max(mass, key=lambda label: (mass[label], -labels.index(label)))
    return best, min(1.0, sum(mass.values()))


def view(rows: pl.DataFrame) -> dict:
    """The per-model view over the multiple-choice rows (`metric` accuracy) with `prob_choice`, `valid_mass`
    and `truth_text`: accuracy of the most probable valid choice, the mean mass on valid choices, and how many
    questions had log-probabilities (n) of how many multiple-choice questions."""
    choice = rows.filter(pl.col("metric") == "accuracy")
    measured = choice.filter(pl.col("valid_mass").is_not_null())
    n = measured.height
    if n == 0:
        return {"available": False, "questions": choice.height, "n": 0, "accuracy": None, "valid_mass": None,
                "note": "no log-probabilities: run with --choice-probs, on a server or API that returns them "
                        "(Anthropic's does not)"}
    right = (measured["prob_choice"] == measured["truth_text"]).fill_null(False)
    return {"available": True, "questions": choice.height, "n": n, "accuracy": float(right.mean()),
            "valid_mass": float(measured["valid_mass"].mean()),
            "note": "ours, not the official score: the most probable valid choice among the first token's top "
                    f"{TOP_LOGPROBS} log-probabilities, and the probability mass on valid choices"}
