"""
Space requests evenly at a per-minute rate, and hold every worker back after a 429.

:class:`RequestPacer` paces the threads of one process; :class:`SharedPacer` paces every process
that shares one budget in Redis (mapped task instances on several workers, or several DAGs on one
till). Both have the same two methods, ``acquire`` and ``hold``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


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
    :param first_slot_in: seconds before the first slot; pacers that split one rate and start
        together each take a different offset, so that their requests interleave instead of bursting.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        first_slot_in: float = 0.0,
    ) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._clock = clock
        self._sleep = sleep
        self._stop = stop
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        self._next_slot = clock() + first_slot_in if first_slot_in > 0 else float("-inf")

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


class ScriptingStore(Protocol):
    """What :class:`SharedPacer` needs of a Redis client: ``register_script``, as redis-py has it."""

    def register_script(self, script: str) -> Callable[..., Any]: ...


class PacerUnavailable(Exception):
    """Raised by :class:`SharedPacer` when the store that holds the shared budget cannot be reached."""


# The budget as a theoretical arrival time (GCRA without burst): the earliest moment, in microseconds
# of the Redis server's clock, at which the next request may start. One clock for every worker, and
# one atomic step per slot. ARGV[1]: microseconds between slots; ARGV[2]: a hold in microseconds, or 0
# to take a slot. Returns 0 when a slot was taken (or the hold set), else the microseconds to wait.
_BUDGET_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_slot = tonumber(redis.call('GET', KEYS[1]) or '0')
local interval = tonumber(ARGV[1])
local hold = tonumber(ARGV[2])
if hold > 0 then
  if now + hold > next_slot then
    redis.call('SET', KEYS[1], string.format('%.0f', now + hold), 'PX', math.floor(hold / 1000) + 60000)
  end
  return 0
end
if next_slot > now then
  return next_slot - now
end
redis.call('SET', KEYS[1], string.format('%.0f', now + interval), 'PX', math.floor(interval / 1000) + 60000)
return 0
"""


class SharedPacer:
    """
    Hand out request slots from one budget kept in Redis, shared by every process that names its key.

    Tasks on different workers that use the same till take their slots from one chain, so together
    they stay within ``requests_per_minute`` however many run at once and whenever each starts; a
    ``hold`` after a 429 on one worker holds them all. Each slot is one atomic script on the Redis
    server, timed by the server's clock, so the workers' clocks need not agree.

    :param client: a ``redis.Redis`` (or ``RedisCluster``) client, e.g. from Airflow's ``RedisHook``.
    :param key: the budget's key; every process that shares the budget uses the same key.
    :param requests_per_minute: this caller's cap; ``None`` takes slots without spacing them (a
        ``hold`` still applies).
    :param stop: once set, waiting callers wake and every ``acquire`` raises :class:`PacerStopped`.
    """

    def __init__(
        self,
        client: ScriptingStore,
        key: str,
        requests_per_minute: int | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.key = key
        # Whole microseconds of the server's clock, rounded up: the chain never runs faster than the rate.
        self._interval_us = math.ceil(60_000_000 / requests_per_minute) if requests_per_minute else 0
        self.interval = self._interval_us / 1_000_000
        self._stop = stop if stop is not None else threading.Event()
        self._script = client.register_script(_BUDGET_SCRIPT)

    def acquire(self) -> float:
        """Block until the shared budget gives this caller a slot; return the seconds waited."""
        waited = 0.0
        while True:
            if self._stop.is_set():
                raise PacerStopped("the pacer was stopped; no further slot is handed out")
            wait = self._call(self._interval_us, 0) / 1_000_000
            if wait <= 0:
                return waited
            # Not reserved: a wait ends in a fresh try, so a hold set meanwhile is seen.
            self._stop.wait(wait)
            waited += wait

    def hold(self, seconds: float) -> None:
        """Let no slot of the shared budget start sooner than ``seconds`` from now."""
        if seconds > 0:
            self._call(self._interval_us, max(1, round(seconds * 1_000_000)))

    def _call(self, interval_us: int, hold_us: int) -> int:
        try:
            return int(self._script(keys=[self.key], args=[interval_us, hold_us]))
        except Exception as err:
            raise PacerUnavailable(f"the shared rate budget {self.key!r} cannot be reached: {err}") from err
