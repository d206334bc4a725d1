"""A suite: the models of one overnight run, with their data, protocol and rendering, from a TOML file.

    [suite]
    name = "paper"
    data = "../../data/shopping_mmlu"      # relative to this file, or absolute
    protocol = "skill"                     # or "task"
    render = "completion"                  # optional: overrides the models' own rendering (not a chat-only
                                           # API's: OpenAI and Anthropic models keep chat)
    concurrency = 64
    letter_choices = false                 # task-wise only: (A)-(D) choices
    task_specific_prompt = false           # task-wise only: the task-specific system prompt
    embedding_model = "..."                # optional: hub name or local folder for sent-transformer rows
    multilingual_model = "/models/paraphrase-multilingual-MiniLM-L12-v2"

    [models]
    llama2-7b = {}                                    # a profile, as it is
    gpt-4o = { requests_per_minute = 300 }            # a profile with overrides
    my-7b = { model = "/models/my-7b", params_b = 7 } # inline: any profile field
    far-70b = { provider = "openai-compatible", model = "far-70b", api_base = "http://node2:8000/v1" }

Every key is checked like a profile's: an unknown or misspelt key, or a value of the wrong type, is one line
naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluator.errors import InputError
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

    def rendering_for(self, profile: ModelProfile) -> str:
        """The suite's rendering where it sets one, except that OpenAI and Anthropic models stay chat: their
        APIs have no /v1/completions for them."""
        if self.render and not (self.render == "completion" and profile.provider in ("openai", "anthropic")):
            return self.render
        return profile.rendering


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    raw = read_toml(path)
    unknown = set(raw) - {"suite", "models"}
    if unknown:
        raise InputError("unknown top-level table (a suite has [suite] and [models])", path=path,
                         field=sorted(unknown)[0])
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
    data = Path(head.data)
    data = data if data.is_absolute() else (path.parent / data).resolve()
    profiles = load_profiles()
    models = []
    entries = raw.get("models", {})
    if not isinstance(entries, dict):
        raise InputError("expected a [models] table", path=path, field="models")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise InputError("expected a table of profile fields ({} for a profile as it is)", path=path,
                             field=f"models.{name}")
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
                 task_specific_prompt=head.task_specific_prompt, embedding_model=head.embedding_model,
                 multilingual_model=head.multilingual_model)
