"""A suite: the models of one overnight run, with their data, protocol and rendering, from a TOML file.

    [suite]
    name = "paper"
    data = "../../data/shopping_mmlu"      # relative to this file, absolute, or from ~ (paths below alike)
    protocol = "skill"                     # or "task"
    render = "completion"                  # optional: overrides the models' own rendering (not a chat-only
                                           # API's: OpenAI and Anthropic models keep chat)
    concurrency = 64
    letter_choices = false                 # task-wise only: (A)-(D) choices
    task_specific_prompt = false           # task-wise only: the task-specific system prompt
    shots = 0                              # k-shot: solved examples of the same task before each question
    shot_seed = 0                          # which examples are drawn
    shot_pool = "../pool"                  # optional: draw them from this data (default: the suite's data)
    choice_probs = false                   # multiple choice also asks for the first token's log-probabilities
    embedding_model = "..."                # optional: hub name or local folder for sent-transformer rows
    multilingual_model = "/models/paraphrase-multilingual-MiniLM-L12-v2"

    [models]
    llama2-7b = {}                                    # a profile, as it is
    gpt-4o = { requests_per_minute = 300 }            # a profile with overrides
    my-7b = { model = "/models/my-7b", params_b = 7 } # inline: any profile field
    far-70b = { provider = "openai-compatible", model = "far-70b", api_base = "http://node2:8000/v1" }
    far-70b-3shot = { provider = "openai-compatible", model = "far-70b", api_base = "...", shots = 3 }

    [ray]                                  # optional: for `suite --ray`
    vllm_python = "/opt/vllm/bin/python"   # the Python that has vLLM on the cluster's nodes (default: the
                                           # driver's $SHOPPING_MMLU_VLLM_PYTHON, else each node's own)

`shots`, `shot_seed`, `shot_pool` and `choice_probs` in a model's entry override the suite's for that model.

Every key is checked like a profile's: an unknown or misspelt key, or a value of the wrong type, is one line
naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluator.errors import InputError
from evaluator.paths import beside
from servers.profiles import ModelProfile, load_profiles, read_toml, validation_message


class SuiteHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=200)
    data: str = Field(min_length=1)
    protocol: Literal["skill", "task"] = "skill"
    render: Literal["completion", "chat"] | None = None
    concurrency: int = Field(64, ge=1, le=4096)
    letter_choices: bool = False
    task_specific_prompt: bool = False
    embedding_model: str | None = None
    multilingual_model: str | None = None
    shots: int = Field(0, ge=0, le=64)
    shot_seed: int = Field(0, ge=0, lt=2**63)
    shot_pool: str | None = Field(None, min_length=1)
    choice_probs: bool = False


class ModelShots(BaseModel):
    """The k-shot (and choice-probability) keys a model's entry may set (the rest is profile fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shots: int | None = Field(None, ge=0, le=64)
    shot_seed: int | None = Field(None, ge=0, lt=2**63)
    shot_pool: str | None = Field(None, min_length=1)
    choice_probs: bool | None = None


SHOT_KEYS = tuple(ModelShots.model_fields)


class RaySettings(BaseModel):
    """The optional [ray] table: what the cluster's nodes need that the driver cannot lend them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm_python: str | None = Field(None, min_length=2, max_length=4096, pattern=r"^/[^\x00]*$")


@dataclass(frozen=True)
class Suite:
    name: str
    data: Path
    protocol: str
    render: str | None
    concurrency: int
    models: list[ModelProfile]
    letter_choices: bool = False
    task_specific_prompt: bool = False
    embedding_model: str | None = None
    multilingual_model: str | None = None
    shots: int = 0
    shot_seed: int = 0
    shot_pool: Path | None = None
    choice_probs: bool = False
    model_shots: dict[str, dict] = field(default_factory=dict)  # a model's own k-shot keys, by name
    vllm_python: str | None = None  # [ray] vllm_python: vLLM's Python on the cluster's nodes

    def shot_settings(self, profile: ModelProfile) -> dict:
        """shots, shot_seed, shot_pool and choice_probs (RunConfig's fields) for one model: its entry's, else
        the suite's."""
        return {"shots": self.shots, "shot_seed": self.shot_seed, "shot_pool": self.shot_pool,
                "choice_probs": self.choice_probs, **self.model_shots.get(profile.name, {})}

    def rendering_for(self, profile: ModelProfile) -> str:
        """The suite's rendering where it sets one, except that OpenAI and Anthropic models stay chat: their
        APIs have no /v1/completions for them."""
        if self.render and not (self.render == "completion" and profile.provider in ("openai", "anthropic")):
            return self.render
        return profile.rendering


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    raw = read_toml(path)
    unknown = set(raw) - {"suite", "models", "ray"}
    if unknown:
        raise InputError("unknown top-level table (a suite has [suite], [models] and optionally [ray])",
                         path=path, field=sorted(unknown)[0])
    if not isinstance(raw.get("ray", {}), dict):
        raise InputError("expected a [ray] table", path=path, field="ray")
    try:
        ray_settings = RaySettings(**raw.get("ray", {}))
    except ValidationError as exc:
        message, key = validation_message(exc)
        if key == "vllm_python" and "pattern" in message:
            message = "an absolute path on the cluster's nodes, such as /opt/vllm/bin/python"
        raise InputError(message, path=path, field=f"ray.{key}") from None
    if not isinstance(raw.get("suite", {}), dict):
        raise InputError("expected a [suite] table", path=path, field="suite")
    try:
        head = SuiteHead(**raw.get("suite", {}))
    except ValidationError as exc:
        message, field = validation_message(exc)
        if field == "data" and "missing" in message.lower():
            message = "missing field"
        raise InputError(message, path=path, field=f"suite.{field}") from None
    if head.protocol == "skill" and (head.letter_choices or head.task_specific_prompt):
        raise InputError("letter_choices and task_specific_prompt are options of the task-wise protocol",
                         path=path, field="suite.protocol")
    data = beside(path, head.data)
    suite_shots = {"shots": head.shots, "shot_seed": head.shot_seed, "shot_pool": _pool(path, head.shot_pool, "suite"),
                   "choice_probs": head.choice_probs}
    _check_shots(suite_shots, path, "suite")
    model_shots: dict[str, dict] = {}
    profiles = load_profiles()
    models = []
    entries = raw.get("models", {})
    if not isinstance(entries, dict):
        raise InputError("expected a [models] table", path=path, field="models")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise InputError("expected a table of profile fields ({} for a profile as it is)", path=path,
                             field=f"models.{name}")
        shot_keys = {k: entry[k] for k in SHOT_KEYS if k in entry}
        entry = {k: v for k, v in entry.items() if k not in SHOT_KEYS}
        if shot_keys:
            try:
                own = ModelShots(**shot_keys).model_dump(exclude_none=True)
            except ValidationError as exc:
                message, key = validation_message(exc)
                raise InputError(message, path=path, field=f"models.{name}.{key}") from None
            if "shot_pool" in own:
                own["shot_pool"] = _pool(path, own["shot_pool"], f"models.{name}")
            _check_shots({**suite_shots, **own}, path, f"models.{name}")
            model_shots[name] = own
        try:
            if name in profiles:
                models.append(ModelProfile(**{**profiles[name].model_dump(), **entry, "name": name}))
            else:
                models.append(ModelProfile(name=name, **entry))
        except ValidationError as exc:
            message, field = validation_message(exc)
            raise InputError(message, path=path, field=f"models.{name}.{field}") from None
        except TypeError as exc:  # e.g. `name` given twice
            raise InputError(str(exc), path=path, field=f"models.{name}") from None
    if not models:
        raise InputError("the suite names no models", path=path, field="models")
    return Suite(name=head.name or path.stem, data=data, protocol=head.protocol, render=head.render,
                 concurrency=head.concurrency, models=models, letter_choices=head.letter_choices,
                 task_specific_prompt=head.task_specific_prompt,
                 embedding_model=_local_or_hub(path, head.embedding_model),
                 multilingual_model=_local_or_hub(path, head.multilingual_model), model_shots=model_shots,
                 vllm_python=ray_settings.vllm_python, **suite_shots)


def _local_or_hub(suite_file: Path, name: str | None) -> str | None:
    """An embedding model: a folder beside the suite file (or from ~, or absolute) where it is one, else a
    hub name as written."""
    if name is None:
        return None
    local = beside(suite_file, name)
    return str(local) if name.startswith(("~", ".", "/")) or local.exists() else name


def _pool(suite_file: Path, pool: str | None, where: str) -> Path | None:
    """A shot pool's path (relative to the suite file); it must exist, so a night does not fail at its start."""
    if pool is None:
        return None
    found = beside(suite_file, pool)
    if not found.exists():
        raise InputError(f"no such shot pool: {found}", path=suite_file, field=f"{where}.shot_pool")
    return found


def _check_shots(settings: dict, suite_file: Path, where: str) -> None:
    if not settings["shots"] and (settings["shot_seed"] or settings["shot_pool"] is not None):
        raise InputError("shot_seed and shot_pool choose the examples of a k-shot prompt: set shots too",
                         path=suite_file, field=f"{where}.shots")
