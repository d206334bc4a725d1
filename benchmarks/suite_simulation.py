"""The paper suite on a simulated 8 × 80 GB node: GPU-busy fraction and wall time vs one after another.

    python benchmarks/suite_simulation.py [--gpus 8] [--gpu-mem 80]

Uses the planner's stated time models (servers/planner.py): start-up 60 s + weights share at 2 GiB/s;
evaluation of the 20,799 skill-wise questions ~350 s for a 7B model on one GPU, linear in size, shrinking
as TP^0.85, with a 60 s floor. "One after another" runs the same models, each at the same TP, in sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servers.planner import plan_node, synthetic_inventory  # noqa: E402
from servers.suite import load_suite  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-mem", type=float, default=80.0)
    args = parser.parse_args()
    suite = load_suite(ROOT / "servers" / "suites" / "paper.toml")
    local = [m for m in suite.models if m.is_local]
    started = time.perf_counter()
    plan = plan_node(local, synthetic_inventory(args.gpus, args.gpu_mem))
    planning_s = time.perf_counter() - started
    for p in plan.placements:
        print(json.dumps({"model": p.profile.name, "tp": p.tp, "gpus": p.gpus, "start_s": round(p.start_s),
                          "eval_start_s": round(p.eval_start_s), "end_s": round(p.end_s)}))
    print(json.dumps({"models": len(local), "placed": len(plan.placements), "unplaceable": len(plan.unplaceable),
                      "wall_h": round(plan.wall_s / 3600, 3), "sequential_h": round(plan.sequential_s / 3600, 3),
                      "wall_vs_sequential": round(plan.wall_s / plan.sequential_s, 3),
                      "gpu_busy": round(plan.gpu_busy_fraction, 3), "planning_s": round(planning_s, 3)}))


if __name__ == "__main__":
    main()
