"""`compare`'s statistics against references: McNemar's exact p by hand and by scipy's binomial test, and the
paired bootstrap's interval against the exact bootstrap distribution (a multinomial over the per-question
differences), ties and all-equal pairs included."""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from evaluator.reports.compare import mcnemar_p, paired


@pytest.mark.parametrize("b, c, expected", [
    (0, 0, Fraction(1)),                 # no discordant pair: nothing to test
    (1, 0, Fraction(1)),                 # 2 × 1/2
    (5, 0, Fraction(2, 32)),             # 2 × (1/2)^5
    (2, 8, Fraction(2 * (1 + 10 + 45), 1024)),
    (8, 2, Fraction(2 * (1 + 10 + 45), 1024)),  # symmetric
    (3, 3, Fraction(1)),                 # a tie: 2 × 42/64 capped at 1
    (6, 1, Fraction(2 * (1 + 7), 128)),
    (0, 12, Fraction(2, 4096)),
])
def test_mcnemar_exact_p_by_hand(b, c, expected):
    assert mcnemar_p(b, c) == pytest.approx(float(expected), rel=1e-12)


def test_mcnemar_exact_p_equals_scipys_two_sided_binomial_test():
    """McNemar's exact test is the binomial test of b out of b + c at 1/2 (scipy has it as `binomtest`)."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is in the test extra: pip install 'shopping-mmlu[test]'")
    for b in range(0, 41):
        for c in range(0, 41):
            if b + c == 0:
                continue
            reference = stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
            assert mcnemar_p(b, c) == pytest.approx(reference, rel=1e-9, abs=1e-15), (b, c)


def run_of(scores: list[float], task: str = "t", metric: str = "accuracy", skill: str = "s") -> SimpleNamespace:
    """What `paired` reads of a scored run: one row per question, all answered and scored."""
    n = len(scores)
    rows = pl.DataFrame({"qid": [f"q{i}" for i in range(n)], "row": list(range(n)), "skill": [skill] * n,
                         "task": [task] * n, "metric": [metric] * n, "score": [float(s) for s in scores],
                         "tp": [None] * n, "fp": [None] * n, "fn": [None] * n, "answered": [True] * n,
                         "unscored": [None] * n},
                        schema_overrides={"tp": pl.Int64, "fp": pl.Int64, "fn": pl.Int64, "unscored": pl.String})
    return SimpleNamespace(rows=rows)


def test_all_equal_pairs_give_a_zero_interval_and_p_one():
    scores = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    table = paired(run_of(scores), run_of(scores), samples=500)
    for row in table.iter_rows(named=True):
        assert row["diff"] == 0 and row["low"] == 0 and row["high"] == 0, row
    task = table.filter(pl.col("level") == "task").row(0, named=True)
    assert task["p"] == 1.0 and task["n"] == 10 and task["a"] == task["b"] == 0.6


def test_paired_table_carries_mcnemar_of_the_discordant_pairs():
    """A right where B is wrong on 6 questions, the reverse on 1, both right on 13: p = 2 × 8/128."""
    a = [1] * 6 + [0] + [1] * 13
    b = [0] * 6 + [1] + [1] * 13
    task = paired(run_of(a), run_of(b), samples=200).filter(pl.col("level") == "task").row(0, named=True)
    assert task["p"] == pytest.approx(0.125, rel=1e-12)
    assert task["diff"] == pytest.approx(5 / 20) and task["a"] == pytest.approx(19 / 20)
    other = paired(run_of(a), run_of(b), samples=200)  # not an accuracy task: no McNemar
    assert other["p"].null_count() == other.height - 1
    rouge = paired(run_of(a, metric="rougel"), run_of(b, metric="rougel"), samples=200)
    assert rouge["p"].null_count() == rouge.height


def exact_bootstrap_quantile(diffs: list[int], q: float) -> Fraction:
    """The q-quantile of the mean of n draws with replacement from `diffs` (values -1, 0, 1), exactly: the
    numbers of +1 and -1 drawn are multinomial."""
    n = len(diffs)
    p_up, p_down = Fraction(diffs.count(1), n), Fraction(diffs.count(-1), n)
    p_zero = 1 - p_up - p_down
    mass: dict[Fraction, Fraction] = {}
    for up in range(n + 1):
        for down in range(n - up + 1):
            ways = math.comb(n, up) * math.comb(n - up, down)
            prob = ways * p_up ** up * p_down ** down * p_zero ** (n - up - down)
            value = Fraction(up - down, n)
            mass[value] = mass.get(value, 0) + prob
    total = Fraction(0)
    for value in sorted(mass):
        total += mass[value]
        if total >= q:
            return value
    return max(mass)


@pytest.mark.parametrize("a, b", [
    ([1] * 12 + [0] * 8 + [1] * 10, [0] * 4 + [1] * 8 + [0] * 8 + [1] * 10),  # discordant both ways, concordant
    ([1, 0] * 15, [1, 0] * 14 + [0, 1]),                                       # one discordant pair each way
    ([1] * 9 + [0] * 21, [0] * 30),                                            # B never right
])
def test_paired_bootstrap_interval_matches_the_exact_bootstrap_distribution(a, b):
    """The 95% percentile interval of A − B lies within the exact bootstrap's 2.0-3.0% and 97.0-98.0%
    quantiles (Monte Carlo error at 20,000 resamples is ~0.1%). Resampling A and B apart (unpaired) would
    give a wider interval and fail where most questions agree."""
    diffs = [x - y for x, y in zip(a, b)]
    task = paired(run_of(a), run_of(b), samples=20_000, seed=7).filter(pl.col("level") == "task").row(0, named=True)
    assert task["diff"] == pytest.approx(sum(diffs) / len(diffs))
    assert exact_bootstrap_quantile(diffs, 0.020) <= task["low"] + 1e-12
    assert task["low"] <= exact_bootstrap_quantile(diffs, 0.030) + 1e-12
    assert exact_bootstrap_quantile(diffs, 0.970) <= task["high"] + 1e-12
    assert task["high"] <= exact_bootstrap_quantile(diffs, 0.980) + 1e-12


def test_a_skill_of_one_task_and_the_overall_of_one_skill_repeat_that_tasks_interval():
    a = [1] * 12 + [0] * 8
    b = [0] * 4 + [1] * 8 + [0] * 8
    table = paired(run_of(a), run_of(b), samples=2000)
    task, skill, overall = (table.filter(pl.col("level") == level).row(0, named=True)
                            for level in ("task", "skill", "overall"))
    for row in (skill, overall):
        assert (row["diff"], row["low"], row["high"]) == pytest.approx((task["diff"], task["low"], task["high"]))
