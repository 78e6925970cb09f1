"""
Rows of one run, kept in a temporary file from the moment they are shaped until the database takes them.

A table load begins its transaction only once every event is fetched, so the rows of the events
fetched first must wait somewhere. Held in memory, they made a run's peak memory grow with its
rows; the spool writes them to an unnamed temporary file in pages, as each event is shaped (from
any thread), and reads them back one page at a time, event by event in the order asked. Memory
holds a page per writing thread, never the run.
"""

from __future__ import annotations

import pickle
import tempfile
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any

from airflow_capillary_audit.tables import batches

# Rows a page: large enough that pickling a page costs little per row, small enough to stay a few hundred kB.
PAGE_ROWS = 2_000


class RowSpool:
    """
    An append-only store of rows by key (the event name), in a temporary file removed when closed.

    The file is unnamed (``tempfile.TemporaryFile``, under ``TMPDIR``), readable by this process only,
    and gone when the spool is closed or the process ends, however it ends. Pages are pickled: the
    file is this process's own, written and read within one run.

    :param directory: where the file goes; ``None`` is the system's temporary folder (``TMPDIR``).
    """

    def __init__(self, directory: str | None = None) -> None:
        # Open for the spool's life, closed by close().
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="capillary-rows-", dir=directory)  # noqa: SIM115
        self._lock = threading.Lock()
        self._size = 0
        self._pages: dict[str, list[tuple[int, int]]] = {}
        self.rows = 0

    def write(self, key: str, rows: Iterable[tuple[Any, ...]]) -> int:
        """Append ``rows`` under ``key`` (after any written before under it); return how many."""
        count = 0
        for page in batches(rows, PAGE_ROWS):
            data = pickle.dumps(page, protocol=pickle.HIGHEST_PROTOCOL)
            with self._lock:
                self._file.seek(self._size)
                self._file.write(data)
                self._pages.setdefault(key, []).append((self._size, len(data)))
                self._size += len(data)
                self.rows += len(page)
            count += len(page)
        return count

    def read(self, keys: Iterable[str]) -> Iterator[tuple[Any, ...]]:
        """Yield the rows of each key in turn, in the order they were written; call once writing is done."""
        for key in keys:
            for offset, size in self._pages.get(key, ()):
                with self._lock:
                    self._file.seek(offset)
                    data = self._file.read(size)
                yield from pickle.loads(data)

    def close(self) -> None:
        """Remove the file."""
        self._file.close()

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
