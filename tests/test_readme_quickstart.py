"""The README's "Your own night", followed literally from a folder of one's own: its suite file (the two
endpoint models, with the stub's address for theirs) and its commands, as typed. Only the download's source
is local (`--from`: nothing here reaches the official repository); the command is otherwise the README's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.stubs.openai_stub import Stub
from tests.builders import write_official_layout
from tests.conftest import ROOT


def night_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.split(r"(?m)^## ", text.split("\n## Your own night", 1)[1], maxsplit=1)[0]


def typed(line: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    args = shlex.split(line.split("#", 1)[0])
    assert args[0] == "shopping-mmlu", line
    return subprocess.run([sys.executable, "-m", "evaluator", *args[1:]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_readme_quickstart_gives_a_night_of_two_endpoint_models(tmp_path):
    section = night_section()
    suite = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.strip().startswith("shopping-mmlu ")]
    assert [c.split()[1] for c in commands] == ["data", "suite", "suite"], commands
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("SHOPPING_MMLU_CACHE", None)
    env.pop("XDG_CACHE_HOME", None)

    archive = tmp_path / "data.zip"  # the official layout, zipped as data.zip is
    layout = write_official_layout(tmp_path / "official")
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(layout.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(layout).as_posix())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    done = typed(f"{commands[0]} --from {archive} --sha256 {digest}", work, env)
    assert done.returncode == 0, done.stderr
    assert (work / "data" / "shopping_mmlu" / "skills").is_dir()  # where the suite file says

    endpoints = set(re.findall(r'api_base = "([^"]+)"', re.sub(r"(?m)^#.*$", "", suite)))
    assert len(endpoints) == 2  # the README's two endpoints; the commented models are left commented
    with Stub() as stub:
        for url in endpoints:
            suite = suite.replace(url, stub.base_url)
        (work / "night.toml").write_text(suite, encoding="utf-8")
        names = re.findall(r"(?m)^([\w.-]+) = \{ provider", suite)
        assert len(names) == 2
        for command in commands[1:]:
            done = typed(command, work, env)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            assert "Traceback" not in done.stderr
    latest = work / "nights" / "latest"
    board = (latest / "leaderboard.md").read_text(encoding="utf-8")
    for name in names:
        assert name in board
        assert json.loads((latest / "models" / name / "results.json").read_text())["complete"] is True
    for name in ("report.html", "summary.json", "suite.log"):  # the morning's files the README names
        assert (latest / name).is_file(), name
    summary = json.loads((latest / "summary.json").read_text())
    assert not summary.get("failed")
    report = subprocess.run([sys.executable, "-m", "evaluator", "report"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0 and all(name in report.stdout for name in names), report.stderr
