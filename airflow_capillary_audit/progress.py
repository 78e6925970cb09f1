"""
What a run says while it goes: counts in words, and the progress of a long run.

Pure: nothing from Airflow and no I/O. The operators log these lines; the clock is passed in, so the
tests need not wait for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A run longer than this says how far it got at least this often, so a log never falls silent for long.
PROGRESS_EVERY_SECONDS = 30.0


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """Return ``"1 row"``, ``"2 rows"``, ``"1,024 entries"``: a count with its noun in the right number."""
    word = noun if number == 1 else (plural or noun + "s")
    return f"{number:,} {word}"


def duration(seconds: float) -> str:
    """Return a span as people read it: ``0.42 s``, ``12 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class RequestCounts:
    """What the requests of a run met so far: retries, and answers that said the rate was exceeded."""

    retries: int = 0
    rate_limited: int = 0


@dataclass
class Progress:
    """
    How far a run of ``total`` events got: events done, rows, and when it last said so.

    :param total: the events the run fetches.
    :param clock: monotonic seconds; replaceable in tests.
    :param every: the most seconds between two progress lines.
    """

    total: int
    clock: Callable[[], float] = time.monotonic
    every: float = PROGRESS_EVERY_SECONDS
    done: int = 0
    rows: int = 0
    started: float = field(init=False)
    last_said: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.last_said = self.clock()

    def add(self, rows: int) -> None:
        """Count one more event done, with its rows."""
        self.done += 1
        self.rows += rows

    def seconds_to_next(self) -> float:
        """Return how long until the next progress line is due (never below a tenth of a second)."""
        return max(0.1, self.last_said + self.every - self.clock())

    def due(self) -> bool:
        """Tell whether a progress line is due: ``every`` seconds since the run began or last said so."""
        return self.done < self.total and self.clock() - self.last_said >= self.every

    def line(self, counts: RequestCounts) -> str:
        """Return the progress line, and count it as said."""
        now = self.clock()
        self.last_said = now
        elapsed = now - self.started
        left = self.total - self.done
        if self.done:
            eta = f"about {duration(elapsed / self.done * left)} left at the current pace"
        else:
            eta = "no event done yet to tell the time left"
        return (
            f"Progress after {duration(elapsed)}: {self.done:,} of {counted(self.total, 'event')} done, "
            f"{counted(self.rows, 'row')}, {counted(counts.retries, 'retry', 'retries')}, "
            f"{counts.rate_limited:,} × 429 (rate limited); {eta}"
        )
