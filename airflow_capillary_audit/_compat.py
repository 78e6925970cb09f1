"""Every switch between supported Airflow versions (3.0.6 to 3.x) lives here."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0: the Task SDK does not export a hook base class yet
    from airflow.hooks.base import BaseHook  # type: ignore[attr-defined,no-redef]

__all__ = ["BaseHook", "BaseOperator", "ObjectStoragePath", "has_fs", "mask_secret"]


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
