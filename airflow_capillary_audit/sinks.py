"""Write a run's files into a folder of Airflow's object storage, each file complete or absent."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

# Object storage is read from _compat when a folder is used: it pulls in fsspec and universal-pathlib.
from airflow_capillary_audit import _compat
from airflow_capillary_audit.commit import (
    DEFERRED_COMMIT_SCHEMES,
    WriteBody,
    fsync_folder,
    write_committed,
    write_copied,
    write_renamed,
)
from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryError, CapillaryWriteError
from airflow_capillary_audit.formats import HashingWriter

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

# Every manifest's name starts so; :func:`manifest_name` scopes the rest to one task instance.
MANIFEST_PREFIX = "_manifest"
# Every claim's name starts so; :func:`claim_name` scopes the rest to one mapped task instance.
CLAIM_PREFIX = "_claim"
# A hidden file written and removed to see that a local folder can be written to (:meth:`FolderSink.probe`).
PROBE_PREFIX = ".probe-"
# The Airflow provider that registers each common object store's filesystem.
STORE_PROVIDERS = {
    "s3": "apache-airflow-providers-amazon[s3fs]",
    "s3a": "apache-airflow-providers-amazon[s3fs]",
    "gs": "apache-airflow-providers-google",
    "gcs": "apache-airflow-providers-google",
    "abfs": "apache-airflow-providers-microsoft-azure",
    "abfss": "apache-airflow-providers-microsoft-azure",
    "az": "apache-airflow-providers-microsoft-azure",
    "adl": "apache-airflow-providers-microsoft-azure",
}
# Object storage that cannot hold a folder of files we write.
READ_ONLY_SCHEMES = frozenset({"http", "https", "ftp", "github", "zip", "tar", "memory-readonly"})


@dataclass(frozen=True)
class WrittenFile:
    """One file the sink committed: its name in the folder, rows, size and SHA-256."""

    name: str
    uri: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class EventFile:
    """One event's entry in the manifest: its name, the file written, and the records it came from."""

    event_name: str
    file: WrittenFile
    records: int


@dataclass(frozen=True)
class RunInfo:
    """
    The run a manifest describes, in the manifest's order: the task instance, when, and what it asked.

    :param map_index: the mapped instance's index, -1 (or None) when the task is not mapped; mapped
        instances each write a manifest of their own, see :func:`manifest_name`.
    :param fetched_at: when the run's requests were done, in UTC.
    """

    dag_id: str | None
    task_id: str | None
    run_id: str | None
    map_index: int | None
    fetched_at: datetime
    capillary_conn_id: str
    output_format: str
    flatten: bool
    changed_since: datetime | None
    changed_until: datetime | None


@dataclass(frozen=True)
class LineageName:
    """A file as OpenLineage names a dataset: the store (``file``, ``s3://bucket``) and the path in it."""

    namespace: str
    name: str


@dataclass(frozen=True)
class MappedInstance:
    """One mapped task instance of a DAG run, the owner of a claim (see :meth:`FolderSink.claim`)."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int


class FolderSink:
    """
    Commit files into one destination folder, each whole or absent, whatever the store.

    - Local disk: a hidden temporary file, fsynced, renamed into place, then the folder fsynced, so
      a file that is listed (by a manifest too) survives a crash or a power loss whole.
    - S3 and GCS: the file is uploaded under its own name and committed at the end; readers see
      nothing before the commit, and a failed write drops its upload.
    - Other stores: a hidden temporary object, copied into place, then deleted; a temporary object
      that cannot be deleted is logged by name and does not fail the file.

    :param destination: a folder URI (``file:///data``, ``s3://bucket/prefix``, ``gs://...``) or a
        plain local path.
    :param conn_id: the Airflow connection holding the store's credentials.
    """

    def __init__(self, destination: str, conn_id: str | None = None) -> None:
        if not isinstance(destination, str) or not destination.strip():
            raise CapillaryConfigError(
                f"destination must be a folder URI or path, got {destination!r}; e.g. s3://bucket/capillary"
            )
        self.uri = _folder_uri(destination.strip())
        self.conn_id = conn_id or None
        self._root: ObjectStoragePath | None = None

    @property
    def root(self) -> ObjectStoragePath:
        """Return the folder as Airflow's object-storage path."""
        if self._root is None:
            self._root = _compat.ObjectStoragePath(self.uri, conn_id=self.conn_id)
        return self._root

    def check(self) -> None:
        """Fail with a clear error, before any request, when the folder cannot be written to."""
        scheme = urlsplit(self.uri).scheme
        if scheme in READ_ONLY_SCHEMES:
            raise CapillaryConfigError(
                f"destination {self.uri!r}: scheme {scheme!r} cannot be written to; use a local path, "
                "file://, s3://, gs:// or another object store Airflow supports"
            )
        # Airflow writes through the filesystems its providers register, not every fsspec protocol.
        if not _compat.has_fs(scheme):
            provider = STORE_PROVIDERS.get(scheme)
            hint = f"install {provider} where tasks run" if provider else "use a local path, file://, s3://, gs://"
            raise CapillaryConfigError(
                f"destination {self.uri!r}: Airflow has no filesystem for scheme {scheme!r}; {hint}"
            )
        try:
            is_file = self.root.is_file()
        except Exception as err:
            raise CapillaryConfigError(f"destination {self.uri!r} cannot be read: {err}") from err
        if is_file:
            raise CapillaryConfigError(
                f"destination {self.uri!r} is an existing file; give a folder for the event files"
            )

    def probe(self) -> None:
        """
        Fail with a clear error, before any request, when the folder cannot be written to.

        On local disk a hidden probe file is written and removed in the folder, and folders that
        had to be made for it are removed again, so the tree is left as it was. Object stores are
        not written to (a probe object would be listed, and a store may refuse deletes); on S3 and
        GCS the bucket must exist.
        """
        scheme = urlsplit(self.uri).scheme
        try:
            if scheme == "file":
                probe_local_folder(self.root.path)
            elif scheme in DEFERRED_COMMIT_SCHEMES and not self.root.fs.exists(_bucket(self.root.path)):
                raise CapillaryConfigError(
                    f"destination {self.uri!r}: the bucket does not exist, or the store cannot be reached "
                    f"with connection {self.conn_id!r}; create the bucket, or check destination_conn_id"
                )
        except CapillaryError:
            raise
        except Exception as err:
            raise CapillaryConfigError(
                f"destination {self.uri!r} cannot be written to: {err}; check the folder's permissions, "
                "or give another destination"
            ) from err

    def prepare(self, manifest_name: str, file_names: Sequence[str]) -> None:
        """
        Create the folder, and remove every manifest this run would make untrue before writing.

        That is this task instance's own manifest (nothing marks the run complete yet), and any other
        manifest in the folder that lists one of ``file_names``, which this run will rewrite or
        remove: a task sharing the folder, another grouping of a mapped task, an earlier version's
        ``_manifest.json``.
        """
        try:
            self._make_folder()
            (self.root / manifest_name).unlink(missing_ok=True)
            self.unlist(file_names)
        except CapillaryError:
            raise
        except Exception as err:
            raise CapillaryWriteError(f"Cannot prepare destination {self.uri!r}: {err}") from err

    def _make_folder(self) -> None:
        # Object stores have no folders, and creating one there would create a missing bucket.
        if urlsplit(self.uri).scheme == "file":
            self.root.mkdir(parents=True, exist_ok=True)

    def unlist(self, file_names: Sequence[str]) -> None:
        """Remove every manifest in the folder that lists one of ``file_names``."""
        wanted = set(file_names)
        for path in self._manifests():
            listed = _listed_files(path)
            if listed is not None and listed & wanted:
                path.unlink(missing_ok=True)

    def _manifests(self) -> list[ObjectStoragePath]:
        if not self.root.exists():
            return []
        return [
            path
            for path in self.root.iterdir()
            if path.name.startswith(MANIFEST_PREFIX) and path.name.endswith(".json")
        ]

    def claim(self, instance: MappedInstance, file_names: Sequence[str]) -> dict[str, list[int]]:
        """
        Claim ``file_names`` for a mapped instance; return those another instance of its run holds.

        The claim (:func:`claim_name`) is written whole, and only then are the folder's claims and
        manifests of the same DAG run, task and other map indexes read: of two instances that claim a
        file at the same moment, at least the later to list sees the other's claim. The result maps
        each file held by another instance to the map indexes holding it; the caller refuses to run
        when it is not empty, and removes its claim with :meth:`release` whatever happens.

        A manifest of the same run and task counts as a claim: the instance that wrote it has ended.
        A claim or manifest of the same map index (an earlier try of this instance), or of another run,
        is ignored. It needs a store that lists an object once it is written: local disk, S3 and GCS do.
        """
        document = {
            "dag_id": instance.dag_id,
            "task_id": instance.task_id,
            "run_id": instance.run_id,
            "map_index": instance.map_index,
            "files": list(file_names),
        }
        body = (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()

        def write_body(out: HashingWriter) -> int:
            out.write(body)
            return 0

        try:
            self._make_folder()
        except Exception as err:
            raise CapillaryWriteError(f"Cannot prepare destination {self.uri!r}: {err}") from err
        self.write(claim_name(instance), write_body)
        wanted = set(file_names)
        held: dict[str, set[int]] = {}
        try:
            # Claims first, then manifests, each in a listing of its own: an instance removes its claim
            # only after its manifest is written, so a claim removed during the first is in the second.
            for prefix in (CLAIM_PREFIX, MANIFEST_PREFIX):
                for index, files in self._held_by_others(instance, prefix):
                    for name in files & wanted:
                        held.setdefault(name, set()).add(index)
        except Exception as err:
            raise CapillaryWriteError(f"Cannot read the claims in {self.uri!r}: {err}") from err
        return {name: sorted(indexes) for name, indexes in sorted(held.items())}

    def _held_by_others(self, instance: MappedInstance, prefix: str) -> list[tuple[int, set[str]]]:
        """Return the map index and files of each claim (or manifest) of the run by another map index."""
        # A listing the filesystem cached before other instances wrote their claims would hide them.
        self.root.fs.invalidate_cache(self.root.path)
        if not self.root.exists():
            return []
        if prefix == CLAIM_PREFIX:
            start = claim_name(instance).rsplit(".map-", 1)[0] + ".map-"
        else:
            start = manifest_name(instance.dag_id, instance.task_id).removesuffix(".json") + ".map-"
        held = []
        for path in self.root.iterdir():
            index = path.name.removeprefix(start).removesuffix(".json")
            if not path.name.startswith(start) or not path.name.endswith(".json") or not index.isdigit():
                continue
            if int(index) == instance.map_index:
                continue
            document = _read_json(path)
            if not isinstance(document, dict):
                continue
            if (document.get("dag_id"), document.get("task_id"), document.get("run_id")) != (
                instance.dag_id,
                instance.task_id,
                instance.run_id,
            ):
                continue
            try:
                if prefix == CLAIM_PREFIX:
                    files = {str(name) for name in document["files"]}
                else:
                    files = {str(event["file"]) for event in document["events"]}
            except (KeyError, TypeError):
                continue  # not one this package could write
            held.append((int(index), files))
        return held

    def release(self, instance: MappedInstance) -> None:
        """Remove the instance's claim, if it is there."""
        path = self.root / claim_name(instance)
        try:
            path.unlink(missing_ok=True)
        except Exception as err:
            raise CapillaryWriteError(f"Cannot remove the claim {path}: {err}") from err

    def write(self, name: str, write_body: WriteBody) -> WrittenFile:
        """
        Write one file whole: ``write_body`` streams into it and returns its row count.

        :param name: the file's name inside the folder.
        :param write_body: writes the content into the binary file object it is given.
        """
        final = self.root / name
        scheme = urlsplit(self.uri).scheme
        try:
            if scheme == "file":
                out, rows = write_renamed(final.path, write_body)
            elif scheme in DEFERRED_COMMIT_SCHEMES:
                out, rows = write_committed(final, write_body)
            else:
                out, rows = write_copied(self.root, final, write_body)
        except BaseException as err:
            # The package's own errors (a malformed answer met while writing) keep their type and message.
            if isinstance(err, Exception) and not isinstance(err, CapillaryError):
                raise CapillaryWriteError(f"Cannot write {final}: {err}") from err
            raise
        return WrittenFile(name=name, uri=str(final), rows=rows, bytes=out.bytes, sha256=out.sha256)

    def remove(self, name: str) -> None:
        """
        Remove a file from the folder if it is there, e.g. an earlier run's file of a failed event,
        and first any manifest that lists it, so none names a file that is gone.
        """
        path = self.root / name
        try:
            self.unlist([name])
            path.unlink(missing_ok=True)
            if urlsplit(self.uri).scheme == "file":
                fsync_folder(os.path.dirname(path.path))
        except Exception as err:
            raise CapillaryWriteError(f"Cannot remove {path}: {err}") from err

    def write_manifest(self, run: RunInfo, events: Sequence[EventFile]) -> WrittenFile:
        """
        Write the run's manifest, last: its presence says every file of the run is in place.

        It is indented UTF-8 JSON named by :func:`manifest_name`; :func:`manifest_document` gives its keys.
        """
        manifest = manifest_document(run, events)
        body = (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=False) + "\n").encode()

        def write_body(out: HashingWriter) -> int:
            out.write(body)
            return 0

        return self.write(manifest_name(run.dag_id, run.task_id, run.map_index), write_body)


def probe_local_folder(folder: str) -> None:
    """Write and remove a hidden file in a local folder, making and then removing missing parents."""
    made: list[str] = []
    path = os.path.abspath(folder)
    while not os.path.isdir(path):
        made.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        for missing in reversed(made):
            os.mkdir(missing)
        probe = os.path.join(folder, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        with open(probe, "xb") as out:
            out.write(b"probe")
        os.unlink(probe)
    finally:
        for created in made:
            with contextlib.suppress(OSError):
                os.rmdir(created)


def manifest_name(dag_id: str | None, task_id: str | None, map_index: int | None = None) -> str:
    """
    Return the name of a task instance's manifest: ``_manifest.<dag_id>.<task_id>.json``, with
    ``.map-<index>`` before ``.json`` for a mapped instance.

    Tasks that share a folder, and the instances of a mapped task, each mark their own files
    complete. Ids are percent-encoded like event names, so no id can leave the folder.
    """
    parts = [MANIFEST_PREFIX]
    parts += [_name_part(part) for part in (dag_id, task_id) if part]
    if map_index is not None and map_index >= 0:
        parts.append(f"map-{map_index}")
    return ".".join(parts) + ".json"


def claim_name(instance: MappedInstance) -> str:
    """
    Return the name of a mapped instance's claim:
    ``_claim.<dag_id>.<task_id>.<run_id>.map-<index>.json``, ids encoded as in :func:`manifest_name`.
    """
    parts = [CLAIM_PREFIX, *map(_name_part, (instance.dag_id, instance.task_id, instance.run_id))]
    return ".".join([*parts, f"map-{instance.map_index}"]) + ".json"


def manifest_document(run: RunInfo, events: Sequence[EventFile]) -> dict[str, Any]:
    """
    Return the manifest of a run as a JSON-ready dict, keys in the order they are written.

    ``manifest_version`` (1), the fields of :class:`RunInfo` (times as ISO 8601 strings),
    ``total_rows``, and ``events``: for each event its name, file name, rows, records, bytes and
    SHA-256, in the order the events were asked for.
    """
    return {
        "manifest_version": 1,
        "dag_id": run.dag_id,
        "task_id": run.task_id,
        "run_id": run.run_id,
        "map_index": run.map_index,
        "fetched_at": run.fetched_at.isoformat(),
        "capillary_conn_id": run.capillary_conn_id,
        "output_format": run.output_format,
        "flatten": run.flatten,
        "changed_since": run.changed_since.isoformat() if run.changed_since else None,
        "changed_until": run.changed_until.isoformat() if run.changed_until else None,
        "total_rows": sum(event.file.rows for event in events),
        "events": [
            {
                "event_name": event.event_name,
                "file": event.file.name,
                "rows": event.file.rows,
                "records": event.records,
                "bytes": event.file.bytes,
                "sha256": event.file.sha256,
            }
            for event in events
        ],
    }


def static_folder_uri(destination: str) -> str | None:
    """
    Return the folder URI a templated destination always lies under, or ``None`` if none is fixed.

    ``s3://bucket/capillary/{{ ds }}`` gives ``s3://bucket/capillary``: the part before the first
    template, cut back to a whole folder. It is what a downstream DAG can schedule on.
    """
    static = destination.split("{{", 1)[0].split("{%", 1)[0]
    if static != destination:
        static = static.rpartition("/")[0]
    static = static.rstrip("/")
    if not static:
        return None
    uri = _folder_uri(static)
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.path in ("", "/"):
        return None
    if parts.scheme != "file" and not parts.netloc:
        return None
    return uri


def lineage_name(uri: str) -> LineageName:
    """Return how OpenLineage names a file: ``file`` and its path, or ``s3://bucket`` and its key."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return LineageName("file", parts.path)
    return LineageName(f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/"))


def _bucket(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


def _folder_uri(destination: str) -> str:
    scheme = urlsplit(destination).scheme
    # A one-letter "scheme" is a Windows drive letter, not a store.
    if not scheme or len(scheme) == 1:
        return "file://" + os.path.abspath(os.path.expanduser(destination))
    return destination


def _name_part(value: str) -> str:
    # Dots separate the parts, so an id's own dots are encoded too: no two tasks share a name.
    return quote(value, safe="-_").replace(".", "%2E")


def _read_json(path: ObjectStoragePath) -> object:
    """Return a file's JSON, or None when it is gone or is not JSON."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None  # removed meanwhile by the task it belongs to
    except ValueError:
        return None


def _listed_files(path: ObjectStoragePath) -> set[str] | None:
    """Return the file names a manifest lists, or None when it is not one this package could write."""
    document = _read_json(path)
    try:
        return {str(event["file"]) for event in document["events"]}  # type: ignore[index]
    except (TypeError, KeyError):
        return None
