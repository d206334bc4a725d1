"""Soak: 100,000 requests through the stub at 256 in flight, watching the `run` process.

    python benchmarks/soak.py [--requests 100000] [--concurrency 256]

The stub runs in this process (a thread); `shopping-mmlu run` runs as a child, sampled every 0.2 s for RSS
(VmRSS) and open file descriptors. Throughput per 10k comes from the answers' arrival times in the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stubs.openai_stub import Stub  # noqa: E402


def sample(pid: int) -> tuple[float, int] | None:
    try:
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as scratch, Stub() as stub:
        folder = Path(scratch)
        data = folder / "soak.json"
        data.write_text("".join(json.dumps({"input_field": f"Question {i}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ",
                                            "output_field": i % 4, "task_name": f"task{i % 20}",
                                            "task_type": "multiple-choice", "metric": "accuracy"}) + "\n"
                                for i in range(n)), encoding="utf-8")
        cmd = [sys.executable, "-m", "evaluator", "run", "--model", "soak", "--base-url", stub.base_url, "--data",
               str(data), "--cache", str(folder / "cache"), "--concurrency", str(args.concurrency), "--json",
               str(folder / "run.json")]
        child = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = []  # (requests received by the stub, rss MiB, fds)
        while child.poll() is None:
            got = sample(child.pid)
            if got:
                samples.append((sum(stub.seen.values()), *got))
            time.sleep(0.2)
        if child.returncode != 0:
            raise SystemExit(child.stderr.read()[-3000:])
        doc = json.loads((folder / "run.json").read_text())
        db = sqlite3.connect(folder / "cache" / "responses" / "responses.sqlite")
        times = [t for (t,) in db.execute("SELECT created_at FROM answers ORDER BY created_at")]
        db.close()
    flowing = [s for s in samples if 0 < s[0] < n]
    picks = {"start": flowing[0], "middle": min(flowing, key=lambda s: abs(s[0] - n / 2)), "end": flowing[-1]}
    for name, (received, rss, fds) in picks.items():
        print(json.dumps({"point": name, "requests_received": received, "rss_mib": round(rss, 1), "open_fds": fds}))
    blocks = [round(10_000 / (times[i + 9_999] - times[i]), 0) for i in range(0, len(times) - 9_999, 10_000)]
    print(json.dumps({"requests": n, "answers": len(times), "errors": doc["errors"],
                      "fan_out_seconds": doc["requests"]["seconds"],
                      "req_per_s": round(n / doc["requests"]["seconds"], 1), "req_per_s_per_10k": blocks,
                      "max_fds": max(s[2] for s in flowing), "max_rss_mib": round(max(s[1] for s in flowing), 1)}))


if __name__ == "__main__":
    main()
