"""Two models side by side, per task, with how sure the difference is.

Only runs that can be compared are: the same data (by content), protocol and prompt options; each such
pair is its own table. Prompt options may differ where they are asked for: one model's zero-shot and k-shot
runs (`--shots 3 0`), or any two variants (`--variant-a`, `--variant-b`). Both runs are scored again from the
cache, per question, and only the questions both answered count (n). A task's interval is a paired bootstrap
over its questions (95%, percentile); accuracy tasks also get McNemar's exact test. The skill and overall
lines resample every task's questions together.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table, box

from evaluator.cache.responses import ResponseCache
from evaluator.errors import InputError
from evaluator.reports.leaderboard import METRIC_LABELS, short_skill
from evaluator.scoring.embeddings import default_cache_dir

GROUP = ("data_sha256", "protocol", "variant")


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (A right only: b; B right only: c)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _task_values(a: dict, b: dict, idx: np.ndarray | None, ner: bool) -> tuple[np.ndarray, np.ndarray]:
    """Task score of A and B for each resample (rows of idx), or once (idx None)."""
    def pooled(counts: np.ndarray) -> np.ndarray:
        tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision, recall = tp / (tp + fp), tp / (tp + fn)
            f1 = 2 * precision * recall / (precision + recall)
        return np.nan_to_num(f1, nan=0.0)

    if ner:
        ca, cb = a["counts"], b["counts"]
        if idx is None:
            return pooled(ca.sum(axis=0)), pooled(cb.sum(axis=0))
        return pooled(ca[idx].sum(axis=1)), pooled(cb[idx].sum(axis=1))
    if idx is None:
        return a["scores"].mean(), b["scores"].mean()
    return a["scores"][idx].mean(axis=1), b["scores"][idx].mean(axis=1)


BOOT_CELLS = 2_000_000  # resampled indices held at once: memory stays bounded (~50 MB) however large the task


def _bootstrap(a: dict, b: dict, n: int, samples: int, ner: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    """The task's score of A and B under `samples` resamples, drawn a block at a time."""
    step = max(1, BOOT_CELLS // max(n, 1))
    parts_a, parts_b = [], []
    for start in range(0, samples, step):
        idx = rng.integers(0, n, size=(min(step, samples - start), n))
        block_a, block_b = _task_values(a, b, idx, ner)
        parts_a.append(block_a)
        parts_b.append(block_b)
    return np.concatenate(parts_a), np.concatenate(parts_b)


def paired(result_a, result_b, samples: int, seed: int = 0) -> pl.DataFrame:
    """Rows: level (task / skill / overall), skill, task, metric, n, a, b, diff, low, high, p (McNemar)."""
    rows_a = result_a.rows.filter(pl.col("unscored").is_null() & pl.col("answered"))
    rows_b = result_b.rows.filter(pl.col("unscored").is_null() & pl.col("answered"))
    both = rows_a.join(rows_b, on="qid", how="inner", suffix="_b").sort("row")
    rng = np.random.default_rng(seed)
    out, per_skill = [], {}
    for (skill, task), part in both.group_by("skill", "task", maintain_order=True):
        ner = part["metric"][0] == "micro f1"
        a = {"scores": part["score"].fill_null(0).to_numpy().astype(float),
             "counts": part.select("tp", "fp", "fn").fill_null(0).to_numpy().astype(float)}
        b = {"scores": part["score_b"].fill_null(0).to_numpy().astype(float),
             "counts": part.select("tp_b", "fp_b", "fn_b").fill_null(0).to_numpy().astype(float)}
        n = part.height
        boot_a, boot_b = _bootstrap(a, b, n, samples, ner, rng)
        value_a, value_b = _task_values(a, b, None, ner)
        diff = boot_a - boot_b
        p = None
        if part["metric"][0] == "accuracy":
            right_a, right_b = a["scores"] == 1.0, b["scores"] == 1.0
            p = mcnemar_p(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
        out.append({"level": "task", "skill": skill, "task": task, "metric": part["metric"][0], "n": n,
                    "a": float(value_a), "b": float(value_b), "diff": float(value_a - value_b),
                    "low": float(np.percentile(diff, 2.5)), "high": float(np.percentile(diff, 97.5)), "p": p})
        per_skill.setdefault(skill, []).append((boot_a, boot_b, float(value_a), float(value_b), n))
    skill_boot = {}
    for skill, tasks in per_skill.items():
        boot_a = np.mean([t[0] for t in tasks], axis=0)
        boot_b = np.mean([t[1] for t in tasks], axis=0)
        value_a = float(np.mean([t[2] for t in tasks]))
        value_b = float(np.mean([t[3] for t in tasks]))
        skill_boot[skill] = (boot_a, boot_b, value_a, value_b)
        diff = boot_a - boot_b
        out.append({"level": "skill", "skill": skill, "task": f"{len(tasks)} tasks", "metric": "mean",
                    "n": sum(t[4] for t in tasks), "a": value_a, "b": value_b, "diff": value_a - value_b,
                    "low": float(np.percentile(diff, 2.5)), "high": float(np.percentile(diff, 97.5)), "p": None})
    if skill_boot:
        boot_a = np.mean([v[0] for v in skill_boot.values()], axis=0)
        boot_b = np.mean([v[1] for v in skill_boot.values()], axis=0)
        value_a = float(np.mean([v[2] for v in skill_boot.values()]))
        value_b = float(np.mean([v[3] for v in skill_boot.values()]))
        diff = boot_a - boot_b
        out.append({"level": "overall", "skill": "", "task": f"{len(skill_boot)} skills", "metric": "mean",
                    "n": both.height, "a": value_a, "b": value_b, "diff": value_a - value_b,
                    "low": float(np.percentile(diff, 2.5)), "high": float(np.percentile(diff, 97.5)), "p": None})
    schema = {"level": pl.String, "skill": pl.String, "task": pl.String, "metric": pl.String, "n": pl.Int64,
              "a": pl.Float64, "b": pl.Float64, "diff": pl.Float64, "low": pl.Float64, "high": pl.Float64,
              "p": pl.Float64}
    return pl.DataFrame(out, schema=schema)


def shots_of(variant: str) -> tuple[int, str]:
    """A variant's number of examples (0 for zero-shot) and its other options, the k-shot parts taken out."""
    from evaluator.runs.settings import SHOT_PARTS

    parts = variant.split("+") if variant else []
    k = next((int(m.group(1)) for m in map(SHOT_PARTS.match, parts) if m and m.group(1)), 0)
    return k, "+".join(p for p in parts if not SHOT_PARTS.match(p))


def _pick(runs: pl.DataFrame, variant: str | None, shots: int | None) -> pl.DataFrame:
    """The runs of the asked variant, or of the asked number of examples (other options kept for pairing)."""
    if variant is not None:
        runs = runs.filter(pl.col("variant") == variant)
    split = [shots_of(v) for v in runs["variant"].to_list()]
    runs = runs.with_columns(pl.Series("k", [k for k, _ in split], dtype=pl.Int64),
                             pl.Series("rest", [r for _, r in split], dtype=pl.String))
    return runs.filter(pl.col("k") == shots) if shots is not None else runs


def compare(cache: Path | None, a: str, b: str | None = None, protocol: str | None = None, data: Path | None = None,
            samples: int = 2000, variant_a: str | None = None, variant_b: str | None = None,
            shots: tuple[int, int] | None = None) -> list[tuple[dict, pl.DataFrame]]:
    """For each comparable pair of saved runs of `a` and `b` (default: `a` again): its description and the
    paired table. Runs pair on the same data, protocol and variant; with `variant_a`/`variant_b` on the same data
    and protocol; with `shots` (A's and B's numbers of examples) on the same data, protocol and other options."""
    from evaluator.data import loaders
    from evaluator.runs.runner import rescore_saved

    b = a if b is None else b
    if shots is not None and (variant_a is not None or variant_b is not None):
        raise InputError("--shots pairs runs by their numbers of examples: leave out --variant-a/--variant-b",
                         field="--shots")
    chosen = shots is not None or variant_a is not None or variant_b is not None
    if a == b and (not chosen or (shots is not None and shots[0] == shots[1])
                   or (shots is None and variant_a == variant_b)):
        raise InputError(f"compare needs two different models, or two variants of '{a}' (--shots KA KB, or "
                         "--variant-a and --variant-b)")
    folder = cache or default_cache_dir()
    store = ResponseCache(folder / "responses", read_only=True)
    try:
        runs, forgotten = store.runs(), {name for name, _ in store.forgotten()}
    finally:
        store.close()
    for name in (a, b):
        if runs.filter(pl.col("model") == name).is_empty():
            if name in forgotten:
                raise InputError(f"'{name}' is forgotten: out of every view (shopping-mmlu forget --undo brings "
                                 "it back)")
            raise InputError(f"no scores for model '{name}' in the cache (run or rescore it first)")
    if protocol:
        runs = runs.filter(pl.col("protocol") == protocol)
    if data is not None:
        sha = loaders.load(data, protocol or "skill").sha256
        runs = runs.filter(pl.col("data_sha256") == sha)
    left = _pick(runs.filter(pl.col("model") == a), variant_a, shots[0] if shots else None)
    right = _pick(runs.filter(pl.col("model") == b), variant_b, shots[1] if shots else None)
    on = (["data_sha256", "protocol", "rest"] if shots is not None else
          ["data_sha256", "protocol"] if chosen else list(GROUP))
    pairs = left.join(right, on=on, suffix="_b")
    if pairs.is_empty():
        asked = (f" at {shots[0]} and {shots[1]} shots" if shots else
                 f" with variants {variant_a!r} and {variant_b!r}" if chosen else " on the same prompt options")
        raise InputError(f"'{a}' and '{b}' share no saved run on the same data and protocol{asked}"
                         + (" (after --protocol/--data)" if protocol or data else ""))
    out = []
    for row in pairs.iter_rows(named=True):
        record_a = {k: row[k] for k in runs.columns}
        record_b = {k: row.get(f"{k}_b", row.get(k)) for k in runs.columns}
        result_a, result_b = rescore_saved(folder, record_a), rescore_saved(folder, record_b)
        for result, record in ((result_a, record_a), (result_b, record_b)):
            if isinstance(result, str):
                raise InputError(f"cannot compare the run of '{record['model']}' on {record['data']}: {result}")
        description = {"data": row["data"], "protocol": row["protocol"], "variant": row["variant"],
                       "variant_b": row.get("variant_b", row["variant"]),
                       "rendering_a": row["rendering"], "rendering_b": row["rendering_b"]}
        table = paired(result_a, result_b, samples)
        if table.is_empty():
            raise InputError(f"'{a}' and '{b}' have no question that both answered on {row['data']}")
        out.append((description, table))
    return out


def print_compare(tables: list[tuple[dict, pl.DataFrame]], a: str, b: str, console: Console) -> None:
    for info, table in tables:
        variants = info["variant"] != info["variant_b"]
        label_a = f"{a} [{info['variant'] or 'official prompt'}]" if variants else a
        label_b = f"{b} [{info['variant_b'] or 'official prompt'}]" if variants else b
        title = (f"{escape(label_a)} − {escape(label_b)} on {escape(Path(info['data']).name)}, "
                 f"{info['protocol']}-wise"
                 + (f" · {escape(info['variant'])}" if info["variant"] and not variants else "")
                 + f" ({info['rendering_a']} vs {info['rendering_b']}); n = questions both answered")
        view = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=0, title_justify="left")
        view.add_column("task", overflow="fold", ratio=1, min_width=10)
        view.add_column("metric", no_wrap=True)
        for column in ("n", "A", "B", "A−B", "95% CI", "p"):
            view.add_column(column, justify="right", no_wrap=True)
        tasks = table.filter(pl.col("level") == "task").sort(pl.col("diff").abs(), descending=True)
        for row in tasks.iter_rows(named=True):
            view.add_row(escape(row["task"]), METRIC_LABELS.get(row["metric"], escape(row["metric"])), *_cells(row))
        view.add_section()
        for row in table.filter(pl.col("level") != "task").iter_rows(named=True):
            label = "overall" if row["level"] == "overall" else short_skill(row["skill"])
            view.add_row(f"[bold]{escape(label)}[/] ({row['task']})", row["metric"], *_cells(row))
        console.print(view)
        console.print("CI: paired bootstrap over the questions; p: McNemar's exact test (accuracy tasks).",
                      highlight=False)


def _cells(row: dict) -> list[str]:
    return [f"{row['n']:,}", f"{row['a']:.3f}", f"{row['b']:.3f}", f"{row['diff']:+.3f}",
            f"[{row['low']:+.2f},{row['high']:+.2f}]", p_text(row["p"])]


def p_text(p: float | None) -> str:
    """A p-value as people read one: p=1.00, p=0.042 (three decimals under 0.1), p<0.001; '-' where no test
    applies."""
    if p is None:
        return "-"
    return "p<0.001" if p < 0.001 else f"p={p:.2f}" if p >= 0.1 else f"p={p:.3f}"
