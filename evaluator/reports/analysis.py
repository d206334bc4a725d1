"""The paper's analyses over one ranking (same data, protocol and prompt options), from the scores saved in the
cache: a models × tasks table, skill and task correlations across models, score against size within a family,
base → tuned deltas with paired bootstrap intervals, and the correlation with an external benchmark.

Only complete runs enter a statistic; every output names the runs left out and why. Tags (`params_b`,
`family`, `base`) come from the profile each model was run with, else from today's profiles.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table, box

from evaluator.cache.responses import ResponseCache
from evaluator.errors import InputError
from evaluator.reports.leaderboard import (GROUP, distinct, leaderboard, md_text, saved_stderr, short_skill,
                                           skill_columns, skill_key, skill_labels)
from evaluator.scoring.aggregate import finite

FORMAT = "shopping-mmlu analysis"
FILES = {"analysis.json", "analysis.md", "wide.csv", "wide.parquet", "correlation_skills.csv",
         "correlation_tasks.csv", "correlation_skills.png", "correlation_tasks.png", "scaling.csv", "scaling.png",
         "base_vs_tuned.csv", "external.csv"}
MIN_N = 3  # models needed for a correlation
EXTERNAL_MAX_BYTES = 10_000_000
CORR_SCHEMA = {"a": pl.String, "b": pl.String, "n": pl.Int64, "spearman": pl.Float64, "pearson": pl.Float64}


@dataclass
class Analysis:
    ranking: dict
    wide: pl.DataFrame  # one row per run: label, tags, overall, skill:*, task:*
    excluded: list[dict]  # runs left out of every statistic: label, status, why
    skills: list[str]
    tasks: list[str]
    skill_corr: pl.DataFrame
    task_corr: pl.DataFrame
    scaling: pl.DataFrame  # family, series, label, params_b, overall
    scaling_fit: pl.DataFrame  # family, series, n, per_decade, r
    pairs: pl.DataFrame  # tuned, base, level, skill, n, tuned_score, base_score, diff, low, high
    pair_notes: list[str] = field(default_factory=list)
    external: pl.DataFrame | None = None  # measure, n, spearman, pearson
    external_notes: list[str] = field(default_factory=list)


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as Spearman's rho needs)."""
    return pl.Series(values).rank("average").to_numpy().astype(float)


def correlate(x: np.ndarray, y: np.ndarray) -> tuple[int, float | None, float | None]:
    """(n, Spearman, Pearson) over the pairs where both are known; None below MIN_N or without spread."""
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(keep.sum())
    if n < MIN_N:
        return n, None, None

    def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
        a, b = a - a.mean(), b - b.mean()
        scale = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        return float((a * b).sum()) / scale if scale > 0 else None

    return n, pearson(rank_average(x), rank_average(y)), pearson(x, y)


def matrix(wide: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Every pair of columns (both orders, the diagonal too), as a long table a spreadsheet can pivot."""
    data = {c: wide[c].cast(pl.Float64).fill_null(float("nan")).to_numpy() for c in columns}
    rows = []
    for a in columns:
        for b in columns:
            n, rho, r = correlate(data[a], data[b])
            rows.append({"a": a, "b": b, "n": n, "spearman": rho, "pearson": r})
    return pl.DataFrame(rows, schema=CORR_SCHEMA)


def _tags(store: ResponseCache, model: str) -> dict:
    from servers.profiles import get_profile

    try:
        profile = get_profile(model, adhoc=True, recorded=store.model(model))
    except InputError:
        return {"params_b": None, "family": None, "base": None}
    tags = {"params_b": profile.params_b, "family": profile.family, "base": profile.base}
    if tags["family"] is None and tags["base"] is None:  # run before profiles had tags: today's profile's
        try:
            today = get_profile(model)
            tags.update(family=today.family, base=today.base,
                        params_b=tags["params_b"] if tags["params_b"] is not None else today.params_b)
        except InputError:
            pass
    return tags


def choose_ranking(board: pl.DataFrame, data_sha256: str | None, protocol: str | None,
                   variant: str | None) -> pl.DataFrame:
    """The runs of the one ranking asked for; with several and no choice, say which exist."""
    if data_sha256 is not None:
        board = board.filter(pl.col("data_sha256") == data_sha256)
    if protocol is not None:
        board = board.filter(pl.col("protocol") == protocol)
    if variant is not None:
        board = board.filter(pl.col("variant") == variant)
    if board.is_empty():
        raise InputError("no saved run matches: run or rescore first (`report` lists what the cache holds)"
                         if data_sha256 is None and protocol is None and variant is None else
                         "no saved run on that data, protocol and prompt options")
    groups = board.select(*GROUP, "group").unique(maintain_order=True)
    if groups.height > 1:
        listed = "; ".join(f"{g['group']} ({board.filter(pl.col('group') == g['group']).height} runs)"
                           for g in groups.iter_rows(named=True))
        raise InputError(f"the cache holds {groups.height} rankings: choose one with --data, --protocol or "
                         f"--variant ({listed[:600]})")
    return board


def build(cache_folder: Path, data_sha256: str | None = None, protocol: str | None = None,
          variant: str | None = None, external: Path | None = None, samples: int = 2000,
          seed: int = 0) -> Analysis:
    store = ResponseCache(cache_folder / "responses", read_only=True)
    try:
        runs, tasks = store.runs(), store.task_scores()
        board = choose_ranking(leaderboard(runs, tasks), data_sha256, protocol, variant)
        tags = {model: _tags(store, model) for model in board["model"].unique().to_list()}
        forgotten = store.runs(forgotten=True).join(runs.select("key"), on="key", how="anti")
    finally:
        store.close()
    result = analyse(board, tasks, tags, cache_folder, external, samples, seed)
    ranking = ["data_sha256", "protocol", "variant"]
    result.excluded += [{"label": name, "status": "forgotten", "why": "forgotten: shopping-mmlu forget --undo puts "
                         "it back"} for name in forgotten.join(board.select(ranking).unique(), on=ranking,
                                                               how="semi")["model"].unique().sort().to_list()]
    return result


def tags_of(cache_folder: Path, models: list[str]) -> dict[str, dict]:
    """params_b, family and base of each model, as `_tags` reads them."""
    store = ResponseCache(cache_folder / "responses", read_only=True)
    try:
        return {model: _tags(store, model) for model in models}
    finally:
        store.close()


def analyse(board: pl.DataFrame, tasks: pl.DataFrame, tags: dict[str, dict], cache_folder: Path,
            external: Path | None = None, samples: int = 2000, seed: int = 0,
            rescored: dict | None = None) -> Analysis:
    """The analyses of one ranking's rows of the leaderboard; `rescored` (run -> RunResult) saves scoring a
    run again where the caller has already (the HTML report)."""
    skills = [s for s in skill_columns(board) if board[skill_key(s)].is_not_null().any()]
    names = board.group_by("model").agg(pl.col("rendering").n_unique().alias("renderings"))
    several = set(names.filter(pl.col("renderings") > 1)["model"].to_list())
    board = board.with_columns(label=pl.when(pl.col("model").is_in(list(several)))
                               .then(pl.format("{} ({})", "model", "rendering")).otherwise(pl.col("model")))
    board = board.with_columns(label=pl.Series(distinct(board["label"].to_list()), dtype=pl.String))
    task_rows = tasks.filter(pl.col("run").is_in(board["run"].implode()))
    labels = skill_labels(list(dict.fromkeys([*skills, *task_rows["skill"].to_list()])))
    task_keys = _task_keys(task_rows, labels)
    per_task = (task_rows.join(task_keys, on=["skill", "task"]).pivot(on="key", index="run", values="score")
                if task_rows.height else pl.DataFrame({"run": []}, schema={"run": pl.String}))
    per_task = per_task.select("run", *(pl.col(k).alias(f"task:{label}")
                                        for k, label in task_keys.select("key", "label").iter_rows()
                                        if k in per_task.columns))
    task_names = task_keys["label"].to_list()
    board = board.with_columns(overall_stderr=pl.col("details").map_elements(
        lambda d: saved_stderr(d).get("overall"), return_dtype=pl.Float64))
    wide = (board.select("run", "label", "model", "rendering", "status", "questions", "answered", "unscored",
                         "overall", "overall_stderr",
                         *(pl.col(skill_key(s)).alias(f"skill:{labels[s]}") for s in skills))
            .with_columns(complete=pl.col("status") == "complete",
                          params_b=pl.col("model").replace_strict({m: t["params_b"] for m, t in tags.items()},
                                                                  return_dtype=pl.Float64),
                          family=pl.col("model").replace_strict({m: t["family"] for m, t in tags.items()},
                                                                return_dtype=pl.String),
                          base=pl.col("model").replace_strict({m: t["base"] for m, t in tags.items()},
                                                              return_dtype=pl.String))
            .join(per_task, on="run", how="left")
            .sort("overall", descending=True, nulls_last=True))
    front = ["label", "model", "rendering", "status", "complete", "questions", "answered", "unscored", "params_b",
             "family", "base", "overall", "overall_stderr"]
    wide = wide.select(*front, *(c for c in wide.columns if c not in front))
    excluded = [{"label": r["label"], "status": r["status"],
                 "why": f"{r['status']}: {r['answered']:,}/{r['questions']:,} answered"
                        + (f", {r['unscored']:,} not scored" if r["unscored"] else "")}
                for r in wide.filter(~pl.col("complete")).iter_rows(named=True)]
    complete = wide.filter(pl.col("complete"))
    skill_cols = ["overall", *(f"skill:{labels[s]}" for s in skills)]
    task_cols = [f"task:{t}" for t in task_names if f"task:{t}" in complete.columns]
    base_of = {m: b for m, b in wide.select("model", "base").iter_rows() if b is not None}
    circular = {m for m in base_of if _circular(m, base_of)}
    scaling, fits = _scaling(complete.with_columns(base=pl.when(pl.col("model").is_in(list(circular)))
                                                   .then(None).otherwise(pl.col("base"))))
    pairs, pair_notes = _pairs(cache_folder, board, complete, samples, seed, dict(rescored or {}), labels, base_of)
    result = Analysis(ranking=_ranking(board), wide=wide.drop("run"), excluded=excluded,
                      skills=[labels[s] for s in skills], tasks=task_names,
                      skill_corr=matrix(complete, skill_cols), task_corr=matrix(complete, task_cols),
                      scaling=scaling, scaling_fit=fits, pairs=pairs, pair_notes=pair_notes)
    if external is not None:
        result.external, result.external_notes = _external(external, complete, skill_cols)
    return result


def _task_keys(task_rows: pl.DataFrame, labels: dict[str, str]) -> pl.DataFrame:
    """One row per (skill, task), grouped by skill in the benchmark's order, data order within: `key`, the
    pivot's column (names from the data never become column names), and `label`, unique: the task's name,
    with its skill's label in front where two skills have a task of that name."""
    canonical = {s: i for i, s in enumerate(("concept", "reasoning", "behavior", "multilingual"))}
    pairs = task_rows.select("skill", "task").unique(maintain_order=True).rows()
    pairs.sort(key=lambda p: canonical.get(short_skill(p[0]), len(canonical)))
    shared = {t for t in {t for _, t in pairs} if sum(1 for _, u in pairs if u == t) > 1}
    wanted = [f"{labels[s]}/{t}" if t in shared else t for s, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][1] in shared)  # a task's own name is kept first
    names = dict(zip(order, distinct([wanted[i] for i in order])))
    names = [names[i] for i in range(len(pairs))]
    return pl.DataFrame({"skill": [s for s, _ in pairs], "task": [t for _, t in pairs],
                         "key": [f"t{i}" for i in range(len(pairs))], "label": names},
                        schema={"skill": pl.String, "task": pl.String, "key": pl.String, "label": pl.String})


def clip(name: str, limit: int = 60) -> str:
    """A name from a file as we show it: one line, at most `limit` characters."""
    name = " ".join(name.split())
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _ranking(board: pl.DataFrame) -> dict:
    first = board.row(0, named=True)
    return {"group": first["group"], "data": first["data"], "data_sha256": first["data_sha256"],
            "protocol": first["protocol"], "variant": first["variant"], "runs": board.height,
            "complete": int((board["status"] == "complete").sum())}


T975 = (12.70620, 4.30265, 3.18245, 2.77645, 2.57058, 2.44691, 2.36462, 2.30600, 2.26216, 2.22814, 2.20099,
        2.17881, 2.16037, 2.14479, 2.13145, 2.11991, 2.10982, 2.10092, 2.09302, 2.08596, 2.07961, 2.07387,
        2.06866, 2.06390, 2.05954, 2.05553, 2.05183, 2.04841, 2.04523, 2.04227)


def t975(df: int) -> float:
    """Student's t 97.5% quantile (a two-sided 95% interval): the table to 30 degrees of freedom, then the
    Cornish-Fisher expansion around the normal's (within 2e-6 of the exact value there)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963984540054
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def slope_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None, float | None]:
    """The least-squares slope of y on x and its 95% interval (t with n - 2 degrees of freedom); no interval
    from two points (a line through two points has no residual to judge it by)."""
    dx = x - x.mean()
    sxx = float((dx * dx).sum())
    slope = float((dx * (y - y.mean())).sum()) / sxx
    if len(x) < 3:
        return slope, None, None
    residual = y - y.mean() - slope * dx
    half = t975(len(x) - 2) * math.sqrt(float((residual * residual).sum()) / (len(x) - 2) / sxx)
    return slope, slope - half, slope + half


def fit_text(fit: dict) -> str:
    """One scaling fit in words, the same in the terminal, analysis.md and the HTML report: a slope per 10×
    parameters only with its interval, and how many distinct sizes it rests on."""
    what = f"{fit['family']} ({fit['series']}, {fit['sizes']} sizes" + (
        f", {fit['n']} models)" if fit["n"] != fit["sizes"] else ")")
    if fit["per_decade"] is None or fit["low"] is None:
        return f"{what}: no slope claimed from two points (no interval)"
    return (f"{what}: {_f(fit['per_decade'], 3, True)} per 10× parameters (95% CI {_f(fit['low'], 3, True)} "
            f"to {_f(fit['high'], 3, True)})")


def _scaling(complete: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Overall score against log10(parameters) per family, base models and tuned ones as separate series;
    a least-squares line per series of two sizes or more: its slope (points per decade of parameters) with a
    95% interval from three models up; two models give neither."""
    points = (complete.filter(pl.col("family").is_not_null() & pl.col("params_b").is_not_null()
                              & pl.col("overall").is_not_null())
              .select("family", series=pl.when(pl.col("base").is_null()).then(pl.lit("base"))
                      .otherwise(pl.lit("tuned")), label="label", params_b="params_b", overall="overall")
              .sort("family", "series", "params_b"))
    fits = []
    for (family, series), part in points.group_by("family", "series", maintain_order=True):
        x = np.log10(part["params_b"].to_numpy().astype(float))
        y = part["overall"].to_numpy().astype(float)
        sizes = len(np.unique(x))
        if sizes < 2:
            continue
        slope, low, high = slope_interval(x, y)
        fits.append({"family": family, "series": series, "n": part.height, "sizes": sizes,
                     "per_decade": slope if low is not None else None, "low": low, "high": high,
                     "r": correlate(x, y)[2] if part.height >= MIN_N else None})
    schema = {"family": pl.String, "series": pl.String, "n": pl.Int64, "sizes": pl.Int64, "per_decade": pl.Float64,
              "low": pl.Float64, "high": pl.Float64, "r": pl.Float64}
    return points, pl.DataFrame(fits, schema=schema)


def _circular(model: str, base_of: dict[str, str]) -> bool:
    """Whether following base tags from `model` leads back to it (its own base, or a circle through it)."""
    seen, current = [], model
    while current in base_of and current not in seen:
        seen.append(current)
        current = base_of[current]
    return bool(seen) and current == model


def _pairs(cache_folder: Path, board: pl.DataFrame, complete: pl.DataFrame, samples: int,
           seed: int, rescored: dict, labels: dict[str, str],
           base_of: dict[str, str]) -> tuple[pl.DataFrame, list[str]]:
    """Each complete tuned model against its complete base (its `base` tag), same rendering where the base
    ran in several: per-skill and overall deltas (tuned − base) with paired bootstrap intervals. A model
    named as its own base, or base tags that lead in a circle, are a note each, never a delta."""
    from evaluator.reports.compare import paired
    from evaluator.runs.runner import rescore_saved

    schema = {"tuned": pl.String, "base": pl.String, "level": pl.String, "skill": pl.String, "n": pl.Int64,
              "tuned_score": pl.Float64, "base_score": pl.Float64, "diff": pl.Float64, "low": pl.Float64,
              "high": pl.Float64}
    records = {r["run"]: r for r in board.iter_rows(named=True)}
    done = {r["label"]: r for r in complete.iter_rows(named=True)}
    rows, notes = [], []

    def scored(run: str):
        if run not in rescored:
            rescored[run] = rescore_saved(cache_folder, {k: records[run][k] for k in (
                "model", "data", "data_sha256", "protocol", "rendering", "variant", "questions", "details")})
        return rescored[run]

    circles: set[frozenset] = set()
    for tuned in complete.filter(pl.col("base").is_not_null()).iter_rows(named=True):
        if tuned["base"] == tuned["model"]:
            notes.append(f"{tuned['label']}: its own base, no base → tuned delta")
            continue
        chain = [tuned["model"]]
        while base_of.get(chain[-1]) is not None and base_of[chain[-1]] not in chain:
            chain.append(base_of[chain[-1]])
        if base_of.get(chain[-1]) == tuned["model"]:  # the tags lead back to this model
            if frozenset(chain) not in circles:
                circles.add(frozenset(chain))
                notes.append(f"{' → '.join([*chain, chain[0]])}: a circle of base tags, no base → tuned delta")
            continue
        candidates = [r for r in board.iter_rows(named=True) if r["model"] == tuned["base"]]
        if not candidates:
            notes.append(f"{tuned['label']}: its base '{tuned['base']}' has no run in this ranking")
            continue
        base = next((r for r in candidates if r["rendering"] == tuned["rendering"]), candidates[0])
        if base["label"] not in done:
            notes.append(f"{tuned['label']}: its base {base['label']} is {base['status']}, left out")
            continue
        left, right = scored(tuned["run"]), scored(base["run"])
        if isinstance(left, str) or isinstance(right, str):
            notes.append(f"{tuned['label']} vs {base['label']}: cannot rescore "
                         f"({left if isinstance(left, str) else right})")
            continue
        table = paired(left, right, samples, seed)
        for row in table.filter(pl.col("level") != "task").iter_rows(named=True):
            rows.append({"tuned": tuned["label"], "base": base["label"], "level": row["level"],
                         "skill": labels.get(row["skill"], row["skill"]) if row["skill"] else "overall",
                         "n": row["n"],
                         "tuned_score": row["a"], "base_score": row["b"], "diff": row["diff"], "low": row["low"],
                         "high": row["high"]})
    return pl.DataFrame(rows, schema=schema), notes


def _external(path: Path, complete: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, list[str]]:
    """Our overall and skill scores against an external benchmark's scores (a CSV with `model` and `score`
    columns, matched to our model names or labels). A model listed twice with different scores is refused,
    naming it; the names we show from the file are clipped."""
    from evaluator.paths import read_regular

    try:
        raw = read_regular(path, EXTERNAL_MAX_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror or exc}); an external score file is a regular file of at "
                         f"most {EXTERNAL_MAX_BYTES:,} bytes", path=path, field="--external") from None
    try:
        frame = pl.read_csv(io.BytesIO(raw), infer_schema=False, truncate_ragged_lines=True)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"not a CSV file ({str(exc).splitlines()[0][:200]})", path=path,
                         field="--external") from None
    lowered = {c.strip().lower(): c for c in frame.columns}
    if "model" not in lowered or "score" not in lowered:
        raise InputError(f"needs the columns `model` and `score` (it has: {', '.join(frame.columns)[:200]})",
                         path=path, field="--external")
    frame = frame.select(model=pl.col(lowered["model"]).str.strip_chars(),
                         external=pl.col(lowered["score"]).str.strip_chars().cast(pl.Float64, strict=False))
    notes = []
    bad = frame.filter(pl.col("model").is_null() | pl.col("external").is_null() | ~pl.col("external").is_finite())
    if bad.height:
        notes.append(f"{bad.height} row(s) without a finite score or a model name ignored")
    frame = frame.filter(pl.col("model").is_not_null() & pl.col("external").is_finite())
    twice = (frame.group_by("model", maintain_order=True).agg(pl.col("external").unique(maintain_order=True))
             .filter(pl.col("external").list.len() > 1))
    if twice.height:
        listed = "; ".join(f"{clip(m)} ({', '.join(f'{v:g}' for v in scores[:4])})" for m, scores in twice.head(5).rows())
        raise InputError(f"lists {twice.height} model(s) more than once with different scores: {listed}"
                         + (" ..." if twice.height > 5 else "") + ": keep one score per model", path=path,
                         field="--external")
    frame = frame.unique("model", keep="first", maintain_order=True)  # the same score twice is one
    ours = complete.select("label", "model", *columns)
    joined = ours.join(frame, left_on="label", right_on="model", how="inner", suffix="_x")
    by_model = ours.filter(~pl.col("label").is_in(joined["label"].implode())).join(frame, on="model", how="inner")
    joined = pl.concat([joined.select("label", *columns, "external"), by_model.select("label", *columns, "external")])
    unmatched = sorted(set(frame["model"].to_list()) - set(ours["label"].to_list()) - set(ours["model"].to_list()))
    if unmatched:
        notes.append(f"{len(unmatched)} external model(s) with no complete run here: "
                     f"{', '.join(clip(m) for m in unmatched[:10])}"
                     + (" ..." if len(unmatched) > 10 else ""))
    y = joined["external"].to_numpy().astype(float)
    rows = []
    for column in columns:
        n, rho, r = correlate(joined[column].cast(pl.Float64).fill_null(float("nan")).to_numpy(), y)
        rows.append({"measure": column.removeprefix("skill:"), "n": n, "spearman": rho, "pearson": r})
    schema = {"measure": pl.String, "n": pl.Int64, "spearman": pl.Float64, "pearson": pl.Float64}
    return pl.DataFrame(rows, schema=schema), notes


# ---------------------------------------------------------------- output


def write(analysis: Analysis, folder: Path) -> list[Path]:
    """Every table as CSV (the wide table also Parquet), two heatmaps and a scaling plot, analysis.md and
    analysis.json, recorded in the folder's manifest (`paths.replace_files`): only files an analysis wrote
    and nobody changed are replaced, or removed where this analysis has none of that name (an earlier
    --external's comparison); anything else in the folder is left as it is."""
    from evaluator.paths import replace_files

    def table(frame: pl.DataFrame, parquet: bool = False):
        return lambda path: (frame.write_parquet(path) if parquet else frame.write_csv(path)) or True

    def text(content: str):
        return lambda path: path.write_text(content, encoding="utf-8") and True

    makers = {"wide.csv": table(analysis.wide), "wide.parquet": table(analysis.wide, parquet=True),
              "correlation_skills.csv": table(analysis.skill_corr), "correlation_tasks.csv": table(analysis.task_corr),
              "scaling.csv": table(analysis.scaling.join(analysis.scaling_fit, on=["family", "series"], how="left")),
              "base_vs_tuned.csv": table(analysis.pairs),
              "correlation_skills.png": lambda path: heatmap(analysis.skill_corr, path, "skills"),
              "correlation_tasks.png": lambda path: heatmap(analysis.task_corr, path, "tasks"),
              "scaling.png": lambda path: scaling_plot(analysis, path),
              "analysis.md": text(markdown(analysis)),
              "analysis.json": text(json.dumps(finite(document(analysis)), indent=2, ensure_ascii=False) + "\n")}
    if analysis.external is not None:
        makers["external.csv"] = table(analysis.external)
    return replace_files(folder, FORMAT, makers, FILES)


def document(analysis: Analysis) -> dict:
    return {"format": FORMAT, "version": 1, "ranking": analysis.ranking, "excluded": analysis.excluded,
            "skills": analysis.skills, "tasks": analysis.tasks,
            "skill_correlations": analysis.skill_corr.to_dicts(), "task_correlations": analysis.task_corr.to_dicts(),
            "scaling": analysis.scaling.to_dicts(), "scaling_fits": analysis.scaling_fit.to_dicts(),
            "base_vs_tuned": analysis.pairs.to_dicts(), "base_vs_tuned_notes": analysis.pair_notes,
            "external": analysis.external.to_dicts() if analysis.external is not None else None,
            "external_notes": analysis.external_notes}


def blanks(corr: pl.DataFrame) -> list[tuple[str, str]]:
    """The columns with no correlation at all (a blank row and column in the heatmap), each with why: too
    few complete models with a score, or the same score for every one of them (no spread to rank)."""
    out = []
    for name, part in corr.group_by("a", maintain_order=True):
        if part["spearman"].is_null().all():
            n = part.filter(pl.col("b") == name[0])["n"].max() or 0
            out.append((name[0], f"only {n} complete model(s) with a score" if n < MIN_N
                        else f"the same score for all {n} complete models"))
    return out


def _caption(fig, lines: list[str], width: int) -> float:
    """Text under a figure's axes, wrapped at spaces; returns the fraction of the figure's height it takes."""
    import textwrap

    wrapped = [w for line in lines for w in textwrap.wrap(line, width) or [""]]
    if not wrapped:
        return 0.0
    height = fig.get_figheight()
    fig.text(0.01, 0.01, "\n".join(wrapped), fontsize=7.5, va="bottom", ha="left", color="#333333")
    return min(0.4, (len(wrapped) * 7.5 * 1.35 + 6) / 72 / height)


def heatmap(corr: pl.DataFrame, path: Path, what: str) -> bool:
    """Spearman's rho between every two columns across the complete models, n in the title, a caption
    naming each blank row and why it is blank; False when there is nothing to draw."""
    names = corr["a"].unique(maintain_order=True).to_list()
    if len(names) < 2 or corr["spearman"].is_null().all():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lookup = {(r["a"], r["b"]): r["spearman"] for r in corr.iter_rows(named=True)}
    values = np.array([[np.nan if lookup[(a, b)] is None else lookup[(a, b)] for b in names] for a in names])
    labels = [n.removeprefix("skill:").removeprefix("task:") for n in names]
    n = int(corr["n"].max())
    size = min(12.0, max(4.5, 0.28 * len(names) + 2.5))
    font = max(4.0, min(9.0, 260 / max(len(names), 1)))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#bdbdbd")  # no correlation: grey, not 0's white
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(len(labels)), labels, fontsize=font)
    if len(names) <= 8:
        for i in range(len(names)):
            for j in range(len(names)):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9,
                            color="white" if abs(values[i, j]) > 0.6 else "black")
    ax.set_title(f"Spearman correlation of {what} across models (n ≤ {n} complete models)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    empty = [f"{clip(c.removeprefix('skill:').removeprefix('task:'), 40)} ({why})" for c, why in blanks(corr)]
    bottom = _caption(fig, [f"Grey, no correlation: {'; '.join(empty)}."] if empty else [], int((size + 1.2) * 15))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


def scaling_plot(analysis: Analysis, path: Path) -> bool:
    """scaling.png (`scaling_figure`); False when no complete model has a family and a size."""
    fig = scaling_figure(analysis)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


def scaling_figure(analysis: Analysis):
    """Overall score against size, one line per family and series (named in the legend, outside the axes so
    that it never covers a point); only the extremes carry a name (best and worst score, smallest and
    largest model), so names never pile up: every point's name is in scaling.csv."""
    points = analysis.scaling
    if points.is_empty():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = points["family"].unique(maintain_order=True).to_list()
    series_count = points.select("family", "series").n_unique()
    columns = 1 if series_count <= 18 else 2
    fig, ax = plt.subplots(figsize=(9.0 + 1.6 * columns, 5.4))
    palette = plt.get_cmap("tab10" if len(families) <= 10 else "tab20").colors  # a family keeps one colour
    for (family, series), part in points.group_by("family", "series", maintain_order=True):
        ax.plot(part["params_b"].to_list(), part["overall"].to_list(), marker="o" if series == "base" else "s",
                linestyle="-" if series == "base" else "--", label=clip(f"{family} ({series})", 28),
                color=palette[families.index(family) % len(palette)])
    extremes = {}
    for what, row in (("best", points.sort("overall", descending=True).row(0, named=True)),
                      ("worst", points.sort("overall").row(0, named=True)),
                      ("smallest", points.sort("params_b").row(0, named=True)),
                      ("largest", points.sort("params_b", descending=True).row(0, named=True))):
        extremes.setdefault((row["label"], row["params_b"], row["overall"]), []).append(what)
    middle = float(np.log10(points["params_b"]).mean())
    for k, ((label, x, y), whats) in enumerate(extremes.items()):
        right = math.log10(x) > middle  # named towards the middle: inside the axes, clear of the legend
        ax.annotate(f"{clip(label, 32)} ({', '.join(whats)})", (x, y), textcoords="offset points",
                    xytext=(-6 if right else 6, 8 if k % 2 == 0 else -12), ha="right" if right else "left",
                    fontsize=7.5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                    arrowprops={"arrowstyle": "-", "color": "#777777", "lw": 0.6})
    ax.set_xscale("log")
    ax.set_xlabel("parameters (billions, log scale)")
    ax.set_ylabel("overall score")
    ax.set_title("Shopping MMLU overall score against model size, per family (complete runs)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncols=columns,
              title="family (series)", title_fontsize=7.5)
    ax.margins(x=0.08, y=0.12)
    bottom = _caption(fig, [f"{points.height} complete models with a family and a size; named: the extremes only "
                            "(every point's name is in scaling.csv). Solid: base models; dashed: tuned ones."],
                      int(fig.get_figwidth() * 15))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def _f(value, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(analysis: Analysis) -> str:
    r = analysis.ranking
    out = [f"# Shopping MMLU analysis: {md_text(r['group'])}", "",
           f"Data {md_text(r['data'])} (digest {r['data_sha256'][:16]}), {r['protocol']}-wise"
           + (f", {r['variant']}" if r["variant"] else "") + f". {r['complete']} of {r['runs']} runs complete; "
           "only complete runs enter the statistics below.", ""]
    if analysis.excluded:
        out += ["Left out:", ""] + [f"- {md_text(e['label'])} ({md_text(e['why'])})" for e in analysis.excluded] + [""]
    skills = analysis.skill_corr
    names = skills["a"].unique(maintain_order=True).to_list()
    if names:
        labels = [md_text(n.removeprefix("skill:")) for n in names]
        lookup = {(x["a"], x["b"]): x for x in skills.iter_rows(named=True)}
        out += ["## Skill correlations across models (Spearman ρ, n models)", "",
                "| | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for a, label in zip(names, labels):
            out.append(f"| {label} | " + " | ".join(f"{_f(lookup[(a, b)]['spearman'], 2)} ({lookup[(a, b)]['n']})"
                                                    for b in names) + " |")
        out += ["", "Pearson's r and the task × task matrix: `correlation_skills.csv`, `correlation_tasks.csv`.", ""]
    for what, corr in (("skill", analysis.skill_corr), ("task", analysis.task_corr)):
        empty = [f"{md_text(c.removeprefix(what + ':'))} ({why})" for c, why in blanks(corr)]
        if empty:
            out += [f"No correlation for {len(empty)} {what}(s), grey in the heatmap: " + "; ".join(empty) + ".", ""]
    out += ["## Scaling within a family", ""]
    if analysis.scaling_fit.is_empty():
        out += ["No family has complete runs of two sizes or more with `params_b` and `family` tags.", ""]
    else:
        out += ["| family | series | models | sizes | overall per 10× parameters | 95% CI | r |",
                "|---|---|---:|---:|---:|---|---:|"]
        out += [f"| {md_text(f['family'])} | {f['series']} | {f['n']} | {f['sizes']} | {_f(f['per_decade'], 3, True)} | "
                + (f"[{_f(f['low'], 3, True)}, {_f(f['high'], 3, True)}]" if f["low"] is not None
                   else "none from two points: no slope claimed") + f" | {_f(f['r'], 2)} |"
                for f in analysis.scaling_fit.iter_rows(named=True)] + [""]
    out += ["## Base → tuned (tuned − base, paired bootstrap 95% interval over the questions both answered)", ""]
    if analysis.pairs.is_empty():
        out += ["No complete tuned model with a complete base in this ranking (`base` tags in the profiles).", ""]
    else:
        out += ["| tuned | base | skill | n | tuned | base | Δ | 95% CI |", "|---|---|---|---:|---:|---:|---:|---|"]
        out += [f"| {md_text(p['tuned'])} | {md_text(p['base'])} | {md_text(p['skill'])} | {p['n']:,} | {_f(p['tuned_score'])} | "
                f"{_f(p['base_score'])} | {_f(p['diff'], 3, True)} | [{_f(p['low'], 3, True)}, {_f(p['high'], 3, True)}] |"
                for p in analysis.pairs.iter_rows(named=True)] + [""]
    out += [f"- {md_text(note)}" for note in analysis.pair_notes] + ([""] if analysis.pair_notes else [])
    if analysis.external is not None:
        out += ["## Against the external benchmark", "", "| ours | n | Spearman ρ | Pearson r |", "|---|---:|---:|---:|"]
        out += [f"| {md_text(e['measure'])} | {e['n']} | {_f(e['spearman'], 2)} | {_f(e['pearson'], 2)} |"
                for e in analysis.external.iter_rows(named=True)] + [""]
        out += [f"- {md_text(note)}" for note in analysis.external_notes] + ([""] if analysis.external_notes else [])
    return "\n".join(out)


def print_summary(analysis: Analysis, console: Console) -> None:
    """The headline numbers at 80 columns; the files hold the rest."""
    r = analysis.ranking
    console.print(f"[bold]Analysis of {escape(r['group'])}[/]: {r['complete']} of {r['runs']} runs complete",
                  highlight=False)
    console.print("  only complete runs enter a statistic", highlight=False)
    for e in analysis.excluded:
        console.print(f"  left out: {escape(e['label'])} ({escape(e['why'])})", highlight=False)
    names = analysis.skill_corr["a"].unique(maintain_order=True).to_list()
    if names:
        lookup = {(x["a"], x["b"]): x["spearman"] for x in analysis.skill_corr.iter_rows(named=True)}
        table = Table(title="Spearman ρ between skills across models", box=box.SIMPLE_HEAD, pad_edge=False,
                      title_justify="left")
        table.add_column("")
        for name in names:
            table.add_column(name.removeprefix("skill:")[:12], justify="right", no_wrap=True)
        for a in names:
            table.add_row(a.removeprefix("skill:")[:12], *(_f(lookup[(a, b)], 2) for b in names))
        console.print(table)
    if analysis.scaling_fit.height:
        table = Table(title="Scaling: overall per 10× parameters (least squares, 95% CI)", box=box.SIMPLE_HEAD,
                      pad_edge=False, title_justify="left")
        for header in ("family", "series", "sizes", "models", "per 10×", "95% CI"):
            table.add_column(header, justify="left" if header in ("family", "series") else "right",
                             overflow="fold", no_wrap=header not in ("family", "95% CI"))
        for f in analysis.scaling_fit.iter_rows(named=True):
            table.add_row(escape(f["family"]), f["series"], str(f["sizes"]), str(f["n"]),
                          _f(f["per_decade"], 3, True), "none from two points" if f["low"] is None else
                          f"[{_f(f['low'], 2, True)},{_f(f['high'], 2, True)}]")
        console.print(table)
    overall = analysis.pairs.filter(pl.col("level") == "overall")
    if overall.height:
        table = Table(title="Base → tuned, overall (tuned − base, 95% CI)", box=box.SIMPLE_HEAD, pad_edge=False,
                      title_justify="left")
        for header in ("tuned", "base", "Δ", "95% CI"):
            table.add_column(header, justify="left" if header in ("tuned", "base") else "right",
                             overflow="fold", no_wrap=header not in ("tuned", "base"))
        for p in overall.iter_rows(named=True):
            table.add_row(escape(p["tuned"]), escape(p["base"]), _f(p["diff"], 3, True),
                          f"[{_f(p['low'], 2, True)},{_f(p['high'], 2, True)}]")
        console.print(table)
    for note in analysis.pair_notes:
        console.print(f"  {escape(note)}", highlight=False)
    if analysis.external is not None:
        e = analysis.external.row(0, named=True)
        console.print(f"  external benchmark vs our overall: Spearman {_f(e['spearman'], 2)}, Pearson "
                      f"{_f(e['pearson'], 2)} (n = {e['n']})", highlight=False)
        for note in analysis.external_notes:
            console.print(f"  {escape(note)}", highlight=False)


def report_sections(board: pl.DataFrame, tasks: pl.DataFrame, results: dict, cache_folder: Path,
                    samples: int = 1000) -> list[dict]:
    """The HTML report's analysis section: per ranking with two complete runs or more, the skill
    correlations, scaling slopes and base → tuned deltas, from the runs the report has already scored."""
    tags = tags_of(cache_folder, board["model"].unique().to_list())
    out = []
    for _, group in board.group_by(GROUP, maintain_order=True):
        if int((group["status"] == "complete").sum()) < 2:
            continue
        found = analyse(group, tasks, tags, cache_folder, samples=samples, rescored=results)
        names = found.skill_corr["a"].unique(maintain_order=True).to_list()
        lookup = {(r["a"], r["b"]): r for r in found.skill_corr.iter_rows(named=True)}
        out.append(finite({
            "group": found.ranking["group"], "data_sha256": found.ranking["data_sha256"],
            "complete": found.ranking["complete"], "runs": found.ranking["runs"], "excluded": found.excluded,
            "skills": [n.removeprefix("skill:") for n in names],
            "rho": [[lookup[(a, b)]["spearman"] for b in names] for a in names],
            "n": int(found.skill_corr["n"].max()) if found.skill_corr.height else 0,
            "scaling": [{**f, "text": fit_text(f)} for f in found.scaling_fit.iter_rows(named=True)],
            "pairs": found.pairs.to_dicts(),
            "notes": [*(f"{c.removeprefix('skill:')}: no correlation, {why}" for c, why in blanks(found.skill_corr)),
                      *found.pair_notes]}))
    return out


def command(cache: Path | None, output: Path, data: Path | None, protocol: str | None, variant: str | None,
            external: Path | None, samples: int, console: Console, err_console: Console) -> None:
    """`analyze`: the analyses of one ranking of the cache, printed in short and written to `output`."""
    from evaluator.data import loaders
    from evaluator.paths import check_output_folder
    from evaluator.scoring.embeddings import default_cache_dir

    folder = cache or default_cache_dir()
    if not (folder / "responses" / "responses.sqlite").exists():
        raise InputError("no response cache here: nothing has been run with this --cache", path=folder)
    target = check_output_folder(output, [folder, data, external], "--output", ours=FILES,
                                 marker="analysis.json", format_name=FORMAT, whole=False)
    sha = loaders.load(data, protocol or "skill").sha256 if data is not None else None
    result = build(folder, sha, protocol, variant, external, samples)
    print_summary(result, console)
    written = write(result, target)
    err_console.print(f"analysis: {len(written)} files in {escape(str(target))}")
