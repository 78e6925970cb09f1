"""
Where a watch keeps its place across a triggerer restart, on each Airflow line.

- Airflow 3.3 gives a watcher's trigger the asset state store of the assets it watches
  (``self.asset_state_store``, one JSON value per key and asset, in the metadata DB): the place is
  kept there (:class:`AssetStatePlace`).
- Airflow 3.0 to 3.2 give a trigger nothing of its own, but the triggerer serves Airflow Variables to
  triggers (Task SDK ``Variable.get`` / ``Variable.set``, through the triggerer's supervisor): the
  place is kept in a Variable (:class:`VariablePlace`).
- A trigger run outside a triggerer (a deferred sensor in ``dag.test()``, a test driving ``run()``)
  keeps it in memory only (:class:`MemoryPlace`).

Each place stores the document :meth:`.WatchState.to_json` writes, under a key that names the
connection and a digest of what is watched, so two watches never share one.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from airflow_capillary_audit.changes import WatchState

KEY_PREFIX = "capillary_audit_watch"


class StatePlace(Protocol):
    """Somewhere a watch's state outlives its triggerer: read once at start, written after each change."""

    description: str

    async def load(self) -> WatchState | None:
        """Return the state kept, or ``None`` when there is none (or it cannot be read)."""

    async def save(self, state: WatchState) -> None:
        """Keep ``state``, replacing what was kept."""


class MemoryPlace:
    """Keep nothing beyond this run: a restart begins a new baseline."""

    description = "memory only (a restart takes a new baseline)"

    async def load(self) -> WatchState | None:
        """Return ``None``: nothing outlives the run."""
        return None

    async def save(self, state: WatchState) -> None:
        """Keep nothing."""


class AssetStatePlace:
    """
    Keep the state in the asset state store of every asset the watcher feeds (Airflow 3.3 and later).

    :param accessors: the trigger's ``asset_state_store``, as the triggerer injects it.
    :param key: the key of this watch's state in each asset's store.
    """

    def __init__(self, accessors: Any, key: str) -> None:
        self._stores = _asset_stores(accessors)
        self.key = key
        self.description = f"the asset state store of {len(self._stores)} asset(s), key {key!r}"

    async def load(self) -> WatchState | None:
        """Return the newest state kept by any of the assets' stores."""
        states = []
        for store in self._stores:
            state = WatchState.from_json(await store.aget(self.key, None))
            if state is not None:
                states.append(state)
        # Assets that share one watcher hold the same state, unless a write to one of them failed.
        return max(states, key=_seen_count) if states else None

    async def save(self, state: WatchState) -> None:
        """Write the state to every asset's store."""
        document = state.to_json()
        for store in self._stores:
            await store.aset(self.key, document)


class VariablePlace:
    """
    Keep the state in an Airflow Variable, through the Task SDK (Airflow 3.0 to 3.2, where a trigger has
    no store of its own).

    :param key: the Variable's key.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.description = f"the Airflow Variable {key!r}"

    async def load(self) -> WatchState | None:
        """Return the state kept in the Variable, or ``None`` when the Variable does not exist."""
        from airflow.sdk import Variable  # noqa: PLC0415 - only a watch in the triggerer reads it
        from asgiref.sync import sync_to_async  # noqa: PLC0415 - the triggerer's own dependency

        text = await sync_to_async(Variable.get)(self.key, default=None)
        return None if text is None else WatchState.from_json(json.loads(text))

    async def save(self, state: WatchState) -> None:
        """Write the state to the Variable, as compact JSON."""
        from airflow.sdk import Variable  # noqa: PLC0415 - only a watch in the triggerer writes it
        from asgiref.sync import sync_to_async  # noqa: PLC0415 - the triggerer's own dependency

        text = json.dumps(state.to_json(), separators=(",", ":"), ensure_ascii=False)
        description = (
            "Where a Capillary audit-log watch is (airflow-capillary-audit); delete it to start anew"
        )
        await sync_to_async(Variable.set)(self.key, text, description=description)


def _asset_stores(accessors: Any) -> list[Any]:
    """Return one accessor per watched asset: the store itself when it holds one asset."""
    by_name = getattr(accessors, "_by_name", None)
    by_uri = getattr(accessors, "_by_uri", None)
    if isinstance(by_name, dict) and isinstance(by_uri, dict) and len(by_name) + len(by_uri) > 1:
        # Several assets watched by one trigger: the public single-asset methods refuse, so each asset's own.
        return [*by_name.values(), *by_uri.values()]
    return [accessors]


def _seen_count(state: WatchState) -> int:
    return sum(len(prints) for prints in state.seen.values())
