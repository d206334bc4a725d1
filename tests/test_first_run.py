"""The first run as fast as the second: the scoring's one-time costs are paid at install (`shopping-mmlu
warm`: the embedding model's ONNX graph, into the user's cache, found from any --cache) or while the requests
are in flight (`embeddings.prepare`), never after the last answer; a warm cache loads nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from benchmarks.stubs.openai_stub import Stub, answer_for
from evaluator.scoring import embeddings, onnx_encoder
from tests.builders import run_cli, write_jsonl
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not onnx_encoder.available(), reason="the onnx extra is not installed")

ROWS = [
    {"input_field": "Describe a mug.", "output_field": "a cup for coffee", "task_name": "describe",
     "task_type": "generation", "metric": "sent-transformer"},
    {"input_field": "Describe a towel.", "output_field": "a cloth that dries", "task_name": "describe",
     "task_type": "generation", "metric": "sent-transformer"},
    {"input_field": "Pick one\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": 1, "task_name": "pick",
     "task_type": "multiple-choice", "metric": "accuracy"},
]


@pytest.fixture(scope="module")
def user_cache(tmp_path_factory):
    """The user's cache after `make install`'s `shopping-mmlu warm`."""
    folder = tmp_path_factory.mktemp("user-cache")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOPPING_MMLU_CACHE": str(folder), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "evaluator", "warm"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ONNX graph of sentence-transformers/all-MiniLM-L6-v2" in done.stderr
    return folder


def test_warm_exports_the_graph_once_and_a_run_with_another_cache_finds_it(user_cache, tmp_path, monkeypatch):
    graphs = list(user_cache.glob("onnx/*/model.onnx"))
    assert len(graphs) == 1 and graphs[0].stat().st_size > 1_000_000
    monkeypatch.setenv("SHOPPING_MMLU_CACHE", str(user_cache))
    folder = embeddings._local_folder(embeddings.ENGLISH_MODEL)
    exported = []
    monkeypatch.setattr(onnx_encoder, "_export", lambda *args: exported.append(args))
    encoder = onnx_encoder.OnnxEncoder(folder, tmp_path / "other-cache")
    assert encoder.graph == graphs[0] and not exported and not (tmp_path / "other-cache").exists()
    assert encoder.encode(["a mug"]).shape == (1, 384)


def test_a_first_run_loads_its_scoring_model_while_its_requests_are_in_flight(user_cache, tmp_path, capsys,
                                                                              monkeypatch):
    """The stub answers only once the embedding model is loaded: a run that loaded it after its last answer
    (as before) would never get one (the guard below fails it instead of hanging)."""
    monkeypatch.setenv("SHOPPING_MMLU_CACHE", str(user_cache))
    monkeypatch.setattr(embeddings, "_models", {})
    loaded = threading.Event()

    def answer(body: dict) -> str:
        deadline = time.monotonic() + 300  # a hang guard, not a speed bound
        while not any(key[0] == embeddings.ENGLISH_MODEL for key in embeddings._models):
            if time.monotonic() > deadline:
                return "the model was not loaded during the fan-out"
            time.sleep(0.05)
        loaded.set()
        return answer_for(body)

    data = write_jsonl(tmp_path / "d.json", ROWS)
    with Stub(answers=answer) as stub:
        code, out, err = run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache",
                                  tmp_path / "cache", "--concurrency", "4"], capsys, monkeypatch)
    assert code == 0, out + err
    assert loaded.is_set() and "complete: 3/3 answered" in out
    assert not (tmp_path / "cache" / "onnx").exists()  # the install's graph, not a new export


def test_a_warm_cache_loads_nothing_in_the_background(user_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPPING_MMLU_CACHE", str(user_cache))
    monkeypatch.setattr(embeddings, "_models", {})
    from evaluator.data import loaders

    questions = loaders.load(write_jsonl(tmp_path / "d.json", ROWS)).questions
    config = embeddings.EmbeddingConfig(cache_dir=tmp_path / "cache")
    embedder = embeddings.Embedder(config)
    embedder.vectors(questions[0].metric, [q.truth for q in questions[:2]])  # the references, as a run stores them
    embedder.close()
    monkeypatch.setattr(embeddings, "_models", {})
    embeddings.prepare(config, questions).join(300)
    assert embeddings._models == {}
    embeddings.prepare(embeddings.EmbeddingConfig(cache_dir=tmp_path / "fresh"), questions).join(300)
    assert [key[0] for key in embeddings._models] == [embeddings.ENGLISH_MODEL]


def test_the_encoder_loads_from_the_installed_graph_without_transformers_or_torch(user_cache):
    """Importing transformers took 4-29 s of a cold run here; the tokenizer is read by `tokenizers` alone."""
    probe = ("import sys\nfrom evaluator.scoring import embeddings\n"
             "model = embeddings.shared_model(embeddings.ENGLISH_MODEL)\nprint(model.encode(['a mug']).shape)\n"
             "print('LOADED', sorted(m for m in ('transformers', 'torch', 'sentence_transformers')\n"
             "                      if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOPPING_MMLU_CACHE": str(user_cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert "(1, 384)" in done.stdout and "LOADED []" in done.stdout, done.stdout + done.stderr[-2000:]


def test_warm_never_fails_an_install(tmp_path, monkeypatch):
    def unavailable(*_):
        raise RuntimeError("not a local folder, and HF_HUB_OFFLINE is set")

    monkeypatch.setattr(embeddings, "_load_model", unavailable)
    assert embeddings.warm(tmp_path).startswith("nothing warmed: sentence-transformers/all-MiniLM-L6-v2 cannot be "
                                                "loaded here (not a local folder")
