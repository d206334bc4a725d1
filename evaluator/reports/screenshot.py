"""Look at a report the way a user does: a real headless Chromium renders it (scripts run) to a PNG, to the
DOM it ended with, or measures it: what a window of a given size cannot show without scrolling. Scrollbars
are drawn, as a user sees them (a scrollbar is a finding). Debian's `chromium` package; nothing is fetched
from the network.

    python -m evaluator.reports.screenshot report.html report.png [--size 1280x800] [--fragment model=NAME]
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from evaluator.errors import InputError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT = "shopping-mmlu-measured"

# What a window cannot show without scrolling: the page wider than the window, boxes that scroll sideways
# (their last columns hidden behind a scrollbar), elements that spill out of their section over another, and
# boxes that scroll up and down inside the scrolling page (`inner`: a second scrollbar to find things behind).
OVERFLOW = r"""
const tag = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
  (typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim().split(/\s+/).join('.') : '');
const out = {width: win.innerWidth, height: win.innerHeight, page_width: doc.documentElement.scrollWidth,
             client_width: doc.documentElement.clientWidth, sideways: [], spills: [], inner: []};
for (const el of doc.body.querySelectorAll('*')) {
  const style = win.getComputedStyle(el);
  if (['auto', 'scroll'].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1)
    out.sideways.push({element: tag(el), scroll_width: el.scrollWidth, client_width: el.clientWidth});
  if (['auto', 'scroll'].includes(style.overflowY) && el.scrollHeight > el.clientHeight + 1)
    out.inner.push({element: tag(el), scroll_height: el.scrollHeight, client_height: el.clientHeight});
}
for (const section of doc.querySelectorAll('section')) {
  const box = section.getBoundingClientRect();
  if (!box.width) continue;
  const over = [...section.querySelectorAll('*')].find(el => { const r = el.getBoundingClientRect();
    return r.width > 0 && (r.right > box.right + 1 || r.left < box.left - 1); });
  if (over) out.spills.push({section: tag(section), element: tag(over),
                             by_px: Math.round(over.getBoundingClientRect().right - box.right)});
}
return out;
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _url(page: Path, fragment: str = "") -> str:
    if not Path(page).is_file():
        raise InputError("no such page", path=page)
    return Path(page).resolve().as_uri() + (f"#{quote(fragment, safe='=')}" if fragment else "")


def _run(url: str, extra: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    browser = chromium()
    if browser is None:
        raise InputError("no Chromium on this machine (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="shopping-mmlu-chromium-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout_s)


def _size(size: str) -> tuple[int, int]:
    width, height = size.lower().split("x")
    return int(width), int(height)


def screenshot(page: Path, png: Path, size: str = "1280x800", timeout_s: float = 120.0,
               fragment: str = "") -> Path:
    width, height = _size(size)
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(_url(page, fragment), [f"--screenshot={png}", f"--window-size={width},{height}",
                                "--virtual-time-budget=5000"], timeout_s)
    if not png.is_file():
        raise InputError("Chromium wrote no screenshot", path=png)
    return png


def rendered_dom(page: Path, timeout_s: float = 120.0) -> str:
    """The page's DOM after its scripts ran."""
    return _run(_url(page), ["--dump-dom", "--virtual-time-budget=5000"], timeout_s).stdout


def measure(page: Path, script: str, size: str = "1280x800", fragment: str = "", timeout_s: float = 120.0):
    """The JSON value `script` (a function body over `win` and `doc`) returns once the page's scripts ran.

    The page is opened in a frame of exactly `size`, because a headless window's viewport is smaller than
    its --window-size until a screenshot resizes it; in the frame it lays out as a user's window does."""
    width, height = _size(size)
    with tempfile.TemporaryDirectory(prefix="shopping-mmlu-measure-") as folder:
        harness = Path(folder) / "measure.html"
        harness.write_text(
            f'<!DOCTYPE html><html><body style="margin:0"><iframe id="page" src="{html.escape(_url(page, fragment))}" '
            f'style="width:{width}px;height:{height}px;border:0"></iframe><pre id="{RESULT}"></pre><script>\n'
            "const frame = document.getElementById('page');\n"
            "frame.onload = () => setTimeout(() => { let value;\n"
            "  try { value = ((win, doc) => {" + script.replace("</", "<\\/") + "})(frame.contentWindow, "
            "frame.contentDocument); } catch (e) { value = {measure_error: String(e)}; }\n"
            f"  document.getElementById('{RESULT}').textContent = JSON.stringify(value); }}, 0);\n"
            "</script></body></html>", encoding="utf-8")
        dom = _run(harness.as_uri(), ["--dump-dom", "--allow-file-access-from-files",
                                      f"--window-size={width + 40},{height + 200}",
                                      "--virtual-time-budget=5000"], timeout_s).stdout
    marker = f'<pre id="{RESULT}">'
    start = dom.rfind(marker)
    if start < 0:
        raise InputError("Chromium measured nothing", path=page)
    value = json.loads(html.unescape(dom[start + len(marker): dom.index("</pre>", start)]) or "null")
    if isinstance(value, dict) and "measure_error" in value:
        raise InputError(f"the measuring script failed: {value['measure_error']}", path=page)
    return value


def overflow(page: Path, size: str = "1280x800", fragment: str = "") -> dict:
    """What a window of `size` cannot show without scrolling sideways: the page's width against the window's
    (less its scrollbar), boxes scrolling sideways, elements spilling out of their section, and boxes that
    scroll inside the page."""
    return measure(page, OVERFLOW, size, fragment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--size", default="1280x800")
    parser.add_argument("--fragment", default="", help="the address's fragment, e.g. model=NAME (NAME as is)")
    args = parser.parse_args()
    try:
        print(screenshot(args.page, args.png, args.size, fragment=args.fragment))
        found = overflow(args.page, args.size, args.fragment)
    except InputError as exc:
        sys.exit(f"error: {exc}")
    wide = found["page_width"] > found["client_width"]
    if wide or found["sideways"] or found["spills"] or found["inner"]:
        print(json.dumps(found, indent=2))
        sys.exit(1)
    print(f"fits {args.size}: nothing scrolls sideways, spills out of its section or scrolls inside the page")


if __name__ == "__main__":
    main()
