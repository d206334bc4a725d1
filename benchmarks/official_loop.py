"""Our own re-implementation of the official per-row scoring loop: the baseline and the tests' oracle.

It follows `skill_wise_eval/metrics.py` + `skill_evaluation.py` and the task-wise `hf_*.py` scripts step by
step: one question at a time, a new ROUGE scorer and a new BLEU per call (as `evaluate` builds one per
`compute`), one `encode` per text. Its edges are the official ones, not our evaluator's: an all-zero relevance
list gives NaN (0/0), a ranking index below -len raises IndexError, a NER task with nothing predicted raises
ZeroDivisionError; the skill-wise `ndcg_eval` keeps at most len(truth) indices, the task-wise one all of them.
"""

from __future__ import annotations

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer


def accuracy(generation: str, truth: str) -> int:
    generation = generation.lstrip(" ").rstrip(" ")
    if generation == "":
        return 0
    return 1 if generation[0] == truth else 0


def task_accuracy(generation: str, label: str, letters: bool = False) -> int:
    answer = generation
    for ch in answer:
        if (ch.isalnum() if letters else ch.isnumeric()):
            answer = ch
            break
    return 1 if answer == label else 0


def _ints(pieces: list[str]) -> list[int]:
    out = []
    for piece in pieces:
        try:
            out.append(int(piece))
        except ValueError:
            continue
    return out


def hit_rate(generation: str, truth: list[int], task_wise: bool = False) -> float:
    generation = generation.lstrip().rstrip()
    if task_wise and "\n" in generation:
        generation = generation.split("\n")[0]
    retrieved = _ints(generation.split(","))[:3]
    return len(set(truth).intersection(set(retrieved))) / len(truth)


def ndcg(ranked_list: list[int], weight: list) -> float:
    """`metrics.ndcg` / `hf_ranking.ndcg`, line by line (on a copy: the official code sorts `weight` in place)."""
    weight = list(weight)
    idcg = 0
    dcg = 0
    for i in range(len(ranked_list)):
        position = i + 1
        if ranked_list[i] - 1 < len(weight):
            relevance = weight[ranked_list[i] - 1]  # IndexError below -len, as in the official code
        else:
            relevance = 0
        dcg += (np.power(2, relevance) - 1) / np.log2(position + 1)
    weight.sort(reverse=True)
    for i in range(len(weight)):
        position = i + 1
        relevance = weight[i]
        idcg += (np.power(2, relevance) - 1) / np.log2(position + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(dcg / idcg)


def ndcg_eval(generation: str, truth: list, task_wise: bool = False) -> float:
    """`metrics.ndcg_eval` (skill-wise: at most len(truth) indices) or `hf_ranking.py`'s loop body (all)."""
    if "\n" in generation:
        generation = generation.lstrip("\n").rstrip("\n")
        generation = generation.split("\n")[0]
    ranked_list = _ints(generation.lstrip().rstrip().split(","))
    if not task_wise and len(ranked_list) > len(truth):
        ranked_list = ranked_list[: len(truth)]
    return ndcg(ranked_list, truth)


def tp_fp_fn(generation: str, truth: list[str]) -> tuple[int, int, int]:
    generation = generation.lstrip("\n").split("\n")[0].lstrip(" ").rstrip(" ")
    answer = [a for a in generation.split(",") if a != ""]
    answer_lower = [a.lower().lstrip(" ").rstrip(" ") for a in answer]
    truth_lower = [t.lower() for t in truth]
    tp = len(set(answer_lower).intersection(set(truth_lower)))
    return tp, len(answer_lower) - tp, len(truth_lower) - tp


def micro_f1(counts: list[tuple[int, int, int]]) -> float:
    """`compute_f1_score` (and hf_ner.py's ending): ZeroDivisionError where nothing was predicted."""
    tp = sum(c[0] for c in counts)
    fp = sum(c[1] for c in counts)
    fn = sum(c[2] for c in counts)
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def rougel(generation: str, truth: str) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(generation, truth)["rougeL"].fmeasure


def bleu(generation: str, truth: str, jp: bool = False) -> float:
    generation = generation.lstrip("\n").rstrip("\n").split("\n")[0]
    result = sacrebleu.corpus_bleu([generation], [[truth]], smooth_method="exp", smooth_value=None, force=False,
                                   lowercase=True, use_effective_order=False,
                                   tokenize="ja-mecab" if jp else "13a")
    return result.score / 100


def sent_transformer(generation: str, truth, model, clip: bool = True) -> float:
    g = model.encode([generation])[0]
    refs = [truth] if isinstance(truth, str) else truth
    scores = []
    for ref in refs:
        t = model.encode([ref])[0]
        scores.append((g * t).sum() / (np.linalg.norm(g, ord=2) * np.linalg.norm(t, ord=2)))
    score = scores[0] if isinstance(truth, str) else np.mean(scores)
    if clip:
        return float(score) if score > 0 else 0
    return float(score)


def score_rows(rows: list[dict], outputs: list[str], models: dict | None = None, task_wise: bool = False,
               letters: bool = False) -> dict:
    """rows: dicts with skill, task, metric, truth (accuracy truth already the label string).

    Returns {"tasks": {(skill, task): score}, "skills": {...}, "overall": float}. `models` maps
    'sent-transformer' / 'multilingual-sent-transformer' to loaded SentenceTransformers; rows whose metric
    has no model are skipped.
    """
    per_task: dict[tuple[str, str], dict] = {}
    for row, generation in zip(rows, outputs):
        metric = row["metric"]
        if metric.endswith("sent-transformer") and (models is None or metric not in models):
            continue
        entry = per_task.setdefault((row["skill"], row["task"]), {"metric": metric, "scores": []})
        truth = row["truth"]
        if metric == "accuracy":
            value = task_accuracy(generation, truth, letters) if task_wise else accuracy(generation, truth)
        elif metric == "hit rate@3":
            value = hit_rate(generation, truth, task_wise)
        elif metric == "ndcg":
            value = ndcg_eval(generation, truth, task_wise)
        elif metric == "micro f1":
            value = tp_fp_fn(generation, truth)
        elif metric == "rougel":
            value = rougel(generation, truth)
        elif metric in ("bleu", "jp-bleu"):
            value = bleu(generation, truth, jp=metric == "jp-bleu")
        else:
            value = sent_transformer(generation, truth, models[metric], clip=not task_wise)
        entry["scores"].append(value)
    tasks = {key: (micro_f1(e["scores"]) if e["metric"] == "micro f1" else float(np.mean(e["scores"])))
             for key, e in per_task.items()}
    skills: dict[str, list[float]] = {}
    for (skill, _), value in tasks.items():
        skills.setdefault(skill, []).append(value)
    skill_scores = {s: float(np.mean(v)) for s, v in skills.items()}
    return {"tasks": tasks, "skills": skill_scores, "overall": float(np.mean(list(skill_scores.values())))}
