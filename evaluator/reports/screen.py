"""What every screen shares: a console that leaves no trailing spaces, and names that fold at their own
boundaries ('/', '-', '_', a space) rather than mid-word, so `meta-llama/Llama-2-70b-chat-hf` reads back whole.

Light on purpose (rich only): the CLI imports it before any command runs.
"""

from __future__ import annotations

import re
from typing import Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.text import Text

BREAKS = (" /", " /_-")  # a name breaks at a space or '/' if it can, else at '-' or '_' too
STUB = 6  # a last line shorter than this is evened out with the one before
_PIECES = {breaks: re.compile(rf"[^{breaks}]*(?:[{breaks}]+|$)") for breaks in BREAKS}
_TRAILING = re.compile(r"((?:\x1b\[[0-9;]*m| )+)(?=\r?\n)")


def _drop_spaces(match: re.Match) -> str:
    return match.group(1).replace(" ", "")  # keep the style codes, drop the padding


class Screen(Console):
    """A Console whose every line ends at its last character: tables pad their cells and wrapped text keeps
    the space it broke at; both would leave trailing spaces in a terminal copy, a pipe or a log."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return _TRAILING.sub(_drop_spaces, super()._render_buffer(buffer))


def fold(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width`, broken after a space or '/' where that is enough, else after '-'
    or '_' too, packed greedily, but evened out where the last line would be a stub (`gpt-5.4-mini-` over
    `2026-03-17`, not a lone `17`); a piece with no boundary in it that is still too long is cut. Joined,
    the lines give `text` back, less the spaces a line ends at."""
    width = max(width, 1)
    return [line for paragraph in text.split("\n") for line in _fold_line(paragraph, width)]


def _pieces(text: str, breaks: str) -> list[str]:
    return [p for p in _PIECES[breaks].findall(text) if p]


def _fold_line(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    for breaks in BREAKS:
        pieces = _pieces(text, breaks)
        if max(len(p.rstrip()) for p in pieces) <= width:
            greedy = _pack(pieces, width)
            if len(greedy[-1]) >= STUB:
                return greedy
            return next(packed for w in range(max(len(p.rstrip()) for p in pieces), width + 1)
                        if len(packed := _pack(pieces, w)) == len(greedy))
    return _pack(_pieces(text, BREAKS[-1]), width)


def _pack(pieces: list[str], width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        while not line and len(piece.rstrip()) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    return lines + [line.rstrip()]


class Name:
    """A table cell that folds like `fold` (continuation lines under the first, after `indent` spaces), and
    tells the table it can shrink to its longest piece."""

    def __init__(self, text: str, style: str = "", indent: int = 0) -> None:
        self.text, self.style, self.indent = text, style, indent

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        pieces = [len(p.rstrip()) for p in _pieces(self.text.replace("\n", " "), BREAKS[-1]) if p.strip()]
        longest = max((len(line) for line in self.text.split("\n")), default=0)
        return Measurement(self.indent + min(max(pieces, default=1), 16), self.indent + longest)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        pad = " " * self.indent
        lines = fold(self.text, options.max_width - self.indent)
        yield Text("\n".join(pad + line for line in lines), style=self.style, no_wrap=True, overflow="crop")
