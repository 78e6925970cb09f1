"""Space requests evenly at a per-minute rate, and hold every worker back after a 429."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class PacerStopped(Exception):
    """Raised by :meth:`RequestPacer.acquire` once the pacer's stop event is set."""


class RequestPacer:
    """
    Hand out request slots at most ``requests_per_minute`` a minute, evenly spaced, across threads.

    Even spacing trips none of the limiters an API gateway may use (fixed window, sliding window,
    leaky bucket), where spending a minute's allowance in a burst trips the last two. ``hold``
    pushes every worker's next slot back, so a 429 slows the whole pool, not one thread.

    :param requests_per_minute: the cap; ``None`` means no cap (``hold`` still works).
    :param stop: once set, waiting callers wake and every ``acquire`` raises :class:`PacerStopped`.
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._clock = clock
        self._sleep = sleep
        self._stop = stop
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        self._next_slot = float("-inf")

    def acquire(self) -> float:
        """Block until this caller's slot comes; return the seconds waited."""
        waited = 0.0
        # One caller waits for the next slot at a time, and the slot after it counts from when it
        # was taken: a thread that wakes late (a loaded machine) cannot bunch with the next one,
        # and a hold() while it sleeps pushes it back too.
        with self._turn:
            while True:
                if self._stop is not None and self._stop.is_set():
                    raise PacerStopped("the pacer was stopped; no further slot is handed out")
                with self._lock:
                    now = self._clock()
                    wait = self._next_slot - now
                    if wait <= 0:
                        self._next_slot = now + self.interval
                        return waited
                if self._stop is not None:
                    self._stop.wait(wait)
                else:
                    self._sleep(wait)
                waited += wait

    def hold(self, seconds: float) -> None:
        """Let no slot start sooner than ``seconds`` from now."""
        with self._lock:
            self._next_slot = max(self._next_slot, self._clock() + seconds)
