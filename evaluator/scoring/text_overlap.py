"""ROUGE-L and BLEU, computed once per distinct (output, truth) pair.

ROUGE-L uses rouge_score's own tokenizer with a memoised Porter stemmer and a bit-parallel LCS; BLEU is
sacrebleu's corpus BLEU over the single pair, as `evaluate.load('sacrebleu')` computes it for the official code.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Callable

import polars as pl


class _MemoStemmer:
    """rouge_score's Porter stemmer, remembering each word (stemming dominates ROUGE's cost)."""

    def __init__(self) -> None:
        from rouge_score.tokenizers import DefaultTokenizer  # imports nltk (about 1 s): only when needed

        self.stem = lru_cache(maxsize=None)(DefaultTokenizer(use_stemmer=True)._stemmer.stem)


@lru_cache(maxsize=1)
def _stemmer() -> _MemoStemmer:
    return _MemoStemmer()


@lru_cache(maxsize=200_000)
def rouge_tokens(text: str) -> tuple[str, ...]:
    from rouge_score import tokenize as rouge_tokenize

    return tuple(rouge_tokenize.tokenize(text, _stemmer()))


def lcs_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö): O(len(b)) big-integer steps."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(generation: str, truth: str) -> float:
    """`RougeScorer(['rougeL'], use_stemmer=True).score(generation, truth)['rougeL'].fmeasure`."""
    target, prediction = rouge_tokens(generation), rouge_tokens(truth)
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    precision = lcs / len(prediction)
    recall = lcs / len(target)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@lru_cache(maxsize=None)
def _bleu(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(lowercase=True, tokenize=tokenize, smooth_method="exp", effective_order=False)


def bleu(generation: str, truth: str, japanese: bool = False) -> float:
    """First line of the output (newlines trimmed) against the truth: corpus BLEU of one pair / 100."""
    hypothesis = generation.strip("\n").split("\n")[0]
    scorer = _bleu("ja-mecab" if japanese else "13a")
    return scorer.corpus_score([hypothesis], [[truth]]).score / 100


def library_version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def score_pairs(frame: pl.DataFrame, fn: Callable[[str, str], float], metric: str,
                store=None) -> tuple[pl.Series, pl.Series]:
    """`fn(output, truth_text)` for each distinct pair, broadcast back to the rows. A pair the metric itself
    cannot score (MeCab gives up on a megabyte of Japanese, as the official code would too) scores 0, and
    `official` says what the official code would raise. With a `store`, pairs scored before (under the same
    metric and library version) are read back instead of computed."""
    pairs = frame.select("output", "truth_text")
    distinct = pairs.unique(maintain_order=True)
    keys = [hashlib.sha256(json.dumps([o, t], ensure_ascii=False).encode("utf-8", "surrogatepass")).digest()
            for o, t in distinct.iter_rows()]
    known = store.get_pairs(metric, keys) if store is not None else {}
    fresh = {}
    for key, (output, truth) in zip(keys, distinct.iter_rows()):
        if key in known:
            continue
        try:
            fresh[key] = (fn(output, truth), None)
        except Exception as exc:  # noqa: BLE001: the metric library's own failure on this one pair
            fresh[key] = (0.0, f"{type(exc).__name__}: {str(exc)[:120]}")
    if fresh and store is not None:
        store.put_pairs(metric, fresh)
    known.update(fresh)
    lookup = distinct.with_columns(score=pl.Series([known[k][0] for k in keys], dtype=pl.Float64),
                                   official=pl.Series([known[k][1] for k in keys], dtype=pl.String))
    joined = pairs.join(lookup, on=["output", "truth_text"], how="left", maintain_order="left")
    return joined["score"], joined["official"]
