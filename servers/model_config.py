"""What a model's KV cache costs, from the model's own `config.json`: vLLM refuses to start unless its KV cache
holds one sequence of `max_model_len`, so a plan that ignores it plans servers that never start.

KV bytes per token = 2 (K and V) × layers × KV heads × head size × dtype bytes (Llama-2-7B 0.5 MiB, Llama-3-8B
with 8 KV heads 0.125 MiB, Qwen1.5-7B without grouped-query attention and 32k context: 16 GiB for one full
sequence). The shape comes from the profile where it states it (`num_layers`, `num_kv_heads`, `head_dim`,
`context_len`), else from `config.json` in the weights folder or the local Hugging Face cache. A suite
fetches the `config.json` of each model it still cannot place from the hub first (`fetch_configs`: that file
only, into the Hugging Face cache, skipped offline); unknown shapes are planned as before and the plan says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from servers.profiles import ModelProfile

BATCH_ROOM = 16_384  # tokens of KV reserved at least: one long sequence, or a batch of short ones


@dataclass(frozen=True)
class Shape:
    layers: int
    kv_heads: int
    head_dim: int
    context: int
    source: str  # where it was read

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def parse_config(config: dict, source: str) -> Shape | None:
    """The attention shape and context of a Hugging Face `config.json` (a multimodal one's `text_config`)."""
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]

    def number(*names: str) -> int | None:
        for name in names:
            value = config.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10_000_000:
                return value
        return None

    layers = number("num_hidden_layers", "n_layer", "num_layers")
    heads = number("num_attention_heads", "n_head")
    kv_heads = number("num_key_value_heads", "multi_query_group_num") or heads
    hidden = number("hidden_size", "n_embd", "d_model")
    head_dim = number("head_dim") or (hidden // heads if hidden and heads else None)
    context = number("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")
    if not (layers and kv_heads and head_dim and context):
        return None
    return Shape(layers, kv_heads, head_dim, context, source)


def _hub_snapshot(model: str) -> Path | None:
    from evaluator.scoring.embeddings import _hub_cache

    snapshots = _hub_cache() / f"models--{model.replace('/', '--')}" / "snapshots"
    found = sorted((p for p in snapshots.glob("*/config.json")), key=lambda p: p.stat().st_mtime) \
        if snapshots.is_dir() else []
    return found[-1] if found else None


@lru_cache(maxsize=256)
def _from_file(path: str) -> Shape | None:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return parse_config(config, path) if isinstance(config, dict) else None


def model_shape(profile: ModelProfile) -> Shape | None:
    stated = (profile.num_layers, profile.num_kv_heads, profile.head_dim, profile.context_len)
    if all(stated):
        return Shape(*stated, source="the profile")
    local = Path(profile.model) / "config.json"
    if local.is_file():
        return _from_file(str(local))
    cached = _hub_snapshot(profile.model)
    return _from_file(str(cached)) if cached else None


def fitted_length(profile: ModelProfile, longest_prompt_tokens: int, max_new_tokens: int) -> int | None:
    """`--max-model-len` for this data: the longest prompt plus the generation budget, rounded up to 1,024
    tokens, never past the model's own context; None where the shape is unknown (vLLM then uses the model's
    own context)."""
    shape = model_shape(profile)
    if shape is None:
        return None
    wanted = -(-(longest_prompt_tokens + max_new_tokens) // 1024) * 1024
    return min(shape.context, wanted)


FETCH_TIMEOUT_S = 10.0


def fetch_configs(profiles: list[ModelProfile]) -> dict[str, str]:
    """The hub's `config.json` of each local model whose shape is not known here, fetched at once into the
    Hugging Face cache (where `model_shape` then finds it; a gated model needs HF_TOKEN, as its weights do).
    Returns why not, by model name, for those it could not fetch; nothing is fetched under HF_HUB_OFFLINE or
    when the hub does not answer a TCP connect."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluator.scoring.embeddings import _hub_cache, _hub_reachable, _offline

    wanted = [p for p in profiles if p.is_local and p.source == "hub" and not Path(p.model).exists()
              and model_shape(p) is None]
    if not wanted:
        return {}
    offline = "HF_HUB_OFFLINE is set" if _offline() else _hub_reachable()
    if offline:
        return {p.name: offline for p in wanted}

    def fetch(profile: ModelProfile) -> str | None:
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(profile.model, "config.json", revision=profile.revision, cache_dir=_hub_cache(),
                            endpoint=os.environ.get("HF_ENDPOINT") or None, etag_timeout=FETCH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001: gated, missing, a 5xx, a timeout: the plan says "KV unknown"
            return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(fetch, wanted))
    return {p.name: reason for p, reason in zip(wanted, reasons) if reason}
