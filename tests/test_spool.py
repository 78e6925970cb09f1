"""The spool: rows of a run in a temporary file, read back by event in the order asked."""

from __future__ import annotations

import os
import threading

from airflow_capillary_audit import spool
from airflow_capillary_audit.spool import RowSpool


def test_rows_come_back_by_key_in_the_order_asked_each_key_in_the_order_written(monkeypatch):
    monkeypatch.setattr(spool, "PAGE_ROWS", 2)
    with RowSpool() as rows:
        assert rows.write("b", [("b", 1), ("b", 2), ("b", 3)]) == 3
        assert rows.write("a", iter([("a", 1)])) == 1
        assert rows.write("b", [("b", 4)]) == 1
        assert rows.write("empty", []) == 0

        assert rows.rows == 5
        assert list(rows.read(["a", "b", "empty", "never written"])) == [
            ("a", 1),
            ("b", 1),
            ("b", 2),
            ("b", 3),
            ("b", 4),
        ]
        # Read again, in another order: the file is read, not consumed.
        assert list(rows.read(["b"])) == [("b", 1), ("b", 2), ("b", 3), ("b", 4)]


def test_values_come_back_as_written():
    values = ("é\ufffd", None, 2**63 - 1, -1, "", "x" * 100_000, "\U0001f600")
    with RowSpool() as rows:
        rows.write("k", [values])
        assert list(rows.read(["k"])) == [values]


def test_writers_on_many_threads_keep_each_keys_rows_whole_and_in_order(monkeypatch):
    monkeypatch.setattr(spool, "PAGE_ROWS", 7)
    keys = [f"event{n}" for n in range(8)]
    with RowSpool() as rows:
        threads = [
            threading.Thread(target=rows.write, args=(key, [(key, i) for i in range(500)])) for key in keys
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert list(rows.read(keys)) == [(key, i) for key in keys for i in range(500)]


def open_files_under(folder) -> list[str]:
    """Return what this process's open files point at under ``folder`` (Linux's /proc)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used, closed since
            continue
    return [link for link in links if link.startswith(str(folder))]


def test_the_file_is_in_the_folder_given_has_no_name_there_and_is_gone_when_closed(tmp_path):
    with RowSpool(str(tmp_path)) as rows:
        rows.write("k", [("v",)])
        # Unnamed: nothing to leave behind however the process ends.
        assert os.listdir(tmp_path) == []
        (link,) = open_files_under(tmp_path)
        assert link.endswith(" (deleted)")
    assert open_files_under(tmp_path) == []
