"""A model its provider retired (`retired` in its profile): its cached answers are still re-scored, and nothing
more is sent to it: a run that would need to send is one line, exit 2."""

from __future__ import annotations

from builders import run_cli, write_jsonl
from benchmarks.stubs.openai_stub import Stub
from servers.profiles import get_profile


def rows(n: int) -> list[dict]:
    return [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": "t", "task_type": "multiple-choice",
             "metric": "accuracy"} for i in range(n)]


def test_a_retired_model_is_rescored_from_its_cache_and_never_sent_to(tmp_path, capsys, monkeypatch):
    assert get_profile("claude-sonnet").retired == "2026-11-30"  # claude-sonnet-4-5's end of life
    code, out, _ = run_cli(["models"], capsys, monkeypatch)
    assert code == 0 and "retired 2026-11-30: re-scoring only" in out
    profiles, cache = tmp_path / "profiles.toml", tmp_path / "cache"
    monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(profiles))
    with Stub() as stub:
        def profile(retired: str) -> None:
            profiles.write_text(f'[models.old-api]\nprovider = "openai-compatible"\nmodel = "old-api"\n'
                                f'api_base = "{stub.base_url}"\nrendering = "chat"\n{retired}\n', encoding="utf-8")

        six, eight = write_jsonl(tmp_path / "six.json", rows(6)), write_jsonl(tmp_path / "eight.json", rows(8))
        profile("retired = 2999-01-01")  # not yet
        code, _, err = run_cli(["run", "--model", "old-api", "--data", six, "--cache", cache], capsys, monkeypatch)
        assert code == 0 and sum(stub.seen.values()) == 6, err
        profile("retired = 2026-11-30")
        code, printed, err = run_cli(["run", "--model", "old-api", "--data", six, "--cache", cache], capsys,
                                     monkeypatch)
        assert code == 0 and "nothing to send" in printed, err  # re-scored from the cache
        code, _, err = run_cli(["rescore", "--model", "old-api", "--data", six, "--cache", cache], capsys,
                               monkeypatch)
        assert code == 0, err
        code, _, err = run_cli(["run", "--model", "old-api", "--data", eight, "--cache", cache], capsys,
                               monkeypatch)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "retired by its provider on 2026-11-30" in err and "2 missing" in err
        assert sum(stub.seen.values()) == 6  # nothing more was sent
