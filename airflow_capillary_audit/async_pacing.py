"""
Space requests at a per-minute rate on an event loop, and hold them back after a 429.

The asynchronous twins of :mod:`airflow_capillary_audit.pacing`, for the triggerer, where nothing may
block: :class:`AsyncRequestPacer` paces the requests of one client, :class:`AsyncSharedPacer` takes its
slots from the same budget in Redis as :class:`~airflow_capillary_audit.pacing.SharedPacer`, with the
same key and the same script, so that a watch in the triggerer and a daily load on the workers stay
inside one rate together. Both wait with ``asyncio.sleep``.

``hold`` is a plain method, as the retry policy's ``wait_by_policy`` calls it while it computes a
wait; the shared pacer sends the hold to Redis in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

# The one budget, shared with the workers' SharedPacer: one script, one key layout, one spacing.
from airflow_capillary_audit.pacing import HOLD_REASSERT, PacerUnavailable, SharedBudget

log = logging.getLogger(__name__)


class AsyncRequestPacer:
    """
    Hand out request slots at most ``requests_per_minute`` a minute, evenly spaced, to coroutines.

    :param requests_per_minute: the cap; ``None`` means no cap (``hold`` still works).
    :param clock: monotonic seconds, replaceable in tests.
    """

    def __init__(
        self, requests_per_minute: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._clock = clock
        self._next_slot = float("-inf")
        self._turn = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait until this caller's slot comes; return the seconds waited."""
        waited = 0.0
        # One caller waits for the next slot at a time; a hold() while it sleeps pushes it back too.
        async with self._turn:
            while True:
                now = self._clock()
                wait = self._next_slot - now
                if wait <= 0:
                    self._next_slot = now + self.interval
                    return waited
                await asyncio.sleep(wait)
                waited += wait

    def hold(self, seconds: float) -> None:
        """Let no slot start sooner than ``seconds`` from now."""
        self._next_slot = max(self._next_slot, self._clock() + seconds)


class AsyncScriptingStore(Protocol):
    """What :class:`AsyncSharedPacer` needs of a Redis client: redis.asyncio's ``register_script``."""

    def register_script(self, script: str) -> Callable[..., Any]: ...


class AsyncSharedPacer(SharedBudget):
    """
    Hand out request slots from the budget in Redis that every process naming ``key`` shares.

    The same budget as :class:`~airflow_capillary_audit.pacing.SharedPacer`, step for step: each slot is
    spaced by the longest interval any caller on the key asked for within
    :data:`~airflow_capillary_audit.pacing.STRICTEST_RATE_MEMORY`, and a hold is sent to Redis at once
    and kept in this pacer's memory, put back in Redis with every request for a slot while it lasts.

    :param client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client.
    :param key: the budget's key, :func:`~airflow_capillary_audit.hooks.capillary.budget_key` of the till.
    :param requests_per_minute: this caller's cap; ``None`` takes slots without spacing them.
    :param clock: monotonic seconds by which a hold ages, replaceable in tests.
    """

    def __init__(
        self,
        client: AsyncScriptingStore,
        key: str,
        requests_per_minute: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client, key, requests_per_minute)
        self._clock = clock
        # When the longest hold this pacer set ends, on this process's clock.
        self._held_until = float("-inf")
        self._holds: set[asyncio.Task[Any]] = set()

    async def acquire(self) -> float:
        """Wait until the shared budget gives this caller a slot; return the seconds waited."""
        waited = 0.0
        while True:
            held = max(0.0, self._held_until - self._clock())
            wait_us, interval_us = await self._call(round(held * 1_000_000), take=True)
            self._note_interval(interval_us)
            wait = wait_us / 1_000_000
            if wait <= 0:
                return waited
            # Not reserved: a wait ends in a fresh try, so a hold set meanwhile is seen.
            if held > 0:
                wait = min(wait, HOLD_REASSERT)
            await asyncio.sleep(wait)
            waited += wait

    def hold(self, seconds: float) -> None:
        """Let no slot of the shared budget start sooner than ``seconds`` from now; Redis is told at once."""
        if seconds <= 0:
            return
        self._held_until = max(self._held_until, self._clock() + seconds)
        # Called while the retry policy computes its wait, on the loop: the write runs as a task of its own.
        task = asyncio.get_running_loop().create_task(self._send_hold(max(1, round(seconds * 1_000_000))))
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    async def _send_hold(self, hold_us: int) -> None:
        try:
            await self._call(hold_us, take=False)
        except PacerUnavailable as err:
            # Kept in memory all the same: the next request for a slot sends it again.
            log.warning("A hold could not be sent to the shared rate budget now: %s", err)

    async def _call(self, hold_us: int, *, take: bool) -> tuple[int, int]:
        try:
            wait, interval = await self._script(keys=[self.key], args=self._script_args(hold_us, take=take))
            return int(wait), int(interval)
        except Exception as err:
            raise self._unavailable(err) from err
