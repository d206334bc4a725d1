"""A suite's dry run without a GPU: each local model's rough hours on vLLM-CPU, a warning for those a night
(10 h) cannot hold, and the "No GPU" lines only where the suite has local models."""

from __future__ import annotations

import re

from servers.planner import CPU_STARTUP_S, NIGHT_S, estimated_cpu_s
from servers.profiles import ModelProfile
from tests.builders import run_cli, write_jsonl


def generation_rows(n: int) -> list[dict]:
    return [{"input_field": f"Describe item {i}.", "output_field": "a thing", "task_name": "describe",
             "task_type": "generation", "metric": "rougel"} for i in range(n)]


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_local_models_get_cpu_hours_and_the_ones_past_a_night_are_named(tmp_path, capsys, monkeypatch):
    write_jsonl(tmp_path / "d.json", generation_rows(1000))
    (tmp_path / "s.toml").write_text(
        '[suite]\ndata = "d.json"\n[models]\n'
        'small = { model = "/models/small", params_b = 7 }\n'
        'big = { model = "/models/big", params_b = 70 }\n'
        'unsized = { model = "/models/unsized" }\n'
        'far = { provider = "openai-compatible", model = "far", api_base = "http://10.0.0.2:8000/v1" }\n',
        encoding="utf-8")
    code, out, err = run_cli(["suite", tmp_path / "s.toml", "--dry-run", "--gpus", "0"], capsys, monkeypatch)
    assert code == 0, err
    text = flat(out)
    rows = {line.split()[1]: line for line in out.splitlines() if line.strip().startswith("- ")}
    small, big = (float(re.search(r"CPU ~([\d.,]+)h", rows[n]).group(1)) for n in ("small", "big"))
    assert 9 < (big * 3600 - CPU_STARTUP_S) / (small * 3600 - CPU_STARTUP_S) < 11  # 10x the parameters
    assert small < NIGHT_S / 3600 < big
    assert "CPU ?" in rows["unsized"] and "CPU" not in rows["far"]
    assert "No GPU: the 3 local model(s) run one after another on vLLM-CPU" in text
    assert "(1 of unknown size: unsized)" in text and "rough estimate" in text
    warning = text[text.index("warning:"):]
    assert "1 model(s) take more than a night (10 h) alone: big ~" in warning and "small" not in warning
    assert "one after another, 1 of 2 end past 10 h (from big on)" in warning


def test_no_gpu_line_only_for_a_suite_with_local_models(tmp_path, capsys, monkeypatch):
    write_jsonl(tmp_path / "d.json", generation_rows(3))
    (tmp_path / "s.toml").write_text(
        '[suite]\ndata = "d.json"\n[models]\n'
        'far = { provider = "openai-compatible", model = "far", api_base = "http://10.0.0.2:8000/v1" }\n',
        encoding="utf-8")
    code, out, err = run_cli(["suite", tmp_path / "s.toml", "--dry-run", "--gpus", "0"], capsys, monkeypatch)
    assert code == 0, err
    assert "no GPU" not in out and "No GPU" not in out and "vLLM-CPU" not in out and "warning" not in out
    assert flat(out).startswith("Suite 's': 1 models, skill-wise, 3 requests each; data ")


def test_the_estimate_reproduces_the_measured_small_model(kdd_dev, tmp_path):
    """Calibrated on SmolLM2-135M: its own estimate on the 96 development questions is the measured fan-out
    (9.13 s at 64 in flight, benchmarks/RESULTS.md) to within 10%."""
    from evaluator.reports.suite import CHARS_PER_TOKEN
    from evaluator.runs.suite import request_estimates
    from servers.suite import load_suite

    (tmp_path / "s.toml").write_text(f'[suite]\ndata = "{kdd_dev}"\n[models]\ndemo = {{}}\n', encoding="utf-8")
    suite = load_suite(tmp_path / "s.toml")
    _, tokens_in, tokens_out = request_estimates(suite, CHARS_PER_TOKEN)["demo"]
    profile = ModelProfile(name="smol", model="/m", params_b=0.135, dtype="bfloat16")
    answering = estimated_cpu_s(profile, tokens_in, tokens_out) - CPU_STARTUP_S - 0.5 * 0.135 * 2
    assert 0.9 * 9.13 < answering < 1.1 * 9.13
