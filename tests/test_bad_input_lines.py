"""Bad input is one line and exit code 2, never a traceback, a silent empty answer or a huge allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np

from benchmarks.stubs.openai_stub import Stub
from builders import old_cache, run_cli, write_jsonl
from evaluator.reports.compare import _bootstrap


def data_file(path, n: int = 6):
    return write_jsonl(path, [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": "t",
                               "task_type": "multiple-choice", "metric": "accuracy"} for i in range(n)])


def test_an_old_cache_is_updated_by_reading_commands_too(tmp_path, capsys, monkeypatch):
    old_cache(tmp_path / "c" / "responses")
    code, out, err = run_cli(["report", "--cache", tmp_path / "c", "--format", "json"], capsys, monkeypatch)
    assert code == 0 and '"old"' in out and "Traceback" not in err, err


def test_deep_nesting_in_a_suite_or_profiles_file_is_one_line(tmp_path, capsys, monkeypatch):
    nested = tmp_path / "deep.toml"
    nested.write_text("x = " + "[" * 1000 + "]" * 1000 + "\n", encoding="utf-8")
    code, _, err = run_cli(["suite", nested, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and "nested" in err
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(nested))
    code, _, err = run_cli(["models"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err


def test_a_suite_name_with_brackets_is_kept_in_the_log(tmp_path, capsys, monkeypatch):
    data = data_file(tmp_path / "d.json")
    with Stub() as stub:
        suite = tmp_path / "s.toml"
        suite.write_text(f'[suite]\nname = "nightly [v2] [bold]x"\ndata = "{data}"\n[models]\nm = {{ provider = '
                         f'"openai-compatible", model = "m", api_base = "{stub.base_url}" }}\n', encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", tmp_path / "c", "--output", tmp_path / "night"],
                                 capsys, monkeypatch)
    assert code == 0, out + err
    log = (tmp_path / "night" / "latest" / "suite.log").read_text()
    assert "Suite 'nightly [v2] [bold]x'" in log


def test_the_bootstrap_keeps_memory_bounded_on_a_large_task():
    n, samples = 5000, 20000  # all at once: 800 MB of indices
    a = {"scores": np.random.default_rng(1).random(n), "counts": np.zeros((n, 3))}
    b = {"scores": np.random.default_rng(2).random(n), "counts": np.zeros((n, 3))}
    tracemalloc.start()
    try:
        boot_a, boot_b = _bootstrap(a, b, n, samples, False, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert boot_a.shape == boot_b.shape == (samples,)
    assert peak < 200 * 2**20, peak
    assert abs(boot_a.mean() - a["scores"].mean()) < 0.01


def test_html_to_a_folder_inspect_a_typo_and_compare_oddities_are_one_line(tmp_path, capsys, monkeypatch):
    data, cache = data_file(tmp_path / "d.json"), tmp_path / "c"
    with Stub() as stub:
        run_cli(["run", "--model", "a", "--base-url", stub.base_url, "--data", data, "--cache", cache], capsys,
                monkeypatch)
    code, _, _ = run_cli(["run", "--model", "dead", "--base-url", "http://127.0.0.1:9/v1", "--data", data,
                          "--cache", cache], capsys, monkeypatch)
    assert code == 1  # failed: saved with no answer
    folder = tmp_path / "out"
    folder.mkdir()
    code, _, err = run_cli(["report", "--cache", cache, "--html", folder], capsys, monkeypatch)
    assert code == 2 and list(folder.parent.glob(".out*")) == [] and list(folder.iterdir()) == []
    code, _, err = run_cli(["inspect", "--model", "typo", "--task", "t", "--data", data, "--cache", cache], capsys,
                           monkeypatch)
    assert code == 2 and "typo" in err
    code, _, err = run_cli(["compare", "a", "a", "--cache", cache], capsys, monkeypatch)
    assert code == 2 and "two different models" in err
    code, _, err = run_cli(["compare", "a", "dead", "--cache", cache], capsys, monkeypatch)
    assert code == 2 and "no question that both answered" in err
