"""Committing a file: the folder's own sync, where the system can make one."""

from __future__ import annotations

import os

from airflow_capillary_audit.commit import fsync_folder
from tests.helpers import needs_proc_fd, record_disk_syncs


@needs_proc_fd
def test_a_folder_is_synced_and_skipped_on_windows(tmp_path, monkeypatch):
    syncs = record_disk_syncs(monkeypatch)

    fsync_folder(str(tmp_path))
    assert syncs == [("fsync", str(tmp_path))]

    # Windows cannot open a folder to sync it: there the sync is skipped, not tried.
    monkeypatch.setattr(os, "name", "nt")
    fsync_folder(str(tmp_path))
    monkeypatch.undo()

    assert syncs == [("fsync", str(tmp_path))]
