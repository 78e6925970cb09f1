"""
Commit one file into a store so that readers see it whole or not at all, the way each store allows.

Local disk: a hidden temporary file in the same folder, fsynced, renamed into place, then the folder
fsynced. S3 and GCS: the object under its own name, visible only at commit. Other stores: a hidden
temporary object copied into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from airflow_capillary_audit.formats import HashingWriter

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

# Temporary files start with a dot: event files never do, so the two can not collide.
TEMP_PREFIX = ".tmp-"
# Stores whose files, opened with autocommit=False, appear only at commit() and vanish at discard():
# s3fs completes a multipart upload, gcsfs finalises a resumable upload (nothing is listed before).
DEFERRED_COMMIT_SCHEMES = frozenset({"s3", "s3a", "s3n", "gs", "gcs"})
WriteBody = Callable[[HashingWriter], int]
# Called once the content is whole and just before it takes the file's name: the last moment to act.
BeforeCommit = Callable[[], None] | None

# The sink's logger: warnings about leftovers are the sink's, wherever the sink commits a file.
log = logging.getLogger("airflow_capillary_audit.sinks")


def write_renamed(
    path: str, write_body: WriteBody, before_commit: BeforeCommit = None
) -> tuple[HashingWriter, int]:
    """Write a local file under a hidden name beside it, fsync it, rename it into place, fsync the folder."""
    folder = os.path.dirname(path)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    # The stdlib, not fsspec: a real descriptor to fsync, and a rename that never moves into a folder.
    try:
        with open(temp, "xb") as raw:
            out = HashingWriter(raw)
            rows = write_body(out)
            raw.flush()
            # Data first: a rename that reaches the disk before the data names an empty file after a crash.
            os.fsync(raw.fileno())
        if before_commit is not None:
            before_commit()
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        except OSError as err:
            _warn_leftover(temp, err)
        raise
    # The rename is an entry in the folder: it is durable once the folder is.
    fsync_folder(folder)
    return out, rows


def write_committed(
    final: ObjectStoragePath, write_body: WriteBody, before_commit: BeforeCommit = None
) -> tuple[HashingWriter, int]:
    """Upload an object under its own name, visible only once committed; a failure drops the upload."""
    # Per file, not fs.transaction: the filesystem is shared by the writing threads, a transaction is not.
    raw = final.open("wb", autocommit=False)  # type: ignore[no-untyped-call]
    try:
        out = HashingWriter(raw)
        rows = write_body(out)
        if before_commit is not None:
            before_commit()
        raw.close()
        raw.commit()
    except BaseException:
        _discard(raw, final)
        raise
    return out, rows


def write_copied(
    root: ObjectStoragePath,
    final: ObjectStoragePath,
    write_body: WriteBody,
    before_commit: BeforeCommit = None,
) -> tuple[HashingWriter, int]:
    """Write a hidden temporary object, copy it into place, delete it; a failed delete only warns."""
    # No event name in it: a name that fits the file-name limit must fit here too.
    temp = root / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with temp.open("wb") as raw:  # type: ignore[no-untyped-call]
            out = HashingWriter(raw)
            rows = write_body(out)
        if before_commit is not None:
            before_commit()
        temp.copy(final)
    except BaseException:
        _remove_leftover(temp)
        raise
    # The copy is the file: a temporary object left behind is reported, not counted as a failed file.
    _remove_leftover(temp)
    return out, rows


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries (a rename, a removal) to disk; a no-op on Windows."""
    # Windows cannot open a folder to sync it.
    if os.name == "nt":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _discard(raw: BinaryIO, final: ObjectStoragePath) -> None:
    # Closed first, as fsspec's transactions do: discard() then drops what close() uploaded.
    with contextlib.suppress(Exception):
        raw.close()
    try:
        raw.discard()  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001 - whatever the store raises, the write's own error is the one to raise
        log.warning(
            "Could not drop the unfinished upload of %s; the store may keep its parts: %s", final, err
        )


def _remove_leftover(temp: ObjectStoragePath) -> None:
    try:
        temp.unlink(missing_ok=True)
    except Exception as err:  # noqa: BLE001 - whatever the store raises, the file written stands
        _warn_leftover(temp, err)


def _warn_leftover(temp: object, err: BaseException) -> None:
    log.warning("Could not remove the temporary file %s; delete it by hand: %s", temp, err)
