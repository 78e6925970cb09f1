"""Every switch between supported Airflow versions (3.0.6 to 3.x) lives here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseOperator

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0: the Task SDK does not export a hook base class yet
    from airflow.hooks.base import BaseHook  # type: ignore[attr-defined,no-redef]

try:
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSensorTimeout
except ImportError:  # Airflow 3.0 and 3.1: still in core's exceptions
    from airflow.exceptions import (  # type: ignore[attr-defined,no-redef]
        AirflowNotFoundException,
        AirflowSensorTimeout,
    )

__all__ = [
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "BaseHook",
    "BaseOperator",
    "ConnectionFields",
    "ObjectStoragePath",
    "aget_connection",
    "amask_secret",
    "has_fs",
    "mask_secret",
]


@dataclass(frozen=True)
class ConnectionFields:
    """What a connection holds, read once: ``extra_dejson`` already decoded (and its secrets masked)."""

    conn_id: str
    host: str | None
    port: int | None
    login: str | None
    password: str | None
    extra_dejson: dict[str, Any]


async def aget_connection(conn_id: str) -> ConnectionFields:
    """
    Read a connection without blocking the event loop (a trigger's), on every supported Airflow.

    Airflow's connection masks its extra with a sync call each time ``extra_dejson`` is read; before
    3.3, in the triggerer, that call must not run on the loop. So the fields are read once, here.
    """
    from asgiref.sync import sync_to_async  # noqa: PLC0415 - only triggers read connections this way

    if hasattr(BaseHook, "aget_connection"):
        conn = await BaseHook.aget_connection(conn_id)
    else:  # Airflow 3.0: the sync read in a thread, which reaches the triggerer's supervisor from there
        conn = await sync_to_async(BaseHook.get_connection)(conn_id)
    if hasattr(conn, "aextra_dejson"):
        extra = await conn.aextra_dejson()
    else:
        extra = await sync_to_async(lambda: conn.extra_dejson)()
    return ConnectionFields(conn.conn_id, conn.host, conn.port, conn.login, conn.password, dict(extra))


async def amask_secret(secret: str) -> None:
    """Register a secret with the secrets masker from a coroutine (a trigger's), on any supported Airflow."""
    from airflow.sdk import log  # noqa: PLC0415 - airflow.sdk leaves its log module unloaded on 3.0

    if hasattr(log, "amask_secret"):
        await log.amask_secret(secret)
        return
    from asgiref.sync import sync_to_async  # noqa: PLC0415 - only triggers mask this way

    # Before 3.3 the sync call reaches the triggerer's supervisor through a bridge barred from the loop.
    await sync_to_async(log.mask_secret)(secret)


def __getattr__(name: str) -> Any:
    # Object storage pulls in fsspec and universal-pathlib: only the task that writes pays for it.
    if name == "ObjectStoragePath":
        from airflow.sdk import ObjectStoragePath  # noqa: PLC0415 - pulls in fsspec and universal-pathlib

        return ObjectStoragePath
    if name == "has_fs":
        try:
            from airflow.sdk.io.fs import has_fs  # noqa: PLC0415 - pulls in fsspec
        except ImportError:  # Airflow 3.0: the filesystem registry is still in core
            from airflow.io import has_fs  # type: ignore[attr-defined,no-redef]  # noqa: PLC0415 - pulls in fsspec
        return has_fs
    if name == "mask_secret":
        from airflow.sdk.log import mask_secret  # noqa: PLC0415 - airflow.sdk leaves its log module unloaded on 3.0

        return mask_secret
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
