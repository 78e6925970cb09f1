"""Every switch between Airflow versions lives here, so the rest of the package imports one name."""

from __future__ import annotations

from typing import Any

try:
    from airflow.sdk import BaseHook, BaseOperator
except ImportError:  # Airflow 2.x
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef]

__all__ = ["BaseHook", "BaseOperator", "ObjectStoragePath", "mask_secret"]


def __getattr__(name: str) -> Any:
    # Object storage pulls in fsspec and universal-pathlib: only the task that writes pays for it.
    if name == "ObjectStoragePath":
        try:
            from airflow.sdk import ObjectStoragePath
        except ImportError:
            from airflow.io.path import ObjectStoragePath  # type: ignore[no-redef]
        return ObjectStoragePath
    if name == "mask_secret":
        try:
            from airflow.sdk.log import mask_secret
        except ImportError:
            from airflow.utils.log.secrets_masker import mask_secret  # type: ignore[no-redef]
        return mask_secret
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
