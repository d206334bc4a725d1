"""Whole commands, same work, same server: `shopping-mmlu run --refresh` vs lm-evaluation-harness 0.4.13.

    python benchmarks/vs_lm_eval.py --lm-eval-python PATH [--rounds 3]

lm-eval is no dependency of ours: install it in a separate environment for this benchmark only
(`python -m venv V && V/bin/pip install torch==2.13.0 'lm-eval[api]==0.4.13'`). One vLLM-CPU demo server
serves both. The 96 KDD Cup development questions are written as two lm-eval tasks with our exact skill-wise
prompts (system prompt + input, plain text) and token budgets (1 for multiple choice, 100 otherwise), sent
with `local-completions`, `num_concurrent=64`, `tokenized_requests=False`, greedy. Rounds alternate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluator.data import loaders  # noqa: E402
from evaluator.prompts import Protocol, Rendering, render  # noqa: E402
from evaluator.data.records import TaskType  # noqa: E402
from servers import demo_model  # noqa: E402
from servers.profiles import get_profile  # noqa: E402
from servers.vllm_server import VLLMServer  # noqa: E402

DEV_SET = ROOT.parent / "shared" / "data" / "kddcup24_development.jsonl"
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_tokens}
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
"""


def write_tasks(folder: Path) -> list[str]:
    questions = loaders.load(DEV_SET).questions
    groups = {"shopping_mc": [], "shopping_other": []}
    for q in questions:
        prompt = render(q, Protocol.SKILL, Rendering.COMPLETION)
        name = "shopping_mc" if q.task_type is TaskType.MULTIPLE_CHOICE else "shopping_other"
        groups[name].append({"prompt": prompt.prompt, "target": json.dumps(q.truth, ensure_ascii=False)})
    for name, rows in groups.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        budget = 1 if name == "shopping_mc" else 100
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, max_tokens=budget))
    return list(groups)


def timed(cmd: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-eval-python", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    models = Path(os.environ.get("SHOPPING_MMLU_CACHE", Path.home() / ".cache" / "shopping-mmlu"))
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        tasks = write_tasks(scratch_path)
        weights = demo_model.ensure_demo_model(models)
        with VLLMServer(get_profile("demo"), str(weights), scratch_path / "server.log") as server:
            ours_cmd = [sys.executable, "-m", "evaluator", "run", "--model", "demo", "--base-url", server.base_url,
                        "--data", str(DEV_SET), "--cache", str(scratch_path / "cache"), "--refresh",
                        "--concurrency", "64", "--json", str(scratch_path / "ours.json")]
            lm_cmd = [args.lm_eval_python, "-m", "lm_eval", "--model", "local-completions", "--model_args",
                      f"model=demo,base_url={server.base_url}/completions,num_concurrent=64,"
                      "tokenized_requests=False,tokenizer_backend=None,max_retries=3",
                      "--tasks", ",".join(tasks), "--include_path", str(scratch_path), "--batch_size", "1",
                      "--output_path", str(scratch_path / "lm_eval_out")]
            timed(ours_cmd, env)  # warm-up: embedding cache and page cache, for both sides alike
            timed(lm_cmd, env)
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(timed(ours_cmd, env))
                print(json.dumps({"kind": "shopping-mmlu run --refresh", "seconds": round(ours[-1], 2)}), flush=True)
                theirs.append(timed(lm_cmd, env))
                print(json.dumps({"kind": "lm_eval local-completions", "seconds": round(theirs[-1], 2)}), flush=True)
    mean_ours, mean_theirs = sum(ours) / len(ours), sum(theirs) / len(theirs)
    print(json.dumps({"ours_s": round(mean_ours, 2), "lm_eval_s": round(mean_theirs, 2),
                      "ratio": round(mean_ours / mean_theirs, 3)}))


if __name__ == "__main__":
    main()
