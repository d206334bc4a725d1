"""A run's progress while it sends: replies per second over a moving window, the time left, and a rich
column drawn from the clock at each refresh; a run's bar and the suite's view both read them."""

from __future__ import annotations

import time
from typing import Callable

from rich.progress import ProgressColumn
from rich.text import Text



class Throughput:
    """Replies per second over the last `window_s` seconds, timed from the first reply in that window to the
    last: a server's start-up (or a pause between models) before the replies is never averaged in, so the
    rate is the fan-out's. Counted per second, so memory stays small at any rate. `amount` counts replies
    (1 each) or what they carry (tokens)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.seconds: list[list] = []  # [whole second, amount in it, time and amount of its first reply]
        self.last = 0.0

    def add(self, now: float | None = None, amount: int = 1) -> None:
        now = time.monotonic() if now is None else now
        if self.seconds and self.seconds[-1][0] == int(now):
            self.seconds[-1][1] += amount
        else:
            self.seconds.append([int(now), amount, now, amount])
        self.last = now
        while self.seconds[0][0] < now - self.window_s:
            self.seconds.pop(0)

    def rate(self, now: float | None = None) -> float | None:
        """Per second after the window's first reply; None until replies are a moment apart. With `now` (the
        clock when shown) the span runs to now, so a stalled fan-out's rate falls instead of standing still."""
        end = self.last if now is None else max(now, self.last)
        if not self.seconds or self.last - self.seconds[0][2] < 0.05:
            return None
        return (sum(s[1] for s in self.seconds) - self.seconds[0][3]) / (end - self.seconds[0][2])


STALL_S = 30.0  # no reply for this long: the time left says so instead of a guess


def clock_left(left: int, throughput: Throughput, now: float) -> str:
    """The time left as the clock sees it now, not as the last reply left it: a stall is named."""
    quiet = now - throughput.last if throughput.seconds else 0.0
    text = time_left(left, throughput.rate(now))
    return f"{text} (no reply for {quiet:.0f} s)" if left > 0 and quiet >= STALL_S else text


class LiveText(ProgressColumn):
    """A column drawn from the clock at each refresh, not from the last update."""

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self.text = text

    def render(self, task) -> Text:
        return Text(self.text())


def time_left(left: int, rate: float | None) -> str:
    """How long `left` replies take at `rate`: '~40 s left', '~12 min left', '~2 h 05 min left'; 'all done';
    'time left unknown yet' before the replies give a rate."""
    if left <= 0:
        return "all done"
    if not rate:
        return "time left unknown yet"
    seconds = left / rate
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s left"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min left"
    return f"~{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min left"
