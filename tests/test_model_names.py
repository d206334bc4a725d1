"""Models by the names people know, and inline entries that say what they inherit (issue 25, items 2 and 3),
typed as a person types them: subprocesses from a scratch working folder, relative paths, the loopback hub
stub (as `huggingface_hub` reads the hub) where the hub is asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stubs.hub_stub import HubStub
from builders import write_jsonl
from servers.profiles import load_profiles

# Qwen1.5-0.5B-Chat's config.json, as the hub has it (the fields the planner reads)
QWEN_CHAT = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1024,
             "intermediate_size": 2816, "max_position_embeddings": 32768, "num_attention_heads": 16,
             "num_hidden_layers": 24, "num_key_value_heads": 16, "tie_word_embeddings": True,
             "torch_dtype": "bfloat16", "vocab_size": 151936}
QWEN_CHAT_WEIGHTS = 1_239_173_352  # model.safetensors, bytes


def shopping_mmlu(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=folder, capture_output=True, text=True,
                          env={**base, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf"),
                               **(env or {})}, timeout=300)


def said(done: subprocess.CompletedProcess) -> str:
    return " ".join((done.stdout + done.stderr).split())


@pytest.fixture
def user(tmp_path) -> Path:
    """A user's own folder: a small data file and a suite beside it."""
    write_jsonl(tmp_path / "data" / "mc.json", [
        {"input_field": f"Q{i}?\n0. a\n1. b", "output_field": i % 2, "task_name": "t", "task_type": "multiple-choice",
         "metric": "accuracy"} for i in range(4)])
    return tmp_path


def write_suite(folder: Path, models: str) -> None:
    (folder / "night.toml").write_text(f'[suite]\ndata = "data/mc.json"\n\n[models]\n{models}\n', encoding="utf-8")


def plan(folder: Path, **env) -> tuple[subprocess.CompletedProcess, dict]:
    done = shopping_mmlu(folder, "suite", "night.toml", "--dry-run", "--gpus", "1", "--gpu-mem", "80",
                         "--json", "plan.json", env=env)
    assert done.returncode == 0, done.stderr
    return done, {m["name"]: m for m in json.loads((folder / "plan.json").read_text())["models"]}


def test_a_hub_id_without_a_profile_is_a_local_model_sized_from_the_hubs_listing(user):
    """Online: its config.json (shape) and the hub's file listing (the weights' bytes, over the bytes per
    parameter config.json stores) plan it; a gated model's listing is public but its config.json is not, so it
    is sized from the listing at 16 bits and its KV cache stays unknown."""
    write_suite(user, '"Qwen/Qwen1.5-0.5B-Chat" = {}\n"org/gated-6b" = {}')
    listed = {"Qwen/Qwen1.5-0.5B-Chat": {"model.safetensors": QWEN_CHAT_WEIGHTS, "README.md": 4000},
              "org/gated-6b": {"model-00001-of-00002.safetensors": 5_000_000_000,
                               "model-00002-of-00002.safetensors": 1_060_000_000,
                               "pytorch_model-00001-of-00002.bin": 5_000_000_000,
                               "original/consolidated.00.pth": 12_000_000_000}}
    with HubStub({"Qwen/Qwen1.5-0.5B-Chat": {"config.json": json.dumps(QWEN_CHAT).encode()},
                  "org/gated-6b": {"config.json": b"{}"}}, gated={"org/gated-6b"}, listed=listed) as hub:
        done, models = plan(user, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint)
    assert hub.requests["/api/models/Qwen/Qwen1.5-0.5B-Chat"] == 1  # the listing, once; never the weights
    assert not any(path.endswith(".safetensors") for path in hub.requests)
    qwen = models["Qwen/Qwen1.5-0.5B-Chat"]
    assert qwen["provider"] == "vllm" and qwen["model"] == "Qwen/Qwen1.5-0.5B-Chat"
    assert qwen["params_b"] == round(QWEN_CHAT_WEIGHTS / 2 / 1e9, 3) == 0.62
    assert qwen["kv_shape_from"].endswith("config.json") and "hub's file listing" in qwen["size_from"]
    gated = models["org/gated-6b"]
    assert gated["params_b"] == 3.03 and gated["kv_cache_gib"] is None  # 6.06 GB of safetensors, 2 bytes each
    text = said(done)
    assert ("Qwen/Qwen1.5-0.5B-Chat no profile: a local vLLM model of that hub id; 0.62B from 1.24 GB of weights "
            "in the hub's file listing, 2 bytes each (bfloat16)") in text
    assert "Size unknown" not in text and "Field required" not in text
    # later, offline: the config.json the hub gave is in the Hugging Face cache; the size is estimated from it
    done, models = plan(user)
    estimate = (24 * (2 * 1024 * 16 * 64 * 2 + 3 * 1024 * 2816) + 151936 * 1024) / 1e9  # attention, MLP, tied
    assert models["Qwen/Qwen1.5-0.5B-Chat"]["params_b"] == round(estimate, 3) == 0.464
    assert "estimated from its config.json (the hub's listing: HF_HUB_OFFLINE is set)" in said(done)


def test_a_hub_id_nothing_can_size_is_planned_as_size_unknown_in_one_line(user):
    write_suite(user, '"Qwen/Qwen1.5-0.5B-Chat" = {}')
    done, models = plan(user)
    assert models["Qwen/Qwen1.5-0.5B-Chat"]["params_b"] is None
    lines = [line for line in done.stdout.splitlines() if "Size unknown" in line]
    assert len(lines) == 1 and lines[0].startswith("Size unknown for 1 model(s) (Qwen/Qwen1.5-0.5B-Chat): planned "
                                                   "as 7B")


def test_a_hub_id_a_built_in_profile_serves_is_that_profile_and_the_dry_run_says_which(user):
    write_suite(user, '"qwen/qwen1.5-0.5b" = {}\n"mistralai/Mistral-7B-v0.1" = { max_model_len = 4096 }')
    done, models = plan(user)
    assert sorted(models) == ["mistral", "qwen0.5b"]
    assert models["qwen0.5b"]["written_as"] == "qwen/qwen1.5-0.5b" and models["qwen0.5b"]["from_profile"] == {}
    assert models["mistral"]["max_model_len"] == 4096  # the entry's own
    text = said(done)
    assert "qwen0.5b (qwen/qwen1.5-0.5b) the built-in profile of that hub id, as it is" in text
    write_suite(user, '"qwen0.5b" = {}\n"Qwen/Qwen1.5-0.5B" = {}')
    done = shopping_mmlu(user, "suite", "night.toml", "--dry-run")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "models.Qwen/Qwen1.5-0.5B" in done.stderr and "the built-in profile 'qwen0.5b'" in done.stderr


def test_an_entry_named_like_a_built_in_profile_shows_what_it_inherits(user):
    """`"gpt-5.5" = {...}` overrides only what it states; the dry run lists the rest it takes from the built-in
    profile (reasoning, budgets, rate limits, rendering, and where it overrides anything, the model it still
    asks), per model, at 80 columns."""
    write_suite(user, '"gpt-5.5" = { api_base = "http://127.0.0.1:9/v1", requests_per_minute = 20 }\n'
                      '"claude-sonnet-5.5" = {}\nmy-model = { provider = "openai-compatible", model = "m", '
                      'api_base = "http://127.0.0.1:9/v1" }')
    built_in = load_profiles()["gpt-5.5"]
    done, models = plan(user)
    gpt = models["gpt-5.5"]["from_profile"]
    assert gpt == {"rendering": "chat", "reasoning": True, "reasoning_effort": built_in.reasoning_effort,
                   "reasoning_budget": built_in.reasoning_budget, "provider": "openai", "model": built_in.model,
                   "api_key_env": "OPENAI_API_KEY"}  # neither api_base nor requests_per_minute: the entry's own
    assert models["claude-sonnet-5.5"]["from_profile"] == {"rendering": "chat", "requests_per_minute": 50}
    assert models["my-model"]["from_profile"] is None
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("Settings not stated in the suite"))
    block = " ".join(" ".join(lines[start:start + 8]).split())
    assert (f"gpt-5.5 from the built-in profile: rendering chat, reasoning true, reasoning_effort "
            f"{built_in.reasoning_effort}, reasoning_budget {built_in.reasoning_budget}, provider openai, model "
            f"{built_in.model}, api_key_env OPENAI_API_KEY") in block
    assert "claude-sonnet-5.5 from the built-in profile: rendering chat, requests_per_minute 50" in block
    assert "my-model" not in block


def test_run_model_takes_a_hub_id(user):
    """`run --model ORG/NAME` without --base-url: the built-in profile serving that id (it says which), else a
    local vLLM model of that id. A vLLM that cannot start shows the command it was given."""
    env = {"SHOPPING_MMLU_VLLM_PYTHON": "/bin/false"}
    done = shopping_mmlu(user, "run", "--model", "Qwen/Qwen1.5-0.5B", "--data", "data/mc.json", "--cache", "cache",
                         "--device", "cpu", env=env)
    assert done.returncode == 1
    assert "Qwen/Qwen1.5-0.5B: the built-in profile 'qwen0.5b'" in said(done)
    assert "--model Qwen/Qwen1.5-0.5B --served-model-name qwen0.5b" in said(done)
    done = shopping_mmlu(user, "run", "--model", "org/tiny-lm", "--data", "data/mc.json", "--cache", "cache",
                         "--device", "cpu", env=env)
    assert done.returncode == 1 and "--model org/tiny-lm --served-model-name org/tiny-lm" in said(done)
    assert "no model profile" not in said(done)
    done = shopping_mmlu(user, "run", "--model", "no-such-model", "--data", "data/mc.json", "--cache", "cache")
    assert done.returncode == 2 and "a Hugging Face id (org/name)" in done.stderr


def test_suite_finds_a_built_in_suite_by_name_and_lists_them(user):
    listed = shopping_mmlu(user, "suite", "--list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["demo", "demo-beyond", "paper"]
    assert all(len(line) <= 80 and len(line.split()) > 3 for line in lines)  # one line each, described
    demo = shopping_mmlu(user, "suite", "demo", "--dry-run")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("Suite 'demo': 2 models") and "demo-chat" in demo.stdout
    paper = shopping_mmlu(user, "suite", "paper", "--dry-run")  # no data here: whatever it says, not "cannot read"
    assert "cannot read" not in paper.stderr and ("Suite 'paper': 29 models" in paper.stdout
                                                  or "shopping_mmlu" in paper.stderr)
    (user / "demo").write_text("[suite]\n", encoding="utf-8")  # a file of that name is the user's
    mine = shopping_mmlu(user, "suite", "demo", "--dry-run")
    assert mine.returncode == 2 and "suite.data" in mine.stderr
    nothing = shopping_mmlu(user, "suite", "nightly", "--dry-run")
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1
    assert "no such suite file, nor a built-in suite of that name (built-in: demo, demo-beyond, paper" in nothing.stderr


def test_models_lists_each_hub_id_whole_beside_its_short_name_at_80_columns(user):
    done = shopping_mmlu(user, "models")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    for profile in load_profiles().values():
        if profile.is_local:
            assert any(line.split()[:2] == [profile.name, profile.model] for line in lines), profile.name


def test_the_weights_in_a_listing_are_one_format_at_the_top_level():
    from types import SimpleNamespace as File

    from servers.hub_models import listed_weight_bytes

    def listing(**sizes):
        return [File(rfilename=name.replace("__", "/").replace("_dot_", "."), size=size)
                for name, size in sizes.items()]

    assert listed_weight_bytes(listing(**{"model-00001-of-00002_dot_safetensors": 3, "model-00002-of-00002_dot_"
                                          "safetensors": 4, "consolidated_dot_safetensors": 7,
                                          "pytorch_model_dot_bin": 7})) == 7
    assert listed_weight_bytes(listing(consolidated_dot_safetensors=5, original__x_dot_safetensors=9)) == 5
    assert listed_weight_bytes(listing(pytorch_model_dot_bin=6, **{"README_dot_md": 1})) == 6
    assert listed_weight_bytes(listing(**{"README_dot_md": 1})) is None
