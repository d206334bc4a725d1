"""What vLLM takes to start, and what a prompt costs in tokens (issue 26 items 1, 2 and 6): the plan against a
model of vLLM 0.33's start-up profile written from its source (servers/planner.py `vllm_starts`), the launch
command carrying the batch the plan reserved for, weights counted from safetensors headers, prompts counted
with the model's own tokenizer (or bounded per script), and vLLM's context-length 400 kept out of the breaker."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from builders import write_jsonl
from evaluator.client.http import Reply
from evaluator.runs import suite as suite_runner
from evaluator.runs.breaker import Breaker, BreakerPolicy
from servers.model_config import counted_params, model_shape, parse_config, prompt_tokens, token_bound
from servers.planner import (
    GIB,
    batch,
    kv_gib,
    plan_node,
    start_costs,
    synthetic_inventory,
    utilization,
    vllm_starts,
    weights_bytes,
)
from servers.profiles import ModelProfile
from servers.suite import load_suite
from servers.vllm_server import VLLMServer

SUITES = Path(__file__).resolve().parents[1] / "servers" / "suites"


def served(placement, gpu_gib: float) -> ModelProfile:
    """The profile a suite starts a placed server with (evaluator/runs/suite.py run_local)."""
    return placement.profile.model_copy(update={"tensor_parallel_size": placement.tp, "gpu_memory_utilization":
                                                utilization(placement.share_gib, gpu_gib)})


@pytest.mark.parametrize("gpus, gib", [(8, 80.0), (1, 141.0)])
def test_every_planned_server_of_the_paper_suite_starts_under_vllms_own_arithmetic(tmp_path, gpus, gib):
    """Planned on 8 x 80 GiB and on one 141 GiB H200: each placed server, started as the suite starts it (its
    --gpu-memory-utilization rounded as the runner rounds it, the command VLLMServer builds), holds what vLLM
    0.33's profile takes (weights, activations, the sampler pass, CUDA graphs, the rest) and the KV cache of
    one sequence of its max_model_len; gemma-2b (256k vocabulary) and Qwen1.5-0.5B (0.62B parameters) among
    them."""
    suite = load_suite(SUITES / "paper.toml")
    local = [m for m in suite.models if m.is_local]
    plan = plan_node(local, synthetic_inventory(gpus, gib))
    placed = {p.profile.name for p in plan.placements}
    assert {"gemma2b", "qwen0.5b"} <= placed
    assert len(placed) == (27 if gpus == 8 else len(placed)) and len(placed) + len(plan.unplaceable) == 27
    for placement in plan.placements:
        profile = served(placement, gib)
        command = VLLMServer(profile, profile.model, tmp_path / "x.log", device="gpu").command()
        starts, available, needed = vllm_starts(profile, placement.tp, gib, profile.gpu_memory_utilization,
                                                command)
        assert starts, (profile.name, placement.tp, available, needed)
    for unplaced in plan.unplaceable:  # too big for one 141 GiB GPU: the 70B-class models, and only those
        assert unplaced.profile.params_b >= 46


def test_the_old_plan_of_gemma_2b_would_not_start_where_vllm_takes_its_defaults(tmp_path):
    """The control: gemma-2b planned as weights x 1.2 + KV, started without the batch flags on an H100,
    gets vLLM's 1024 sequences x 256,000-token vocabulary in its sampler pass and no room for its KV cache;
    the plan and the flags together start it."""
    profile = next(m for m in load_suite(SUITES / "paper.toml").models if m.name == "gemma2b")
    old_share = profile.params_b * 1e9 * 2 * 1.2 / GIB + kv_gib(profile)
    bare = ["--max-model-len", "8192"]
    assert not vllm_starts(profile, 1, 80.0, round(old_share / 80.0, 3), bare)[0]
    assert start_costs(profile, 1, 1024, 8192).sampler > 4.0  # 1024 x 256,000 x 18 bytes: 4.4 GiB
    placement = plan_node([profile], synthetic_inventory(1, 80.0)).placements[0]
    started = served(placement, 80.0)
    command = VLLMServer(started, "google/gemma-2b", tmp_path / "g.log", device="gpu").command()
    assert vllm_starts(started, 1, 80.0, started.gpu_memory_utilization, command)[0]
    assert not vllm_starts(started, 1, 80.0, started.gpu_memory_utilization, bare)[0]  # the flags matter


def test_the_launch_command_carries_the_batch_the_plan_reserved_for(tmp_path):
    """On a GPU the server gets --max-num-seqs and --max-num-batched-tokens as planned; a profile that sets
    its own keeps them, and the plan reserves for those; on a CPU vLLM-CPU keeps its own defaults."""
    plain = ModelProfile(name="p", model="org/p", params_b=7, dtype="bfloat16", vocab_size=32000)
    command = VLLMServer(plain, "org/p", tmp_path / "p.log", device="gpu").command()
    assert command[command.index("--max-num-seqs") + 1] == "256"
    assert command[command.index("--max-num-batched-tokens") + 1] == "8192"
    own = plain.model_copy(update={"extra_args": ["--max-num-seqs=512"]})
    command = VLLMServer(own, "org/p", tmp_path / "p.log", device="gpu").command()
    assert command.count("--max-num-seqs=512") == 1 and "--max-num-seqs" not in command
    assert batch(own) == (512, 8192)
    assert start_costs(own).sampler == pytest.approx(2 * start_costs(plain).sampler)
    busy = plain.model_copy(update={"concurrency": 600})
    assert batch(busy) == (600, 8192)  # a model asked for 600 at once is started for 600
    cpu = VLLMServer(plain, "org/p", tmp_path / "p.log", device="cpu").command()
    assert "--max-num-seqs" not in cpu and "--max-num-batched-tokens" not in cpu


def safetensors_file(path: Path, shapes: dict[str, list[int]], header_size: int | None = None) -> None:
    """A safetensors file as the format specifies it: 8 bytes of little-endian header length, the JSON header
    (dtype, shape, data_offsets per tensor), then the data."""
    header, offset = {}, 0
    for name, dims in shapes.items():
        size = 2
        for d in dims:
            size *= d
        header[name] = {"dtype": "BF16", "shape": dims, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", header_size or len(raw)) + raw + b"\0" * offset)


def test_weights_are_the_parameters_in_the_safetensors_headers_where_the_files_are_here(tmp_path):
    """A folder's safetensors headers give the real count (Qwen1.5-0.5B's profile once said 0.5B for 0.62B);
    a shard its index names but that is missing, or a header that is no header, leaves the profile's count."""
    from safetensors.torch import save_file
    import torch

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4,
                                                    "hidden_size": 64, "max_position_embeddings": 512}))
    save_file({"embed": torch.zeros(1000, 64, dtype=torch.bfloat16), "w": torch.zeros(64, 64, dtype=torch.bfloat16)},
              str(folder / "model-00001-of-00002.safetensors"))
    safetensors_file(folder / "model-00002-of-00002.safetensors", {"head": [1000, 64]})
    profile = ModelProfile(name="m", model=str(folder), params_b=0.00001, dtype="bfloat16")
    assert counted_params(profile) == 1000 * 64 * 2 + 64 * 64
    assert weights_bytes(profile) == (1000 * 64 * 2 + 64 * 64) * 2
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "embed": "model-00001-of-00002.safetensors", "head": "model-00003-of-00003.safetensors"}}))
    assert counted_params(profile) is None and weights_bytes(profile) == 0.00001e9 * 2
    (folder / "model.safetensors.index.json").unlink()
    safetensors_file(folder / "model-00002-of-00002.safetensors", {"head": [1000, 64]}, header_size=2**40)
    from servers.model_config import _safetensors_elements

    _safetensors_elements.cache_clear()
    assert counted_params(profile) is None  # a header claiming a terabyte is not read


def test_a_config_json_gives_falcons_one_kv_head_the_widths_the_experts_and_the_vocabulary():
    """As vLLM reads them: Falcon-7B's multi_query means one K/V head whatever num_kv_heads says (its hub
    config states no context: FalconConfig's 2048); Mixtral's experts per token widen its activations."""
    falcon = parse_config({"model_type": "falcon", "hidden_size": 4544, "n_head": 71, "n_layer": 32,
                           "multi_query": True, "new_decoder_architecture": False, "num_kv_heads": 71,
                           "max_position_embeddings": 2048, "vocab_size": 65024}, "falcon")
    assert (falcon.kv_heads, falcon.head_dim, falcon.vocab, falcon.intermediate) == (1, 64, 65024, 4 * 4544)
    mixtral = parse_config({"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                            "hidden_size": 4096, "intermediate_size": 14336, "num_experts_per_tok": 2,
                            "max_position_embeddings": 32768, "vocab_size": 32000}, "mixtral")
    assert (mixtral.kv_heads, mixtral.experts_per_token, mixtral.vocab) == (8, 2, 32000)


def byte_fallback_tokenizer(path: Path) -> Path:
    """A Llama-2-style tokenizer built with the `tokenizers` library: BPE with byte fallback, whose vocabulary
    holds the printable ASCII characters and a few English words (merged letter by letter), so a character
    outside it is spelled as its UTF-8 bytes (<0xE6> <0x97> <0xA5> for 日)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for char in map(chr, range(33, 127)):
        vocab.setdefault(char, len(vocab))
    merges = []
    for word in ["Question", "Answer", "word", "the", "shopping"]:
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                merges.append((word[:end - 1], word[end - 1]))
                vocab[word[:end]] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.ByteFallback()
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def model_folder(folder: Path, tokenizer: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_size": 256,
        "max_position_embeddings": 32768, "vocab_size": 356}), encoding="utf-8")
    if tokenizer:
        byte_fallback_tokenizer(folder / "tokenizer.json")
    return folder


def test_a_japanese_prompt_is_counted_with_the_models_tokenizer_or_bounded_per_script(tmp_path):
    """1,500 Japanese characters are 4,500 tokens under byte fallback: counted with the model's own
    tokenizer.json where it is here, bounded per script (3 per CJK character) where it is not; the fitted
    max_model_len holds them either way, where two characters a token would have fitted 1,024."""
    japanese = "日本語の商品説明です" * 150  # 1,500 characters, none in the vocabulary
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": japanese, "output_field": "x", "task_name": "jp", "task_type": "generation",
         "metric": "jp-bleu"}, {"input_field": "Q?", "output_field": 1, "task_name": "m",
                                "task_type": "multiple-choice", "metric": "accuracy"}])
    counted = model_folder(tmp_path / "counted", tokenizer=True)
    bounded = model_folder(tmp_path / "bounded", tokenizer=False)
    suite_file = tmp_path / "s.toml"
    suite_file.write_text(f'[suite]\ndata = "{data}"\n[models]\n'
                          f'counted = {{ model = "{counted}", params_b = 0.1 }}\n'
                          f'bounded = {{ model = "{bounded}", params_b = 0.1 }}\n', encoding="utf-8")
    said = []
    fitted = {m.name: m for m in suite_runner.fit_context(load_suite(suite_file), say=said.append).models}
    tokens, how = prompt_tokens(fitted["counted"], [japanese])
    assert how.endswith("tokenizer.json") and tokens == 3 * 1500  # the real tokenizer spells every byte
    assert prompt_tokens(fitted["bounded"], [japanese]) == (3 * 1500, "a bound per script (no tokenizer.json here)")
    for name in ("counted", "bounded"):  # the system prompt, 4,500 tokens and 100 to generate: 5,120
        assert fitted[name].max_model_len == 5120, (name, fitted[name].max_model_len)
    assert len(said) == 1 and "bounded per script for 1 model(s) (bounded)" in said[0]


def test_the_bound_per_script_is_at_least_what_a_byte_fallback_tokenizer_spends(tmp_path):
    """Letters and spaces at 2 a token (a real vocabulary's English words are longer; this toy knows only a
    few), other ASCII at 1, other characters at their UTF-8 bytes: never below what byte fallback spends."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(byte_fallback_tokenizer(tmp_path / "t" / "tokenizer.json")))
    assert token_bound("word word") == 5 and token_bound("12, 7") == 5 and token_bound("日本") == 6
    assert token_bound("é") == 2 and token_bound("😀") == 4
    for text in ["Question: the word?", "été", "商品の説明 word", "😀 7", "1, 2, 3, 4", "the shopping Answer",
                 "日本語の商品説明です" * 20]:
        assert token_bound(text) >= len(tokenizer.encode(text).ids), text


def vllm_400(message: str, param: str | None) -> Reply:
    """vLLM's 400 as our client keeps it: 'HTTP 400: ' and the ErrorResponse body (serving.py
    create_error_response: error.message, type BadRequestError, param, code 400)."""
    body = json.dumps({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}})
    return Reply(False, 1, 0.01, error_kind="http_error", status=400, message=f"HTTP 400: {body}"[:509])


CONTEXT_400S = [
    # vllm/renderers/params.py TokenizeParams._token_len_check and _text_len_check
    ("You passed 9000 input tokens and requested 100 output tokens. However, the model's context length is only "
     "4096 tokens, resulting in a maximum input length of 3996 tokens. Please reduce the length of the input "
     "prompt.", "input_tokens"),
    ("You passed 40000 input characters and requested 100 output tokens. However, the model's context length is "
     "only 4096 tokens, resulting in a maximum input length of 3996 tokens (at most 39960 characters). Please "
     "reduce the length of the input prompt.", "input_text"),
    # vllm/entrypoints/openai/engine/serving.py OpenAIServing._validate_input
    ("This model's maximum context length is 4096 tokens. However, your request has 4100 input tokens. Please "
     "reduce the length of the input messages.", "input_tokens"),
    ("'max_tokens' or 'max_completion_tokens' is too large: 100. This model's maximum context length is 4096 "
     "tokens and your request has 4050 input tokens (100 > 4096 - 4050).", "max_tokens"),
    # the engine's input processor, a ValueError served as a 400 without a param
    ("The decoder prompt (length 4100) plus the number of requested output tokens (at least 1) is longer than "
     "the maximum model length of 4096. Make sure that `max_model_len` is no smaller than the number of text "
     "tokens.", None),
]


@pytest.mark.parametrize("message, param", CONTEXT_400S)
def test_vllms_context_length_400_is_that_questions_error_row_never_the_breakers(message, param):
    """Twenty prompts in a row too long for the context trip nothing and count toward no error share (each
    is its question's error row); five 400s that name the model otherwise still stop the run."""
    breaker = Breaker(BreakerPolicy(consecutive=5, min_replies=10, error_share=0.5))
    ok = Reply(True, 1, 0.01, text="1")
    for _ in range(20):
        assert breaker.see(vllm_400(message, param)) is None
    assert breaker.errors == 0 and breaker.replies == 0
    for _ in range(10):
        assert breaker.see(ok) is None
    refusal = vllm_400("The model `x` is not allowed to be used with this endpoint.", "model")
    reasons = [breaker.see(refusal) for _ in range(5)]
    assert reasons[:4] == [None] * 4 and "HTTP 400 naming the model" in reasons[4]


def test_the_kv_cache_is_split_and_replicated_as_vllm_does():
    """Over more GPUs than KV heads, each GPU keeps one (Falcon-7B's single head on 2 GPUs: twice the KV)."""
    falcon = ModelProfile(name="f", model="org/f", params_b=6.92, num_layers=32, num_kv_heads=1, head_dim=64,
                          context_len=2048, vocab_size=65024, dtype="bfloat16")
    one = kv_gib(falcon, 1, 2048)
    assert one == pytest.approx(2 * 32 * 1 * 64 * 2 * 2048 / GIB) and kv_gib(falcon, 2, 2048) == 2 * one
    assert model_shape(falcon).kv_heads == 1


def vllm_importable() -> bool:
    import subprocess

    from servers.vllm_server import vllm_python

    python = vllm_python()
    return Path(python).exists() and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not vllm_importable(), reason="no vLLM: build .venv-vllm (make test does)")
def test_prompts_past_a_real_vllm_servers_context_are_their_questions_error_rows(tmp_path, capsys, monkeypatch):
    """A real vLLM-CPU server (the demo model, --max-model-len 256) refuses ten Japanese prompts longer than
    its context with its own 400; each is that question's error row, the breaker (5 in a row) never trips,
    and the short question beside them is answered."""
    from evaluator.cache.responses import ResponseCache
    from evaluator.scoring.embeddings import default_cache_dir
    from servers import demo_model
    from servers.profiles import get_profile
    from builders import run_cli

    folder = demo_model.ensure_demo_model(default_cache_dir())
    profile = get_profile("demo").model_copy(update={"max_model_len": 256})
    long = "日本語の商品説明です。" * 60
    rows = [{"input_field": f"{long}{i}", "output_field": 0, "task_name": "jp", "task_type": "multiple-choice",
             "metric": "accuracy"} for i in range(10)]
    rows.append({"input_field": "Which one is a fruit?\n0. apple\n1. car\nAnswer: ", "output_field": 0,
                 "task_name": "en", "task_type": "multiple-choice", "metric": "accuracy"})
    data = write_jsonl(tmp_path / "d.json", rows)
    with VLLMServer(profile, str(folder), tmp_path / "vllm.log", device="cpu") as server:
        code, out, err = run_cli(["run", "--model", "demo", "--base-url", server.base_url, "--data", data,
                                  "--cache", tmp_path / "c", "--no-preflight", "--concurrency", "1",
                                  "--allow-incomplete", "--json", tmp_path / "r.json"], capsys, monkeypatch)
    assert "stopped after" not in out and "stopped:" not in out, out
    db = ResponseCache(tmp_path / "c" / "responses")
    errors = db.db.execute("SELECT status, message FROM errors").fetchall()
    answered = db.db.execute("SELECT count(*) FROM answers").fetchone()[0]
    db.close()
    assert len(errors) == 10 and answered == 1, (errors, out, err)
    assert all(status == 400 and too_long_message(message) for status, message in errors), errors[0]


def too_long_message(message: str) -> bool:
    from evaluator.runs.breaker import too_long

    return too_long(Reply(False, 1, 0.0, status=400, message=message))
