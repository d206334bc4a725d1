"""A newcomer's first run against the second: `shopping-mmlu run --refresh` of the 96 KDD Cup development
questions on the loopback stub, whole commands, each in a fresh user cache.

    python benchmarks/first_run.py [--rounds 2] [--latency 4 6] [--tree DIR]

  cold       a user cache never used (no `make install` warm step): the scoring's one-time costs are paid
             by the run (the ONNX export, the model and library loads)
  installed  a user cache after `shopping-mmlu warm` (what `make install` runs), then the first run
  warm       the same command again in the cold run's cache (its vectors and pair scores stored)

`--latency MIN MAX` makes the stub answer each request after that many seconds (a server's pace: 96 requests
at 64 in flight take two waves); `--tree DIR` runs another checkout's code (an earlier commit, for a before).
Rounds alternate the modes. Prints wall seconds and the run's own fan-out and scoring seconds (results.json).
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


def command(tree: Path, home: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("SHOPPING_MMLU_CACHE", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "evaluator", *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done


def first_run(tree: Path, base_url: str, home: Path, out: Path) -> dict:
    wall, done = command(tree, home, ["run", "--model", "m", "--base-url", base_url, "--data", str(DEV_SET),
                                      "--refresh", "--allow-incomplete", "--output", str(out)])
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    times = json.loads((out / "results.json").read_text())["times"]
    return {"wall": wall, "fan_out": times["fan_out_s"], "scoring": times["scoring_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"))
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs")
    args = parser.parse_args()
    if not DEV_SET.is_file():
        raise SystemExit(f"{DEV_SET}: the development set is not beside this checkout")
    seen: dict[str, list[dict]] = {"cold": [], "installed": [], "warm": []}
    with Stub(latency=tuple(args.latency)) as stub, tempfile.TemporaryDirectory() as scratch:
        for n in range(args.rounds):
            for mode in ("cold", "installed"):
                home = Path(scratch) / f"{mode}-{n}"
                home.mkdir()
                if mode == "installed" and command(args.tree, home, ["warm"])[1].returncode != 0:
                    print("no `warm` in this tree: no installed mode", flush=True)
                    continue
                seen[mode].append(first_run(args.tree, stub.base_url, home, home / "out"))
                print(n, mode, seen[mode][-1], flush=True)
                if mode == "cold":
                    seen["warm"].append(first_run(args.tree, stub.base_url, home, home / "out"))
                    print(n, "warm", seen["warm"][-1], flush=True)
    print(f"\n{'first run':<10} {'wall s':>8} {'fan-out s':>10} {'scoring s':>10}   (median of {args.rounds})")
    for mode, runs in seen.items():
        if runs:
            print(f"{mode:<10} " + " ".join(f"{statistics.median(r[k] for r in runs):>{w}.1f}"
                                             for k, w in (("wall", 8), ("fan_out", 10), ("scoring", 10))))


if __name__ == "__main__":
    main()
