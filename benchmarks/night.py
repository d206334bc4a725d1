"""A night of many API models against a fast loopback server: does it finish, does it stop on demand, and
what does its one scoring stage cost?

    python benchmarks/night.py fanout --models 3 --questions 20000 [--stops 5] [--burn 2]
    python benchmarks/night.py scoring --models 27 [--data ../shared/data/kddcup24_development.jsonl]

`fanout`: a suite of N models x Q multiple-choice questions (32 in flight each) on the loopback stub, run as
the CLI would be (its own process), with `--burn` processes keeping the cores busy as on a loaded machine:
first SIGTERM at random moments (seconds to exit, answers kept), then a run to the end (wall time, answers
per model, nothing asked twice). `scoring`: each model's answers differ; then, each on a cold embedding
store, (a) the night's scoring stage over all N models in one process, (b) one model's `rescore`, and
(c) N separate `rescore` processes one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stubs.openai_stub import Stub  # noqa: E402

CLI = [sys.executable, "-c", "from evaluator.cli import main; main()"]


def answer(body: dict) -> str:
    """A different answer per model and prompt (digits for choices, words otherwise)."""
    import hashlib

    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    h = int(hashlib.sha256(f"{body.get('model')}|{prompt}".encode()).hexdigest(), 16)
    if body.get("max_tokens", 0) <= 1:
        return str(h % 4)
    words = ["soft", "cotton", "towel", "steel", "bottle", "wireless", "headphones", "green", "tea", "wallet",
             "1", "2", "3", "4", "5", "blocks", "kids", "mug"]
    return " ".join(words[(h >> (5 * k)) % len(words)] for k in range(2 + h % 6))


def write_suite(folder: Path, data: Path, base_url: str, models: int, concurrency: int = 32) -> Path:
    """A suite of `models` API models m00, m01, ... (served as served-0, served-1, ...) on one endpoint."""
    lines = [f'[suite]\nname = "night"\ndata = "{data}"\nconcurrency = {concurrency}\n[models]']
    lines += [f'm{i:02d} = {{ provider = "openai-compatible", model = "served-{i}", api_base = "{base_url}" }}'
              for i in range(models)]
    path = folder / "night.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def env_for(folder: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SHOPPING_MMLU_CACHE": str(folder / "home"),
            "HF_HUB_OFFLINE": "1"}


def fanout(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="night-"))
    data = folder / "d.json"
    data.write_text("".join(json.dumps({"input_field": f"MC question {i}?", "output_field": i % 4,
                                        "task_name": f"t{i % 20}", "task_type": "multiple-choice",
                                        "metric": "accuracy"}) + "\n" for i in range(args.questions)))
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3600\n"
                                 "while time.time() < end: pass"]) for _ in range(args.burn)]
    rng = random.Random(args.seed)
    try:
        with Stub(answers=answer) as stub:
            suite = write_suite(folder, data, stub.base_url, args.models)
            first = [*CLI, "suite", str(suite), "--cache", str(folder / "first"), "--output", str(folder / "o1")]
            started = time.monotonic()
            whole = subprocess.run(first, env=env_for(folder), capture_output=True, text=True)
            whole_s = time.monotonic() - started
            assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]
            stub.seen.clear()
            command = [*CLI, "suite", str(suite), "--cache", str(folder / "cache"), "--output", str(folder / "out")]
            stops = []
            for _ in range(args.stops):
                proc = subprocess.Popen(command, env=env_for(folder), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                wait = rng.uniform(0.5, args.stop_window or whole_s * 0.6)
                time.sleep(wait)
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                try:
                    code = proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = "killed after 120 s"
                stops.append((round(wait, 1), round(time.monotonic() - sent, 2), code, answers_in(folder)))
            received_before = sum(stub.seen.values())
            started = time.monotonic()
            proc = subprocess.run(command, env=env_for(folder), capture_output=True, text=True)
            wall = time.monotonic() - started
            received = sum(stub.seen.values())
    finally:
        for burner in burners:
            burner.kill()
    per_model = answers_per_model(folder)
    total = args.models * args.questions
    print(f"{args.models} models x {args.questions:,} questions, {args.burn} burner(s), 32 in flight each")
    print(f"a whole night on a fresh cache: exit 0 in {whole_s:.1f} s ({total / whole_s:,.0f} answers/s, CLI start-up,"
          " scoring and reports included)\n")
    print("| SIGTERM after (s) | exit after (s) | exit code | answers kept so far |")
    print("| ---: | ---: | ---: | ---: |")
    for wait, took, code, kept in stops:
        print(f"| {wait} | {took} | {code} | {kept:,} |")
    print(f"\nlast run: exit {proc.returncode}, {wall:.1f} s, {received - received_before:,} requests "
          f"({(received - received_before) / wall:,.0f} req/s); requests over all runs {received:,} for {total:,} "
          f"answers; answers per model {sorted(set(per_model.values()))}")
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
    shutil.rmtree(folder, ignore_errors=True)


def answers_in(folder: Path) -> int:
    path = folder / "cache" / "responses" / "responses.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def answers_per_model(folder: Path) -> dict:
    db = sqlite3.connect(f"file:{folder / 'cache' / 'responses' / 'responses.sqlite'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT model, count(*) FROM answers GROUP BY model").fetchall())
    finally:
        db.close()


STAGE = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from rich.console import Console
from evaluator.runs import runner
from evaluator.runs.stage import ScoringStage
from evaluator.runs.suite import _config, _metrics
from servers.suite import load_suite
started = time.monotonic()
suite = load_suite(Path({suite!r}))
cache = Path({cache!r})
configs = [_config(suite, p, cache) for p in suite.models]
answered = [runner.answer(c, Console(quiet=True), send_missing=False) for c in configs]
stage = ScoringStage(configs[0].scoring.embeddings, _metrics(suite))
import threading
results = [None] * len(answered)
def one(n):
    results[n] = stage.score(answered[n])
threads = [threading.Thread(target=one, args=(n,)) for n in range(len(answered))]
[t.start() for t in threads]
[t.join() for t in threads]
stage.close()
print(time.monotonic() - started, stage.passes, stage.embedder.encoded, sum(r.status == "complete" for r in results))
"""


def cold(folder: Path) -> None:
    """No vectors, no pair scores, no ONNX graph: as on a fresh machine."""
    for name in ("embeddings.sqlite", "embeddings.sqlite-wal", "embeddings.sqlite-shm", ".embeddings.sqlite.lock"):
        (folder / "cache" / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "cache" / "onnx", ignore_errors=True)


def scoring(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="night-scoring-"))
    data = Path(args.data).resolve()
    with Stub(answers=answer) as stub:
        suite = write_suite(folder, data, stub.base_url, args.models)
        fill = subprocess.run([*CLI, "suite", str(suite), "--cache", str(folder / "cache"), "--output",
                               str(folder / "out"), "--allow-incomplete"], env=env_for(folder), capture_output=True,
                              text=True)
    assert fill.returncode == 0, fill.stdout[-2000:] + fill.stderr[-2000:]
    cold(folder)
    script = STAGE.format(root=str(ROOT), suite=str(suite), cache=str(folder / "cache"))
    started = time.monotonic()
    stage = subprocess.run([sys.executable, "-c", script], env=env_for(folder), capture_output=True, text=True)
    stage_wall = time.monotonic() - started
    assert stage.returncode == 0, stage.stderr[-3000:]
    inner, passes, encoded, complete = stage.stdout.split()[-4:]

    def rescore(model: str) -> float:
        begun = time.monotonic()
        proc = subprocess.run([*CLI, "rescore", "--model", model, "--data", str(data), "--cache",
                               str(folder / "cache"), "--allow-incomplete"], env=env_for(folder),
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return time.monotonic() - begun

    cold(folder)
    one = rescore("m00")
    cold(folder)
    separate = sum(rescore(f"m{i:02d}") for i in range(args.models))
    print(f"{args.models} models on {data.name}, every model's answers different; cold embedding store each time")
    print("| what | seconds (process wall) | vs one model |")
    print("| --- | ---: | ---: |")
    print(f"| one model, `rescore` | {one:.1f} | 1.0x |")
    print(f"| the night's scoring stage, {args.models} models in one process ({passes} passes, {encoded} texts "
          f"encoded, {complete} complete) | {stage_wall:.1f} | {stage_wall / one:.1f}x |")
    print(f"| {args.models} separate `rescore` processes | {separate:.1f} | {separate / one:.1f}x |")
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fanout")
    f.add_argument("--models", type=int, default=3)
    f.add_argument("--questions", type=int, default=20000)
    f.add_argument("--stops", type=int, default=5)
    f.add_argument("--stop-window", type=float, default=None,
                   help="SIGTERM within this many seconds of start (default: 60%% of a whole night's time)")
    f.add_argument("--burn", type=int, default=2, help="busy processes beside it")
    f.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("scoring")
    s.add_argument("--models", type=int, default=27)
    s.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"))
    args = parser.parse_args()
    fanout(args) if args.what == "fanout" else scoring(args)


if __name__ == "__main__":
    main()
