"""What a model's KV cache costs, from the model's own `config.json`: vLLM refuses to start unless its KV cache
holds one sequence of `max_model_len`, so a plan that ignores it plans servers that never start.

KV bytes per token = 2 (K and V) × layers × KV heads × head size × dtype bytes (Llama-2-7B 0.5 MiB, Llama-3-8B
with 8 KV heads 0.125 MiB, Qwen1.5-7B without grouped-query attention and 32k context: 16 GiB for one full
sequence). The shape comes from the profile where it states it (`num_layers`, `num_kv_heads`, `head_dim`,
`context_len`), else from `config.json` in the weights folder or the local Hugging Face cache. A suite
fetches the `config.json` of each model it still cannot place from the hub first, and the `tokenizer.json` it
counts prompts with (`fetch_configs`: those files only, into the Hugging Face cache, skipped offline); unknown
shapes are planned as before and the plan says so. The same files give the start-up profile's inputs (the
vocabulary, the widths, the parameters in the safetensors headers) that `servers/planner.py` reserves for.
"""

from __future__ import annotations

import json
import math
import os
import re
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
    # Read from a config.json only (a profile states the four above): the widths of the start-up pass's
    # activations and, for a mixture of experts, how many experts each token meets.
    hidden: int | None = None
    intermediate: int | None = None
    experts_per_token: int = 1
    vocab: int | None = None

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
    # Falcon's multi-query attention has one K/V head (vLLM's ModelConfig.get_total_num_kv_heads says so too)
    multi_query = config.get("multi_query") is True and not config.get("new_decoder_architecture")
    kv_heads = 1 if multi_query else number("num_key_value_heads", "multi_query_group_num", "num_kv_heads") or heads
    hidden = number("hidden_size", "n_embd", "d_model")
    head_dim = number("head_dim") or (hidden // heads if hidden and heads else None)
    context = number("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")
    if not (layers and kv_heads and head_dim and context):
        return None
    intermediate = number("intermediate_size", "ffn_hidden_size", "n_inner") or (4 * hidden if hidden else None)
    return Shape(layers, kv_heads, head_dim, context, source, hidden, intermediate,
                 number("num_experts_per_tok", "moe_topk") or 1, number("vocab_size", "padded_vocab_size"))


def _hub_snapshot(model: str, name: str = "config.json") -> Path | None:
    from evaluator.scoring.embeddings import _hub_cache

    snapshots = _hub_cache() / f"models--{model.replace('/', '--')}" / "snapshots"
    found = sorted((p for p in snapshots.glob(f"*/{name}")), key=lambda p: p.stat().st_mtime) \
        if snapshots.is_dir() else []
    return found[-1] if found else None


@lru_cache(maxsize=256)
def _from_file(path: str) -> Shape | None:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return parse_config(config, path) if isinstance(config, dict) else None


def _config_file(profile: ModelProfile) -> Path | None:
    """The model's config.json here: in its weights folder, else in the local Hugging Face cache."""
    local = Path(profile.model) / "config.json"
    return local if local.is_file() else _hub_snapshot(profile.model)


def config_shape(profile: ModelProfile) -> Shape | None:
    """The shape its config.json gives (widths, experts and vocabulary included), where one is here."""
    found = _config_file(profile)
    return _from_file(str(found)) if found else None


def model_shape(profile: ModelProfile) -> Shape | None:
    stated = (profile.num_layers, profile.num_kv_heads, profile.head_dim, profile.context_len)
    if all(stated):
        return Shape(*stated, source="the profile")
    return config_shape(profile)


def vocab_size(profile: ModelProfile) -> int | None:
    """The vocabulary the model's logits span: the profile's, else its config.json's."""
    shape = None if profile.vocab_size else config_shape(profile)
    return profile.vocab_size or (shape.vocab if shape else None)


MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header (JSON) is a few hundred KiB even for a 70B model


def counted_params(profile: ModelProfile) -> int | None:
    """The parameters in the model's safetensors files here (its folder, or the Hugging Face cache), counted
    from each file's header (shapes, not bytes: the files may hold another dtype than the one served); None
    unless every file an index names is here."""
    found = _config_file(profile)
    folder = found.parent if found else None
    files = sorted(folder.glob("*.safetensors")) if folder else []
    if not files:
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            named = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
            return None
        if not named <= {f.name for f in files}:
            return None
    counts = [_safetensors_elements(str(f)) for f in files]
    return sum(counts) if all(c is not None for c in counts) else None


@lru_cache(maxsize=1024)
def _safetensors_elements(path: str) -> int | None:
    """Elements in one safetensors file: its header is 8 bytes of length, then JSON of name -> dtype, shape."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dims = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(dims, list) or not all(type(d) is int and 0 <= d < 2**40 for d in dims):
            return None
        total += math.prod(dims)
    return total


def fitted_length(profile: ModelProfile, longest_prompt_tokens: int, max_new_tokens: int) -> int | None:
    """`--max-model-len` for this data: the longest prompt plus the generation budget, rounded up to 1,024
    tokens, never past the model's own context; None where the shape is unknown (vLLM then uses the model's
    own context)."""
    shape = model_shape(profile)
    if shape is None:
        return None
    wanted = -(-(longest_prompt_tokens + max_new_tokens) // 1024) * 1024
    return min(shape.context, wanted)


# A prompt's tokens where the model's tokenizer is not here, bounded per script: letters and spaces at most one
# token per 2 characters (the bound the planner used before), every other ASCII character (digits, punctuation)
# one token, and every other character one token per UTF-8 byte: byte-fallback tokenizers (Llama-2, Mistral:
# SentencePiece with byte_fallback) spell a character missing from their vocabulary byte by byte (a CJK
# character is 3 bytes, so 3 tokens), where 2 characters per token would have counted half a token.
_LETTERS = re.compile(r"[^A-Za-z ]+")
MAX_TOKENIZER_BYTES = 200 * 2**20


def token_bound(text: str) -> int:
    letters = len(_LETTERS.sub("", text))
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-letters // 2) + (ascii_chars - letters) + (len(text.encode("utf-8", "surrogatepass")) - ascii_chars)


def tokenizer_file(profile: ModelProfile) -> Path | None:
    """The model's tokenizer.json here: in its weights folder, else in the local Hugging Face cache."""
    local = Path(profile.model) / "tokenizer.json"
    return local if local.is_file() else _hub_snapshot(profile.model, "tokenizer.json")


@lru_cache(maxsize=8)
def _tokenizer(path: str):
    """The tokenizer in a tokenizer.json, never truncating or padding; None where the file is not one."""
    try:
        if os.path.getsize(path) > MAX_TOKENIZER_BYTES:
            return None
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(path)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer
    except Exception:  # noqa: BLE001: a broken or hostile file: the bound per script counts instead
        return None


_counted: dict[tuple, int] = {}


@lru_cache(maxsize=64)
def _digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prompt_tokens(profile: ModelProfile, texts: list[str]) -> tuple[int, str]:
    """The most tokens any of `texts` takes for this model, and what counted them: the model's own tokenizer.json
    where it is here (special tokens included, as vLLM's completions endpoint adds them), else the bound per
    script (`token_bound`). Texts counted once per tokenizer."""
    path = tokenizer_file(profile)
    tokenizer = _tokenizer(str(path)) if path else None
    if tokenizer is None:
        return max(map(token_bound, texts), default=0), "a bound per script (no tokenizer.json here)"
    key = (_digest(str(path)), len(texts), hash(tuple(texts)))  # one count per tokenizer, shared by its copies
    if key not in _counted:
        try:
            _counted[key] = max((len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=True)),
                                default=0)
        except Exception:  # noqa: BLE001: a tokenizer that cannot encode: the bound per script counts instead
            return max(map(token_bound, texts), default=0), "a bound per script (its tokenizer.json failed)"
    return _counted[key], str(path)


FETCH_TIMEOUT_S = 10.0


def fetch_configs(profiles: list[ModelProfile]) -> dict[str, str]:
    """The hub's `config.json` of each local model whose shape is not known here, and its `tokenizer.json`
    where that is not here, fetched at once into the Hugging Face cache (where `model_shape` and
    `prompt_tokens` then find them; a gated model needs HF_TOKEN, as its weights do). Returns why not, by
    model name, for the config.json it could not fetch (a model without tokenizer.json is counted by the bound
    per script); nothing is fetched under HF_HUB_OFFLINE or when the hub does not answer a TCP connect."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluator.scoring.embeddings import _hub_cache, _hub_reachable, _offline

    hub = [p for p in profiles if p.is_local and p.source == "hub" and not Path(p.model).exists()]
    jobs = ([(p, "config.json") for p in hub if model_shape(p) is None]
            + [(p, "tokenizer.json") for p in hub if tokenizer_file(p) is None])
    if not jobs:
        return {}
    offline = "HF_HUB_OFFLINE is set" if _offline() else _hub_reachable()
    if offline:
        return {p.name: offline for p, name in jobs if name == "config.json"}

    def fetch(job: tuple[ModelProfile, str]) -> str | None:
        profile, name = job
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(profile.model, name, revision=profile.revision, cache_dir=_hub_cache(),
                            endpoint=os.environ.get("HF_ENDPOINT") or None, etag_timeout=FETCH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001: gated, missing, a 5xx, a timeout: the plan says "KV unknown"
            return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(fetch, jobs))
    return {p.name: reason for (p, name), reason in zip(jobs, reasons) if reason and name == "config.json"}
