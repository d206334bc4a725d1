"""A hub model's files on this machine before its server's start-up clock runs.

vLLM downloads missing weights inside its own start-up, so a first download of a large model (a 70B model is
about 140 GB) counts against the start-up limit (900 s on one node) and can be killed by it, to start again
from the beginning next time. The files vLLM would load are fetched first, into the Hugging Face cache vLLM
reads (a file already there is not fetched again), with a line per file in the server's log; vLLM is then
given the snapshot folder, so it starts from local files.

Which files, as vLLM's default loader takes them: the `*.safetensors` weights (only those the
`*.safetensors.index.json` names, where there is one), else `*.bin`, else `*.pt`; and the small files beside
them (configs, tokenizer). Offline, or when the hub does not answer, a snapshot already in the cache is used
as it is; without one, vLLM gets the hub id as before.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Callable

from servers.profiles import HUB_ID, ModelProfile

SMALL = ("*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenizer*")
TIMEOUT_S = 30.0  # per hub request, before a file's bytes flow


def weight_files(sizes: dict[str, int], index: dict | None = None) -> list[str]:
    """The files vLLM loads from a repository listing (name -> size): small files first, then the weights."""
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        weights = sorted(n for n in sizes if fnmatch.fnmatch(n, pattern))
        if weights:
            break
    if weights and index is not None and pattern == "*.safetensors":
        named = set(index.get("weight_map", {}).values()) if isinstance(index.get("weight_map"), dict) else set()
        weights = [n for n in weights if n in named] or weights
    small = sorted(n for n in sizes if any(fnmatch.fnmatch(n, p) for p in SMALL) and n not in weights)
    return small + weights


def ensure_weights(profile: ModelProfile, log: Path, say: Callable[[str], None] | None = None) -> str:
    """What vLLM should load for `profile`: a local folder as it is; a hub model's snapshot folder once its
    files are all here (fetched now, each file's progress in `log`); the hub id where that cannot be done."""
    model = profile.model
    if Path(model).exists() or not HUB_ID.fullmatch(model):
        return model
    from evaluator.scoring.embeddings import _hub_cache, _hub_reachable, _offline

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        def note(line: str) -> None:
            out.write(f"weights: {line}\n")
            out.flush()

        unreachable = "HF_HUB_OFFLINE is set" if _offline() else _hub_reachable()
        if unreachable:
            cached = _cached_snapshot(model, profile.revision, _hub_cache())
            note(f"{model}: not fetched ({unreachable}); " + (f"using {cached}" if cached else "vLLM gets the id"))
            return cached or model
        try:
            return _fetch(profile, _hub_cache(), note, say)
        except Exception as exc:  # noqa: BLE001: gated, unknown, a 5xx, a full disk: vLLM tries, and says why
            note(f"{model}: not fetched ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}); "
                 "vLLM gets the id")
            return model


def _fetch(profile: ModelProfile, cache: Path, note: Callable[[str], None], say) -> str:
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    info = HfApi(endpoint=endpoint).model_info(profile.model, revision=profile.revision, files_metadata=True,
                                                timeout=TIMEOUT_S)
    sizes = {s.rfilename: max(0, s.size or 0) for s in info.siblings or [] if isinstance(s.rfilename, str)}

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(profile.model, name, revision=profile.revision, cache_dir=cache,
                                    endpoint=endpoint, etag_timeout=TIMEOUT_S))

    index_name = next((n for n in sorted(sizes) if n.endswith(".safetensors.index.json")), None)
    index = None
    if index_name is not None:
        try:
            index = json.loads(fetch(index_name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            index = None
    files = weight_files(sizes, index if isinstance(index, dict) else None)
    if not files:
        raise FileNotFoundError(f"the hub lists no weights for {profile.model}")
    total, done = sum(sizes[n] for n in files), 0
    note(f"{profile.model}@{info.sha}: {len(files)} files, {total / 1e9:.2f} GB, fetched before the start-up limit")
    if say is not None:
        say(f"{profile.name}: making sure its {total / 1e9:.1f} GB of weights are here before its server starts")
    snapshot = None
    for number, name in enumerate(files, 1):
        path = fetch(name)
        snapshot = path.parents[len(Path(name).parts) - 1]
        done += sizes[name]
        note(f"{number}/{len(files)} files, {done / 1e9:.2f}/{total / 1e9:.2f} GB ({name})")
    return str(snapshot)


def _cached_snapshot(model: str, revision: str | None, cache: Path) -> str | None:
    """The snapshot folder of `model` (at `revision`) already in the cache, if it holds weights."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception:  # noqa: BLE001: not cached, or no huggingface_hub
        return None
    has_weights = any(folder.glob(p) for p in ("*.safetensors", "*.bin", "*.pt"))
    return str(folder) if has_weights else None
