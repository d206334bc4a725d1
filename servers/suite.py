"""A suite: the models of one overnight run, with their data, protocol and rendering, from a TOML file.

    [suite]
    name = "paper"
    data = "../../data/shopping_mmlu"      # relative to this file, or absolute
    protocol = "skill"                     # or "task"
    render = "completion"                  # optional: overrides every model's own rendering
    concurrency = 64

    [models]
    llama2-7b = {}                                    # a profile, as it is
    gpt-4o = { requests_per_minute = 300 }            # a profile with overrides
    my-7b = { model = "/models/my-7b", params_b = 7 } # inline: any profile field
    far-70b = { provider = "openai-compatible", model = "far-70b", api_base = "http://node2:8000/v1" }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from evaluator.errors import InputError
from servers.profiles import ModelProfile, load_profiles


@dataclass(frozen=True)
class Suite:
    name: str
    data: Path
    protocol: str
    render: str | None
    concurrency: int
    models: list[ModelProfile]


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"malformed TOML: {exc}", path=path) from None
    head = raw.get("suite", {})
    if "data" not in head:
        raise InputError("missing field", path=path, field="suite.data")
    data = Path(head["data"])
    data = data if data.is_absolute() else (path.parent / data).resolve()
    protocol = head.get("protocol", "skill")
    if protocol not in ("skill", "task"):
        raise InputError(f"unknown protocol {protocol!r}", path=path, field="suite.protocol")
    render = head.get("render")
    if render not in (None, "completion", "chat"):
        raise InputError(f"unknown rendering {render!r}", path=path, field="suite.render")
    profiles = load_profiles()
    models = []
    for name, entry in raw.get("models", {}).items():
        if not isinstance(entry, dict):
            raise InputError("expected a table of profile fields ({} for a profile as it is)", path=path,
                             field=f"models.{name}")
        try:
            if name in profiles:
                models.append(profiles[name].model_copy(update=entry))
                ModelProfile(**models[-1].model_dump())  # validate the overrides
            else:
                models.append(ModelProfile(name=name, **entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InputError(f"{first['msg']}", path=path,
                             field=f"models.{name}.{'.'.join(map(str, first['loc']))}") from None
    if not models:
        raise InputError("the suite names no models", path=path, field="models")
    return Suite(name=head.get("name", path.stem), data=data, protocol=protocol, render=render,
                 concurrency=int(head.get("concurrency", 64)), models=models)
