"""Write a run's files into a folder of Airflow's object storage, each file complete or absent."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
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
from airflow_capillary_audit.exceptions import (
    CapillaryConfigError,
    CapillaryError,
    CapillaryFolderBusyError,
    CapillaryWriteError,
)
from airflow_capillary_audit.formats import HashingWriter, event_name_from_file

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

# Every manifest's name starts so; :func:`manifest_name` scopes the rest to one task instance.
MANIFEST_PREFIX = "_manifest"
# Every claim's name starts so; :func:`claim_name` scopes the rest to one task instance.
CLAIM_PREFIX = "_claim"
# A hidden file written and removed to see that a local folder can be written to (:meth:`FolderSink.probe`).
PROBE_PREFIX = ".probe-"
# The states in which a task instance may be writing: a claim of one in any other state is stale.
WRITING_STATES = frozenset({"running", "deferred"})

log = logging.getLogger(__name__)
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
class Writer:
    """
    One task instance that writes into a folder, the owner of a claim (see :meth:`FolderSink.claim`).

    :param map_index: the mapped instance's index, -1 when the task is not mapped.
    """

    dag_id: str | None
    task_id: str | None
    run_id: str | None
    map_index: int = -1

    def describe(self) -> str:
        """Name the task instance as a user finds it in Airflow: DAG, task, run and map index."""
        where = f"task {self.task_id!r} of DAG {self.dag_id!r}, run {self.run_id!r}"
        return where + (f", map index {self.map_index}" if self.map_index >= 0 else "")


# The name from when only mapped instances claimed their files.
MappedInstance = Writer


@dataclass(frozen=True)
class Claim:
    """A claim found in a folder: who holds it, the files it names, and where and since when it runs."""

    name: str
    writer: Writer
    files: frozenset[str]
    host: str | None
    pid: int | None
    claimed_at: str | None

    def describe(self) -> str:
        """Name the holder, and the process that wrote the claim when the claim says."""
        details = [
            f"host {self.host}" if self.host else "",
            f"pid {self.pid}" if self.pid else "",
            f"since {self.claimed_at}" if self.claimed_at else "",
        ]
        said = ", ".join(detail for detail in details if detail)
        return self.writer.describe() + (f" ({said})" if said else "")


# Asks Airflow about a claim's writer: the state it ended in, or None while it may be writing.
EndedState = Callable[[Writer], "str | None"]


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
        # File name -> the other manifests listing it, as prepare() found them.
        self._listed: dict[str, list[str]] | None = None

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
            hint = (
                f"install {provider} where tasks run"
                if provider
                else "use a local path, file://, s3://, gs://"
            )
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
        Create the folder, remove this task instance's own manifest, and note who lists ``file_names``.

        The own manifest goes before anything is written: nothing marks the run complete yet. Every
        other manifest that lists one of ``file_names`` (a task sharing the folder, another grouping
        of a mapped task, an earlier version's ``_manifest.json``) stays until this run replaces a
        file it lists (:meth:`write`), so a run that fails first leaves it, and its files, as they are.

        The note is taken once: while the run holds its claim (:meth:`claim`), no other writer of
        these files can write a manifest that lists them.
        """
        try:
            self._make_folder()
            (self.root / manifest_name).unlink(missing_ok=True)
            self._listed = self._listing(file_names)
        except CapillaryError:
            raise
        except Exception as err:
            raise CapillaryWriteError(f"Cannot prepare destination {self.uri!r}: {err}") from err

    def _make_folder(self) -> None:
        # Object stores have no folders, and creating one there would create a missing bucket.
        if urlsplit(self.uri).scheme == "file":
            self.root.mkdir(parents=True, exist_ok=True)

    def _listing(self, file_names: Sequence[str]) -> dict[str, list[str]]:
        """Return, for each of ``file_names`` that a manifest in the folder lists, those manifests' names."""
        wanted = set(file_names)
        listing: dict[str, list[str]] = {}
        for path in self._manifests():
            for name in sorted((_listed_files(path) or set()) & wanted):
                listing.setdefault(name, []).append(path.name)
        return listing

    def _listed_by(self, name: str) -> list[str]:
        """Return the manifests that list ``name``: as noted by :meth:`prepare`, else as the folder is now."""
        listing = self._listed if self._listed is not None else self._listing([name])
        return listing.get(name, [])

    def _manifests(self) -> list[ObjectStoragePath]:
        if not self.root.exists():
            return []
        return [
            path
            for path in self.root.iterdir()
            if path.name.startswith(MANIFEST_PREFIX) and path.name.endswith(".json")
        ]

    def claim(
        self, writer: Writer, file_names: Sequence[str], *, ended: EndedState | None = None
    ) -> dict[str, list[int]]:
        """
        Claim ``file_names`` for a task instance; refuse files another task instance is writing.

        The claim (:func:`claim_name`) is written whole, and only then are the folder's other claims
        read: of two writers that claim a file at the same moment, at least the later to list sees the
        other's claim. Each writer holds its claim until its run has ended (the caller removes it
        with :meth:`release` whatever happens), so two writers of one file never overlap.

        - Another task instance's claim on one of the files raises
          :class:`~airflow_capillary_audit.exceptions.CapillaryFolderBusyError` naming it, unless
          ``ended`` (which asks Airflow) says that writer ended: that claim is stale, left by a
          process killed outright, and is removed with a warning.
        - The claims, and then the manifests, of other map indexes of the same DAG run and task are
          returned instead: each file one holds, with the map indexes holding it. The caller refuses
          to run when that is not empty (a mapped instance's manifest counts: its groups overlap).
        - The writer's own claim (an earlier try of the same task instance) is replaced.

        It needs a store that lists an object once it is written: local disk, S3 and GCS do.

        :param ended: given a claim's writer, the state it ended in, or ``None`` while it may run.
        """
        try:
            self._make_folder()
        except Exception as err:
            raise CapillaryWriteError(f"Cannot prepare destination {self.uri!r}: {err}") from err
        self._write_claim(writer, file_names)
        wanted = set(file_names)
        held: dict[str, set[int]] = {}
        busy: list[Claim] = []
        try:
            # Claims first, then manifests, each in a listing of its own: an instance removes its claim
            # only after its manifest is written, so a claim removed during the first is in the second.
            for other in self._claims(writer):
                if not other.files & wanted:
                    continue
                if _same_run(other.writer, writer):
                    for name in other.files & wanted:
                        held.setdefault(name, set()).add(other.writer.map_index)
                elif not self._stale(other, ended):
                    busy.append(other)
            for index, files in self._sibling_manifests(writer):
                for name in files & wanted:
                    held.setdefault(name, set()).add(index)
        except CapillaryError:
            raise
        except Exception as err:
            raise CapillaryWriteError(f"Cannot read the claims in {self.uri!r}: {err}") from err
        if busy:
            raise CapillaryFolderBusyError(self._busy_message(busy, wanted), claims=[c.name for c in busy])
        return {name: sorted(indexes) for name, indexes in sorted(held.items())}

    def _claims(self, writer: Writer) -> list[Claim]:
        """Return every claim in the folder but the writer's own, and none this package cannot have made."""
        # A listing the filesystem cached before other writers wrote their claims would hide them.
        self.root.fs.invalidate_cache(self.root.path)
        if not self.root.exists():
            return []
        own = claim_name(writer)
        claims = []
        for path in self.root.iterdir():
            named = path.name.startswith(CLAIM_PREFIX + ".") and path.name.endswith(".json")
            if not named or path.name == own:
                continue
            claim = _read_claim(path)
            if claim is not None and claim.writer != writer:
                claims.append(claim)
        return claims

    def _sibling_manifests(self, writer: Writer) -> list[tuple[int, set[str]]]:
        """Return the map index and files of each manifest of the same run and task by another map index."""
        if writer.map_index < 0:
            return []
        start = manifest_name(writer.dag_id, writer.task_id).removesuffix(".json") + ".map-"
        held = []
        for path in self.root.iterdir():
            index = path.name.removeprefix(start).removesuffix(".json")
            if not path.name.startswith(start) or not path.name.endswith(".json") or not index.isdigit():
                continue
            if int(index) == writer.map_index:
                continue
            document = _read_json(path)
            if not isinstance(document, dict) or not _same_run(_writer_of(document), writer):
                continue
            files = _listed_files(path, document)
            if files is not None:
                held.append((int(index), files))
        return held

    def _stale(self, claim: Claim, ended: EndedState | None) -> bool:
        """Remove a claim whose writer Airflow says has ended, and tell whether it was so."""
        state = ended(claim.writer) if ended is not None else None
        if state is None:
            return False
        path = self.root / claim.name
        log.warning(
            "The claim %s of %s is stale, and is removed: Airflow says that task instance is %s, so it is "
            "writing nothing (a process killed outright leaves its claim)",
            path,
            claim.describe(),
            state,
        )
        try:
            path.unlink(missing_ok=True)
        except Exception as err:  # noqa: BLE001 - a stale claim is passed over whether it goes or not
            log.warning("Could not remove the stale claim %s; delete it by hand: %s", path, err)
        return True

    def _busy_message(self, busy: list[Claim], wanted: set[str]) -> str:
        lines = []
        for claim in busy:
            events = ", ".join(_event_of(name) for name in sorted(claim.files & wanted))
            lines.append(
                f"{claim.describe()} is writing {events} there; if it is no longer running, delete its "
                f"claim {self.root / claim.name}"
            )
        return (
            f"Another task is writing files of this run into {self.uri}: " + "; ".join(lines) + ". Two tasks "
            "must not write one file at the same time, or each would overwrite the other's: run them one "
            "after the other (a dependency, or a pool of one slot) or give them different destinations. "
            "No audit log was requested and nothing was written"
        )

    def _write_claim(self, writer: Writer, file_names: Sequence[str]) -> None:
        document = {
            "dag_id": writer.dag_id,
            "task_id": writer.task_id,
            "run_id": writer.run_id,
            "map_index": writer.map_index,
            "files": list(file_names),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "claimed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        body = (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()

        def write_body(out: HashingWriter) -> int:
            out.write(body)
            return 0

        self._write(claim_name(writer), write_body)

    def release(self, writer: Writer) -> None:
        """
        Remove the writer's claim, if it is there.

        A store that refuses the delete (a bucket policy without ``s3:DeleteObject``) gets the claim
        rewritten without files instead: it then holds nothing, and the failed delete is logged.
        """
        path = self.root / claim_name(writer)
        try:
            path.unlink(missing_ok=True)
        except Exception as err:  # noqa: BLE001 - whatever the store raises, an emptied claim will do
            try:
                self._write_claim(writer, [])
            except Exception:  # noqa: BLE001 - the delete's error is the one that says why
                raise CapillaryWriteError(f"Cannot remove the claim {path}: {err}") from err
            log.warning(
                "Could not remove the claim %s, so it now claims no file; delete it by hand: %s", path, err
            )

    def write(self, name: str, write_body: WriteBody) -> WrittenFile:
        """
        Write one file whole: ``write_body`` streams into it and returns its row count.

        Right before the file replaces what is at its name, every other manifest that lists that name
        is removed (see :meth:`prepare`): from then on it would describe a file that is gone.

        :param name: the file's name inside the folder.
        :param write_body: writes the content into the binary file object it is given.
        """
        return self._write(name, write_body, before_commit=lambda: self._withdraw(name))

    def _withdraw(self, name: str) -> None:
        for manifest in self._listed_by(name):
            (self.root / manifest).unlink(missing_ok=True)

    def _write(
        self, name: str, write_body: WriteBody, before_commit: Callable[[], None] | None = None
    ) -> WrittenFile:
        final = self.root / name
        scheme = urlsplit(self.uri).scheme
        try:
            if scheme == "file":
                out, rows = write_renamed(final.path, write_body, before_commit)
            elif scheme in DEFERRED_COMMIT_SCHEMES:
                out, rows = write_committed(final, write_body, before_commit)
            else:
                out, rows = write_copied(self.root, final, write_body, before_commit)
        except BaseException as err:
            # The package's own errors (a malformed answer met while writing) keep their type and message.
            if isinstance(err, Exception) and not isinstance(err, CapillaryError):
                raise CapillaryWriteError(f"Cannot write {final}: {err}") from err
            raise
        return WrittenFile(name=name, uri=str(final), rows=rows, bytes=out.bytes, sha256=out.sha256)

    def remove(self, name: str) -> None:
        """
        Remove the file of an event this run did not write, unless another task's manifest lists it.

        Such a file is an earlier run's of this task (whose manifest :meth:`prepare` removed) or one
        that no manifest describes, and it goes. A file that another task instance's manifest lists is
        that task's, whole and as described, since nobody replaced it while this run held its claim:
        it stays, and so does that manifest.
        """
        path = self.root / name
        try:
            listing = [manifest for manifest in self._listed_by(name) if (self.root / manifest).exists()]
            if listing:
                log.info("Kept %s, which %s lists: another task wrote it", path, " and ".join(listing))
                return
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

        return self._write(manifest_name(run.dag_id, run.task_id, run.map_index), write_body)


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


def claim_name(writer: Writer) -> str:
    """
    Return the name of a task instance's claim: ``_claim.<dag_id>.<task_id>.<run_id>.json``, with
    ``.map-<index>`` before ``.json`` for a mapped instance; ids encoded as in :func:`manifest_name`.
    """
    ids = (writer.dag_id, writer.task_id, writer.run_id)
    parts = [CLAIM_PREFIX, *(_name_part(part) for part in ids if part)]
    if writer.map_index >= 0:
        parts.append(f"map-{writer.map_index}")
    return ".".join(parts) + ".json"


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
    if parts.scheme == "file":
        # Dots are read as a plain path's are: "file:///data/.." is the root, as "/data/.." is.
        path = posixpath.normpath(parts.path) if parts.path else ""
        if not path.strip("/"):
            return None
        return f"file://{parts.netloc}/{path.lstrip('/')}" if path.startswith("/") else uri
    if not parts.netloc:
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


def _listed_files(path: ObjectStoragePath, document: object = None) -> set[str] | None:
    """Return the file names a manifest lists, or None when it is not one this package could write."""
    if document is None:
        document = _read_json(path)
    try:
        return {str(event["file"]) for event in document["events"]}  # type: ignore[index]
    except (TypeError, KeyError):
        return None


def _writer_of(document: dict[str, Any]) -> Writer:
    map_index = document.get("map_index")
    return Writer(
        document.get("dag_id"),
        document.get("task_id"),
        document.get("run_id"),
        map_index if isinstance(map_index, int) and not isinstance(map_index, bool) else -1,
    )


def _same_run(one: Writer, other: Writer) -> bool:
    """Whether two writers are instances of one task in one DAG run (another map index, or itself)."""
    return (one.dag_id, one.task_id, one.run_id) == (other.dag_id, other.task_id, other.run_id)


def _read_claim(path: ObjectStoragePath) -> Claim | None:
    """Return a claim read from the folder, or None when it is gone or not one this package could write."""
    document = _read_json(path)
    if not isinstance(document, dict):
        return None
    files = document.get("files")
    writer = _writer_of(document)
    # A claim is named after its writer, which is at least a task: any other is not one this package wrote.
    if not isinstance(files, list) or not writer.task_id or claim_name(writer) != path.name:
        return None
    pid = document.get("pid")
    return Claim(
        name=path.name,
        writer=writer,
        files=frozenset(str(name) for name in files),
        host=str(document["host"]) if document.get("host") else None,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        claimed_at=str(document["claimed_at"]) if document.get("claimed_at") else None,
    )


def _event_of(file_name: str) -> str:
    """Name an event's file as the user wrote the event: ``event 'PointsRedeemed' (PointsRedeemed.jsonl)``."""
    try:
        event_name, _ = event_name_from_file(file_name)
    except ValueError:
        return file_name
    return f"event {event_name!r} ({file_name})"


def ended_in_airflow(ti: object) -> EndedState | None:
    """
    Return how to ask Airflow whether a claim's writer has ended, through a running task's ``ti``.

    A writer Airflow does not know (another deployment sharing the store), or whose state it cannot
    give, may be writing: the answer is then ``None``, and its claim stands.
    """
    get_task_states = getattr(ti, "get_task_states", None)
    if not callable(get_task_states):
        return None

    def ended(writer: Writer) -> str | None:
        if not (writer.dag_id and writer.task_id and writer.run_id):
            return None
        try:
            states = get_task_states(
                dag_id=writer.dag_id,
                task_ids=[writer.task_id],
                run_ids=[writer.run_id],
                map_index=writer.map_index,
            )
        except Exception as err:  # noqa: BLE001 - a claim Airflow cannot judge stands
            log.info("Could not ask Airflow about %s: %s", writer.describe(), err)
            return None
        key = writer.task_id if writer.map_index < 0 else f"{writer.task_id}_{writer.map_index}"
        run_states = (states or {}).get(writer.run_id, {})
        if key not in run_states:
            return None
        state = getattr(run_states[key], "value", run_states[key])
        if state is None:
            return "without a state (cleared)"
        return None if str(state) in WRITING_STATES else str(state)

    return ended
