"""
Space requests at a per-minute rate on an event loop, and hold them back after a 429.

The asynchronous twins of :mod:`airflow_capillary_audit.pacing`, for the triggerer, where nothing may
block: :class:`AsyncRequestPacer` paces the requests of one client, :class:`AsyncSharedPacer` takes its
slots from the same budget in Redis as :class:`~airflow_capillary_audit.pacing.SharedPacer`, with the
same key and the same script, so that a watch in the triggerer and a daily load on the workers stay
inside one rate together. Both wait with ``asyncio.sleep``.

``hold`` is a plain method, as the retry policy's ``wait_by_policy`` calls it while it computes a
wait; the shared pacer sends the hold to Redis before its next slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

# The one budget script, shared with the workers' SharedPacer: one algorithm, one key layout.
from airflow_capillary_audit.pacing import _BUDGET_SCRIPT, PacerUnavailable


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


class AsyncSharedPacer:
    """
    Hand out request slots from the budget in Redis that every process naming ``key`` shares.

    :param client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client.
    :param key: the budget's key, :func:`~airflow_capillary_audit.hooks.capillary.budget_key` of the till.
    :param requests_per_minute: this caller's cap; ``None`` takes slots without spacing them.
    :param clock: monotonic seconds by which a pending hold ages, replaceable in tests.
    """

    def __init__(
        self,
        client: AsyncScriptingStore,
        key: str,
        requests_per_minute: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._interval_us = round(self.interval * 1_000_000)
        self._clock = clock
        self._script = client.register_script(_BUDGET_SCRIPT)
        self._hold_until = float("-inf")

    async def acquire(self) -> float:
        """Wait until the shared budget gives this caller a slot; return the seconds waited."""
        waited = 0.0
        while True:
            held = self._hold_until - self._clock()
            if held > 0:
                # Pass a hold on before taking a slot, so every process sharing the budget waits too.
                await self._call(self._interval_us, max(1, round(held * 1_000_000)))
                self._hold_until = float("-inf")
            wait = await self._call(self._interval_us, 0) / 1_000_000
            if wait <= 0:
                return waited
            await asyncio.sleep(wait)
            waited += wait

    def hold(self, seconds: float) -> None:
        """Let no slot of the shared budget start sooner than ``seconds`` from now (sent with the next)."""
        if seconds > 0:
            self._hold_until = max(self._hold_until, self._clock() + seconds)

    async def _call(self, interval_us: int, hold_us: int) -> int:
        try:
            return int(await self._script(keys=[self.key], args=[interval_us, hold_us]))
        except Exception as err:
            raise PacerUnavailable(f"the shared rate budget {self.key!r} cannot be reached: {err}") from err
