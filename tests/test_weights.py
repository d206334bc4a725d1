"""A hub model's weights are fetched before its server's start-up limit runs (servers/weights.py), against the
loopback hub stub: the files vLLM's loader takes and no others, progress in the server's log, and the server
given the snapshot folder; offline, a snapshot already in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.stubs.hub_stub import HubStub
from evaluator.runs import sending
from servers.profiles import ModelProfile

REPO = "org/tiny-7b"
INDEX = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                        "b.weight": "model-00002-of-00002.safetensors"}}
FILES = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}",
         "model.safetensors.index.json": json.dumps(INDEX).encode(),
         "model-00001-of-00002.safetensors": b"1" * 3000, "model-00002-of-00002.safetensors": b"2" * 2000,
         "consolidated.safetensors": b"c" * 5000, "pytorch_model.bin": b"b" * 5000}
WANTED = {"config.json", "tokenizer.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors"}


class Started(Exception):
    pass


class FakeServer:
    """vLLM's place: records what it was given to load and what its log held when it started."""

    seen: dict = {}

    def __init__(self, profile, weights, log, **_) -> None:
        self.weights, self.log = weights, log

    def resolved_device(self) -> str:
        return "cpu"

    def dtype(self) -> str:
        return "float32"

    def __enter__(self):
        FakeServer.seen = {"weights": self.weights, "log": self.log.read_text(encoding="utf-8")}
        raise Started


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from evaluator.scoring.embeddings import _hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, when first imported
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(sending, "VLLMServer", FakeServer)
    _hub_reachable.cache_clear()
    yield tmp_path / "hf" / "hub"
    _hub_reachable.cache_clear()


def test_the_weights_are_here_before_the_server_starts_and_only_those_vllm_loads(tmp_path, monkeypatch, hub_home):
    profile = ModelProfile(name="tiny-7b", model=REPO, params_b=7)
    with HubStub({REPO: FILES}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(Started):
            sending.start_server(profile, tmp_path / "cache", Console(quiet=True))
        folder = FakeServer.seen["weights"]
        assert folder != REPO
        assert {p.name for p in (hub_home / "models--org--tiny-7b").glob("snapshots/*/*")} == WANTED
        assert {p.name for p in Path(folder).iterdir()} == WANTED  # what vLLM is given
        assert not any(path.endswith(("consolidated.safetensors", ".bin")) for path in hub.requests)
        log = FakeServer.seen["log"]  # as the server started: the download was done and said so
        assert "5 files, 0.00 GB, fetched before the start-up limit" in log
        assert "5/5 files" in log and "(model-00002-of-00002.safetensors)" in log

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: the snapshot already here is used
    with pytest.raises(Started):
        sending.start_server(profile, tmp_path / "cache", Console(quiet=True))
    assert FakeServer.seen["weights"] == folder and "HF_HUB_OFFLINE is set" in FakeServer.seen["log"]
    elsewhere = profile.model_copy(update={"model": "org/never-fetched"})
    with pytest.raises(Started):
        sending.start_server(elsewhere, tmp_path / "cache", Console(quiet=True))
    assert FakeServer.seen["weights"] == "org/never-fetched"  # nothing here: vLLM gets the id, as before
