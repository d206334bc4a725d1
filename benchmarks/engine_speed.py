"""What users wait for on a vLLM-CPU server: the request order, the CPU's dtype, the server's start-up.

    python benchmarks/engine_speed.py order   [--rounds 3]   # our order vs data order vs vLLM's offline engine
    python benchmarks/engine_speed.py dtype   [--rounds 3]   # bfloat16 vs float32 on the 52 one-token questions
    python benchmarks/engine_speed.py startup                # first start (empty compile cache) vs a later one

order:   one demo server; alternating rounds of the run's fan-out (64 in flight, our client) in data order, in
         task-grouped order (as the official files list questions), in --shuffles random orders and in speed
         order (`planning.speed_order`), on the 96 KDD development questions and the 26 sample questions,
         skill-wise, plain prompts; then the same prompts and token budgets through vLLM's offline in-process
         engine (`LLM.generate`, data order) in the vLLM environment, after a warm-up. --max-num-seqs N limits
         the engine's batch for both (a queue longer than the batch, as on a GPU night).
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
from evaluator.runs.planning import budget, plan, speed_order  # noqa: E402
from evaluator.runs.settings import RunConfig  # noqa: E402
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


async def timed_fan_out(base_url: str, items: list[dict], concurrency: int | None = None,
                        lengths: list | None = None) -> float:
    """Seconds from the first send to the last reply; `lengths` receives each reply's completion tokens."""
    concurrency = concurrency or CONCURRENCY
    endpoint = Endpoint(base_url=base_url, chat=False, concurrency=concurrency)
    failures, tokens = [], {}

    def keep(key, reply) -> None:
        if not reply.ok:
            failures.append(reply.message)
        tokens[key] = reply.completion_tokens

    seconds = await fan_out(endpoint, [(str(i), b) for i, b in enumerate(items)], keep)
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed: {failures[0]}")
    if lengths is not None:
        lengths[:] = [tokens[str(i)] or 1 for i in range(len(items))]
    return seconds


def slot_steps(order: list[dict], length: dict[str, int], slots: int) -> int:
    """Engine steps to finish `order` when `slots` requests run at once, admitted first come first served,
    each holding its slot for as many steps as it generates tokens (its prefill in the first)."""
    import heapq

    free, end = [0] * slots, 0
    for body in order:
        start = heapq.heappop(free)
        finish = start + length[json.dumps(body, sort_keys=True)]
        heapq.heappush(free, finish)
        end = max(end, finish)
    return end


def simulate(orders: dict[str, list[dict]], lengths: list[int], slots: int) -> dict:
    """What ordering can gain at all on this set: each order's steps under the slot model with the answers'
    real lengths (greedy decoding: the same every round), an oracle order (longest real answer first) and
    the lower bound (all tokens over the slots, or the longest answer)."""
    length = {json.dumps(b, sort_keys=True): n for b, n in zip(orders["data"], lengths)}
    steps = {name: slot_steps(order, length, slots) for name, order in orders.items()}
    oracle = sorted(orders["data"], key=lambda b: -length[json.dumps(b, sort_keys=True)])
    steps["oracle (real lengths, longest first)"] = slot_steps(oracle, length, slots)
    bound = max(-(-sum(lengths) // slots), max(lengths))
    return {"steps": steps, "lower_bound": bound,
            "data_over_oracle": round(steps["data"] / steps["oracle (real lengths, longest first)"], 3),
            "data_over_speed": round(steps["data"] / steps["speed"], 3)}


def arrangements(path: Path, shuffles: int) -> dict[str, list[dict]]:
    """Each order measured: data (as the file has them), task-grouped (task by task, in the order the tasks
    first appear: how the official skill and task files list them; the development set interleaves its
    tasks), a few random shuffles, and our speed order."""
    import random

    dataset = loaders.load(path)
    items = plan(dataset.questions, RunConfig(profile=get_profile("demo"), data=path))
    tasks = [q.task for q in dataset.questions]
    first = {task: n for n, task in reversed(list(enumerate(tasks)))}
    out = {"data": items,
           "task-grouped": [item for _, item in sorted(zip(tasks, items), key=lambda pair: first[pair[0]])]}
    for seed in range(shuffles):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        out[f"shuffled-{seed}"] = shuffled
    out["speed"] = speed_order(items)
    out["interleaved"] = interleaved(out["speed"])
    return {name: [p.body for p in order] for name, order in out.items()}


def interleaved(fast: list) -> list:
    """A candidate: speed order's long requests spread over the first two thirds of the queue with the
    one-token ones between them (prefills riding along the decodes), one-token ones only at the end."""
    longs = [p for p in fast if budget(p.body) > 1]
    shorts = [p for p in fast if budget(p.body) <= 1]
    total, span, placed, out = len(longs), max(1.0, len(fast) * 2 / 3), 0, []
    while longs or shorts:
        if longs and (not shorts or placed < total * min(1.0, (len(out) + 1) / span)):
            out.append(longs.pop(0))
            placed += 1
        else:
            out.append(shorts.pop(0))
    return out


def order(rounds: int, extra: list[str], max_num_seqs: int | None = None, shuffles: int = 0) -> None:
    sets = {"dev": DEV_SET, "sample": SAMPLE}
    orders = {name: arrangements(path, shuffles) for name, path in sets.items()}
    data_order = {name: by_kind["data"] for name, by_kind in orders.items()}
    results: dict[str, dict[str, list[float]]] = {n: {**{k: [] for k in orders[n]}, "offline": []} for n in sets}
    if max_num_seqs:  # the engine's batch, smaller than the queue, as on a GPU night of 20,799 questions
        extra = [*extra, "--max-num-seqs", str(max_num_seqs)]
    with tempfile.TemporaryDirectory() as scratch:
        server = serve(cpu_dtype(), default_cache_dir() / "vllm-compile", Path(scratch) / "server.log", extra)
        try:
            for name in sets:  # one warm-up pass each, as the offline engine gets
                lengths: list[int] = []
                asyncio.run(timed_fan_out(server.base_url, orders[name]["data"], lengths=lengths))
                asyncio.run(timed_fan_out(server.base_url, orders[name]["speed"]))
                if max_num_seqs:
                    emit({"simulation": name, "slots": max_num_seqs, **simulate(orders[name], lengths, max_num_seqs)})
            for round_no in range(1, rounds + 1):
                for name in sets:
                    for kind, items in orders[name].items():
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
        shuffled = [v for k, v in means.items() if k.startswith("shuffled-")]
        emit({"summary": name, **{f"{k}_q_per_s": round(v, 3) for k, v in means.items()},
              "speed_vs_offline": round(means["speed"] / means["offline"], 3),
              "speed_vs_data_order": round(means["speed"] / means["data"], 3),
              "speed_vs_task_grouped": round(means["speed"] / means["task-grouped"], 3),
              **({"speed_vs_shuffled_mean": round(means["speed"] / statistics.mean(shuffled), 3)} if shuffled else {})})


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
    parser.add_argument("--shuffles", type=int, default=0, help="also this many random orders (order)")
    parser.add_argument("--max-num-seqs", type=int, help="the engine's batch for the server and the offline "
                        "engine alike (order): a queue longer than the batch")
    args = parser.parse_args()
    global CONCURRENCY
    CONCURRENCY = args.concurrency
    {"order": lambda: order(args.rounds, args.server_args.split(), args.max_num_seqs, args.shuffles), "dtype": lambda: dtype(args.rounds),
     "startup": startup}[args.mode]()


if __name__ == "__main__":
    main()
