"""Small facts every record carries, kept below the rooms that write records: timestamps, our git commit,
and what kind of server answered."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def server_kind(config) -> str:
    """What answered: a vLLM server the run started, a closed API, or an endpoint someone else runs."""
    profile = config.profile
    if profile.is_local:
        started = config.base_url is None or config.started_s is not None  # by the run, or by its suite
        return "vllm (started by us)" if started else "openai-compatible endpoint"
    return "api"
