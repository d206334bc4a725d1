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
    "Qwen/Qwen1.5-0.5B-Chat" = {}                     # a Hugging Face id: the built-in profile serving it,
                                                      # else a local vLLM model of that id (size and shape
                                                      # from the hub: its file listing and config.json)
    far-70b = { provider = "openai-compatible", model = "far-70b", api_base = "http://node2:8000/v1" }
    far-70b-3shot = { provider = "openai-compatible", model = "far-70b", api_base = "...", shots = 3 }

    [ray]                                  # optional: for `suite --ray`
    vllm_python = "/opt/vllm/bin/python"   # the Python that has vLLM on the cluster's nodes (default: the
                                           # driver's $SHOPPING_MMLU_VLLM_PYTHON, else each node's own)

`shots`, `shot_seed`, `shot_pool` and `choice_probs` in a model's entry override the suite's for that model.
An entry named like a built-in profile overrides only what it states; the dry run lists, per model, the
settings it takes from the built-in profile without stating them. `description` in [suite] is the line
`suite --list` shows; `suite NAME` finds a built-in suite (servers/suites/) where no file NAME exists.

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
from servers.profiles import (ModelProfile, is_hub_id, load_profiles, profile_for_hub_id, read_toml,
                              validation_message)


class SuiteHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=300)  # one line, for `suite --list`
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
    # By model name: the settings taken from a built-in profile without being stated (`inherited_settings`),
    # and the key a model was written as where that was a hub id served by a built-in profile of another name.
    inherited: dict[str, dict] = field(default_factory=dict)
    written_as: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, str] = field(default_factory=dict)  # where a hub model's size came from (servers/hub_models)
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


def _table(raw: dict, name: str, model, path: Path, explain):
    """The suite's table `name` checked by `model`; a bad key is one line (`explain` words its message)."""
    if not isinstance(raw.get(name, {}), dict):
        raise InputError(f"expected a [{name}] table", path=path, field=name)
    try:
        return model(**raw.get(name, {}))
    except ValidationError as exc:
        message, key = validation_message(exc)
        raise InputError(explain(key, message), path=path, field=f"{name}.{key}") from None


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    raw = read_toml(path)
    unknown = set(raw) - {"suite", "models", "ray"}
    if unknown:
        raise InputError("unknown top-level table (a suite has [suite], [models] and optionally [ray])",
                         path=path, field=sorted(unknown)[0])
    ray_settings = _table(raw, "ray", RaySettings, path, lambda key, message: (
        "an absolute path on the cluster's nodes, such as /opt/vllm/bin/python"
        if key == "vllm_python" and "pattern" in message else message))
    head = _table(raw, "suite", SuiteHead, path, lambda key, message: (
        "missing field" if key == "data" and "missing" in message.lower() else message))
    if head.protocol == "skill" and (head.letter_choices or head.task_specific_prompt):
        raise InputError("letter_choices and task_specific_prompt are options of the task-wise protocol",
                         path=path, field="suite.protocol")
    data = beside(path, head.data)
    suite_shots = {"shots": head.shots, "shot_seed": head.shot_seed, "shot_pool": _pool(path, head.shot_pool, "suite"),
                   "choice_probs": head.choice_probs}
    _check_shots(suite_shots, path, "suite")
    model_shots: dict[str, dict] = {}
    profiles = load_profiles()
    models: list[ModelProfile] = []
    inherited: dict[str, dict] = {}
    written_as: dict[str, str] = {}
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
        builtin = name if name in profiles else None
        if builtin is None and is_hub_id(name) and not {"model", "provider", "source"} & set(entry):
            builtin = profile_for_hub_id(name, profiles)
        try:
            if builtin is not None:
                profile = ModelProfile(**{**profiles[builtin].model_dump(), **entry, "name": builtin})
                inherited[builtin] = inherited_settings(profiles[builtin], entry)
            else:  # an inline profile; a hub id that no profile serves is a local vLLM model of that id
                profile = ModelProfile(name=name, **{**({"model": name} if is_hub_id(name) else {}), **entry})
        except ValidationError as exc:
            message, field = validation_message(exc)
            raise InputError(message, path=path, field=f"models.{name}.{field}") from None
        except TypeError as exc:  # e.g. `name` given twice
            raise InputError(str(exc), path=path, field=f"models.{name}") from None
        if any(m.name == profile.name for m in models):
            raise InputError(f"the same model as an entry before it (the built-in profile '{profile.name}')",
                             path=path, field=f"models.{name}")
        if profile.name != name:
            written_as[profile.name] = name
            if name in model_shots:
                model_shots[profile.name] = model_shots.pop(name)
        models.append(profile)
    if not models:
        raise InputError("the suite names no models", path=path, field="models")
    return Suite(name=head.name or path.stem, data=data, protocol=head.protocol, render=head.render,
                 concurrency=head.concurrency, models=models, inherited=inherited, written_as=written_as,
                 letter_choices=head.letter_choices,
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


# What a dry run shows of a built-in profile's settings an entry did not state: how the model is asked
# (rendering, reasoning and its budget, rate limits, batching, context, serving), and where the entry
# overrides anything, which model and endpoint it still reaches.
ASKED = ("rendering", "reasoning", "reasoning_effort", "reasoning_budget", "requests_per_minute", "concurrency",
         "batch", "number_only", "max_model_len", "dtype", "revision", "tensor_parallel_size",
         "pipeline_parallel_size", "gpu_memory_utilization", "extra_args", "replicas")
REACHED = ("provider", "model", "api_base", "api_key_env")


def inherited_settings(builtin: ModelProfile, entry: dict) -> dict:
    """The settings an entry takes from the built-in profile of its name without stating them (those that
    differ from a new profile's defaults), so the dry run can show them."""
    keys = ASKED + (REACHED if entry else ())
    fields = ModelProfile.model_fields
    return {k: getattr(builtin, k) for k in keys if k not in entry and getattr(builtin, k) != fields[k].default}


def builtin_suites() -> dict[str, Path]:
    """The suites shipped in servers/suites/, by name (the file's stem)."""
    from importlib import resources

    folder = Path(str(resources.files("servers") / "suites"))
    return {p.stem: p for p in sorted(folder.glob("*.toml"), key=lambda p: p.stem)}


def find_suite(given: str) -> Path:
    """A suite file as typed (`~` expanded, relative to the working folder), else (a bare name, no such file
    here) the built-in suite of that name."""
    path = Path(given).expanduser().absolute()
    if path.exists() or "/" in given or given.startswith("~"):
        return path
    builtin = builtin_suites()
    found = builtin.get(path.stem if path.suffix == ".toml" else given)
    if found is None:
        raise InputError(f"no such suite file, nor a built-in suite of that name (built-in: {', '.join(builtin)}; "
                         "`shopping-mmlu suite --list`)", path=path)
    return found


def describe_suites() -> list[tuple[str, str]]:
    """(name, its one-line description) of each built-in suite."""
    out = []
    for name, path in builtin_suites().items():
        head = read_toml(path).get("suite", {})
        text = head.get("description") if isinstance(head, dict) else None
        out.append((name, text if isinstance(text, str) else ""))
    return out
