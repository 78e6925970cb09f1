"""
Space requests evenly at a per-minute rate, and hold every worker back after a 429.

:class:`RequestPacer` paces the threads of one process; :class:`SharedPacer` paces every process
that shares one budget in Redis (mapped task instances on several workers, or several DAGs on one
till). Both have the same two methods, ``acquire`` and ``hold``.
"""

from __future__ import annotations

import logging
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
# one atomic step per slot. The key is a hash: "next" is that moment; "interval" the longest spacing
# asked by any caller within the memory (the strictest rate among the connections sharing the till),
# kept until "interval_until". ARGV[1]: this caller's microseconds between slots; ARGV[2]: a hold in
# microseconds, or 0; ARGV[3]: 1 to take a slot, 0 only to hold; ARGV[4]: how long, in microseconds,
# an interval binds the others once its caller last asked. Returns {microseconds to wait (0 when a
# slot was taken, or for a hold), the interval in force}.
_BUDGET_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'next', 'interval', 'interval_until')
local next_slot = tonumber(state[1] or '0')
local interval = tonumber(state[2] or '0')
local interval_until = tonumber(state[3] or '0')
local own = tonumber(ARGV[1])
local hold = tonumber(ARGV[2])
local take = ARGV[3] == '1'
local memory = tonumber(ARGV[4])
if interval_until <= now then interval = 0 end
if own >= interval then
  interval = own
  interval_until = now + memory
end
if hold > 0 and now + hold > next_slot then next_slot = now + hold end
local wait = 0
if take then
  if next_slot > now then wait = next_slot - now else next_slot = now + interval end
end
redis.call('HSET', KEYS[1], 'next', string.format('%.0f', next_slot),
  'interval', string.format('%.0f', interval), 'interval_until', string.format('%.0f', interval_until))
redis.call('PEXPIRE', KEYS[1], math.floor((math.max(next_slot, interval_until) - now) / 1000) + 60000)
return {wait, interval}
"""
#: How long a connection's rate binds the others on its till after its last request: a connection
#: with a lower rate that is still working asks again well within it (its waits, back-off and answers
#: are shorter), and one that has finished stops binding the others this long after.
STRICTEST_RATE_MEMORY = 600.0
# While a hold this pacer set is running, a wait for a slot wakes this often to put the hold back in
# Redis, should Redis have lost it (a restart without persistence).
HOLD_REASSERT = 1.0

log = logging.getLogger(__name__)


class SharedBudget:
    """
    What the shared pacers, for threads and for coroutines, keep alike of one budget in Redis.

    The budget's key, this caller's spacing in whole microseconds of the server's clock (rounded up:
    the chain never runs faster than the rate), the budget script, and the warning, given once, that
    another caller's lower rate paces this one.

    :param client: a Redis client with ``register_script`` (blocking or asyncio).
    :param key: the budget's key; every process that shares the budget uses the same key.
    :param requests_per_minute: this caller's cap; ``None`` takes slots without spacing them.
    """

    def __init__(self, client: ScriptingStore, key: str, requests_per_minute: int | None) -> None:
        self.key = key
        self._interval_us = math.ceil(60_000_000 / requests_per_minute) if requests_per_minute else 0
        self.interval = self._interval_us / 1_000_000
        self._script = client.register_script(_BUDGET_SCRIPT)
        self._warned_interval = 0

    def _script_args(self, hold_us: int, *, take: bool) -> list[int]:
        """Return the budget script's arguments: this caller's interval, a hold, take or not, the memory."""
        return [self._interval_us, hold_us, 1 if take else 0, round(STRICTEST_RATE_MEMORY * 1_000_000)]

    def _unavailable(self, err: Exception) -> PacerUnavailable:
        return PacerUnavailable(f"the shared rate budget {self.key!r} cannot be reached: {err}")

    def _note_interval(self, interval_us: int) -> None:
        """Say once that another caller's lower rate paces this one, and at what rate."""
        if interval_us <= self._interval_us or interval_us <= self._warned_interval:
            return
        self._warned_interval = interval_us
        log.warning(
            "The shared rate budget %s paces at %g requests a minute, below this connection's %s: another "
            "connection on the same till asked for that rate, and the lowest rate binds them all",
            self.key,
            round(60_000_000 / interval_us, 3),
            f"{60 / self.interval:g}" if self.interval else "(none set)",
        )


class SharedPacer(SharedBudget):
    """
    Hand out request slots from one budget kept in Redis, shared by every process that names its key.

    Tasks on different workers that use the same till take their slots from one chain, so together
    they stay within ``requests_per_minute`` however many run at once and whenever each starts; a
    ``hold`` after a 429 on one worker holds them all. Each slot is one atomic script on the Redis
    server, timed by the server's clock, so the workers' clocks need not agree.

    Callers with different rates on one key are spaced at the lowest of them: each slot is spaced by
    the longest interval any caller asked for within :data:`STRICTEST_RATE_MEMORY`. A hold is also
    kept in this pacer's memory until it ends: while it lasts, each request for a slot puts it back in
    Redis, so a Redis that restarts without persistence gets it back from the processes that saw it.

    :param client: a ``redis.Redis`` (or ``RedisCluster``) client, e.g. from Airflow's ``RedisHook``.
    :param key: the budget's key; every process that shares the budget uses the same key.
    :param requests_per_minute: this caller's cap; ``None`` takes slots without spacing them (a
        ``hold``, and a lower rate of another caller on the key, still apply).
    :param stop: once set, waiting callers wake and every ``acquire`` raises :class:`PacerStopped`.
    """

    def __init__(
        self,
        client: ScriptingStore,
        key: str,
        requests_per_minute: int | None = None,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client, key, requests_per_minute)
        self._stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._lock = threading.Lock()
        # When the longest hold this pacer set ends, on this process's clock.
        self._held_until = float("-inf")

    def acquire(self) -> float:
        """Block until the shared budget gives this caller a slot; return the seconds waited."""
        waited = 0.0
        while True:
            if self._stop.is_set():
                raise PacerStopped("the pacer was stopped; no further slot is handed out")
            held = self._held_for()
            wait_us, interval_us = self._call(round(held * 1_000_000), take=True)
            self._note_interval(interval_us)
            wait = wait_us / 1_000_000
            if wait <= 0:
                return waited
            # Not reserved: a wait ends in a fresh try, so a hold set meanwhile is seen.
            if held > 0:
                wait = min(wait, HOLD_REASSERT)
            self._stop.wait(wait)
            waited += wait

    def hold(self, seconds: float) -> None:
        """Let no slot of the shared budget start sooner than ``seconds`` from now."""
        if seconds > 0:
            with self._lock:
                self._held_until = max(self._held_until, self._clock() + seconds)
            self._call(max(1, round(seconds * 1_000_000)), take=False)

    def _held_for(self) -> float:
        """Return the seconds left of the longest hold this pacer set, or 0."""
        with self._lock:
            return max(0.0, self._held_until - self._clock())

    def _call(self, hold_us: int, *, take: bool) -> tuple[int, int]:
        try:
            wait, interval = self._script(keys=[self.key], args=self._script_args(hold_us, take=take))
            return int(wait), int(interval)
        except Exception as err:
            raise self._unavailable(err) from err
