"""Every switch between supported Airflow versions (3.1 to 3.x) lives here."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook, BaseOperator

__all__ = ["BaseHook", "BaseOperator", "ObjectStoragePath", "mask_secret"]


def __getattr__(name: str) -> Any:
    # Object storage pulls in fsspec and universal-pathlib: only the task that writes pays for it.
    if name == "ObjectStoragePath":
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath
    if name == "mask_secret":
        from airflow.sdk.log import mask_secret

        return mask_secret
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
