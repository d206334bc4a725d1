"""Look at a report the way a user does: a real headless Chromium renders it (scripts run) to a PNG, or to
the DOM it ended with. Debian's `chromium` package; nothing is fetched from the network.

    python -m evaluator.reports.screenshot report.html report.png [--size 1280x800]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from evaluator.errors import InputError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(page: Path, extra: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    browser = chromium()
    if browser is None:
        raise InputError("no Chromium on this machine (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="shopping-mmlu-chromium-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *extra,
                               Path(page).resolve().as_uri()], capture_output=True, text=True, timeout=timeout_s)


def screenshot(page: Path, png: Path, size: str = "1280x800", timeout_s: float = 120.0) -> Path:
    width, height = size.lower().split("x")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(page, [f"--screenshot={png}", f"--window-size={int(width)},{int(height)}",
                "--virtual-time-budget=5000"], timeout_s)
    if not png.is_file():
        raise InputError("Chromium wrote no screenshot", path=png)
    return png


def rendered_dom(page: Path, timeout_s: float = 120.0) -> str:
    """The page's DOM after its scripts ran."""
    return _run(page, ["--dump-dom", "--virtual-time-budget=5000"], timeout_s).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--size", default="1280x800")
    args = parser.parse_args()
    print(screenshot(args.page, args.png, args.size))


if __name__ == "__main__":
    main()
