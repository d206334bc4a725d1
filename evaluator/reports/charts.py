"""The leaderboard as a picture that fits one screen: a models × skills heatmap, best overall on top."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from evaluator.reports.leaderboard import skill_columns, skill_key, skill_labels

MAX_HEIGHT_IN = 10.0  # at 100 dpi: 1,000 pixels, one screen for 27 models and more


def heatmap(board: pl.DataFrame, path: Path) -> Path:
    """One row per run (the best of each ranking first), one column per skill plus overall; each cell
    carries its score, and incomplete runs are marked in their label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    skills = skill_columns(board)
    columns = ["overall", *(skill_key(s) for s in skills)]
    rows = board.sort("overall", descending=True, nulls_last=True)
    several_groups = rows.select("group").n_unique() > 1
    labels = []
    for r in rows.iter_rows(named=True):
        mark = "" if r["status"] == "complete" else (" (failed)" if r["status"] == "failed" else " *")
        labels.append(r["model"] + mark + (f"  [{r['group']}]" if several_groups else ""))
    values = np.array([[np.nan if r[c] is None else r[c] for c in columns] for r in rows.iter_rows(named=True)],
                      dtype=float).reshape(len(labels), len(columns))
    height = min(MAX_HEIGHT_IN, 1.6 + 0.32 * len(labels))
    font = max(5.0, min(9.0, height * 72 / max(1, len(labels)) * 0.45))
    fig, ax = plt.subplots(figsize=(8.0, height))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), ["overall", *skill_labels(skills).values()], fontsize=9)
    ax.set_yticks(range(len(labels)), labels, fontsize=font)
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            value = values[i, j]
            text = "-" if np.isnan(value) else f"{value:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=font,
                    color="black" if not np.isnan(value) and value > 0.6 else "white")
    ax.set_title("Shopping MMLU scores (* incomplete)", fontsize=10, pad=24)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
