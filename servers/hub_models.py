"""The size of a local model named only by its Hugging Face id (no profile, no `params_b`): the planner
reserves memory from it. First the hub's file listing (the weights' bytes: `model_info(files_metadata=True)`,
one request per model, never the weights), divided by the bytes per parameter its config.json stores; where
the hub cannot be asked, an estimate from the config.json in the Hugging Face cache (embeddings, attention
and MLP matrices); else the size stays unknown and the planner's default stands, which the dry run says.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from servers.profiles import ModelProfile

FETCH_TIMEOUT_S = 10.0
STORED_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
# Which top-level files hold the weights, in order of preference: transformers' safetensors shards, any
# safetensors (a lone consolidated.safetensors), PyTorch's bin shards. A repository often holds two formats.
WEIGHTS = (re.compile(r"model(-\d+-of-\d+)?\.safetensors"), re.compile(r"[^/]+\.safetensors"),
           re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin"))


def _config(profile: ModelProfile) -> dict | None:
    from servers.model_config import _hub_snapshot

    found = _hub_snapshot(profile.model)
    try:
        config = json.loads(found.read_text(encoding="utf-8")) if found else None
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(config, dict) and "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        return {**config["text_config"], **{k: config[k] for k in ("torch_dtype", "dtype") if k in config}}
    return config if isinstance(config, dict) else None


def _number(config: dict, *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if type(value) is int and 0 < value < 10**9:
            return value
    return None


def config_params(config: dict) -> float | None:
    """Parameters (billions) a decoder's config.json implies: embeddings (twice when not tied), and per layer
    the attention projections and the MLP (three matrices where it states `intermediate_size`, as gated MLPs
    do; two of 4 × hidden otherwise), times the experts of a mixture. An estimate (norms and biases left out)."""
    hidden = _number(config, "hidden_size", "n_embd", "d_model")
    layers = _number(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _number(config, "num_attention_heads", "n_head")
    vocab = _number(config, "vocab_size", "padded_vocab_size")
    if not (hidden and layers and heads and vocab):
        return None
    head_dim = _number(config, "head_dim") or hidden // heads
    kv_heads = _number(config, "num_key_value_heads", "multi_query_group_num", "num_kv_heads") or heads
    gated = _number(config, "intermediate_size") is not None
    inner = _number(config, "intermediate_size", "ffn_hidden_size", "n_inner") or 4 * hidden
    experts = _number(config, "num_local_experts", "num_experts", "n_routed_experts") or 1
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = experts * (3 if gated else 2) * hidden * inner
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) is not False else 2)
    return (layers * (attention + mlp) + embeddings) / 1e9


def listed_weight_bytes(siblings: list) -> int | None:
    """The bytes of the weight files in a repository listing (top-level files only), None where it has none."""
    files = {s.rfilename: s.size for s in siblings or []
             if isinstance(getattr(s, "rfilename", None), str) and type(getattr(s, "size", None)) is int
             and 0 < s.size < 2**50}
    for pattern in WEIGHTS:
        chosen = [size for name, size in files.items() if pattern.fullmatch(name)]
        if chosen:
            return sum(chosen)
    return None


def _listing(profile: ModelProfile) -> tuple[int | None, str]:
    """(bytes of its weights, None where unknown; why not)."""
    try:
        from huggingface_hub import HfApi

        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(
            profile.model, revision=profile.revision, files_metadata=True, timeout=FETCH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001: unknown, private, a 5xx, a timeout: the size stays unknown
        return None, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    found = listed_weight_bytes(info.siblings)
    return found, "" if found else "the hub lists no weight files (safetensors or bin) for it"


def with_sizes(models: list[ModelProfile]) -> tuple[list[ModelProfile], dict[str, str]]:
    """`models` with `params_b` set for each local hub model that has none, and where each size came from
    (or why it is unknown), by name."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluator.scoring.embeddings import _hub_reachable, _offline

    wanted = [m for m in models if m.is_local and m.source == "hub" and m.params_b is None
              and not Path(m.model).exists()]
    if not wanted:
        return models, {}
    offline = "HF_HUB_OFFLINE is set" if _offline() else _hub_reachable()
    if offline:
        listings = [(None, offline)] * len(wanted)
    else:
        with ThreadPoolExecutor(max_workers=8) as pool:
            listings = list(pool.map(_listing, wanted))
    sizes, said = {}, {}
    for profile, (weight_bytes, why) in zip(wanted, listings):
        config = _config(profile) or {}
        stored = config.get("torch_dtype") or config.get("dtype")
        if weight_bytes:
            per = STORED_BYTES.get(stored, 2)
            sizes[profile.name] = round(weight_bytes / per / 1e9, 3)
            said[profile.name] = (f"{weight_bytes / 1e9:.2f} GB of weights in the hub's file listing, "
                                  f"{per} bytes each ({stored or 'assumed 16-bit'})")
        elif (estimate := config_params(config)) is not None:
            sizes[profile.name] = round(estimate, 3)
            said[profile.name] = f"estimated from its config.json (the hub's listing: {why})"
        else:
            said[profile.name] = f"size unknown: {why}" + ("" if config else "; no config.json here")
    return [m.model_copy(update={"params_b": sizes[m.name]}) if m.name in sizes else m for m in models], said


def size_suite(suite):
    """The suite with hub models' sizes filled in (`with_sizes`), and `sizes` saying where each came from."""
    models, said = with_sizes(suite.models)
    return dataclasses.replace(suite, models=models, sizes={**suite.sizes, **said}) if said else suite
