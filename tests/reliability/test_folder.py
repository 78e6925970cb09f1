"""What a reader of the destination folder sees: whole files only, and a manifest that matches them."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from airflow_capillary_audit.commit import TEMP_PREFIX
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import CapillaryStandIn
from tests.helpers import (
    LOGIN,
    MANIFEST,
    PASSWORD,
    data_files,
    event_rows,
    fetch_to,
    hidden_files,
    jsonl_rows,
    logged,
    manifest_of,
    needs_proc_fd,
    org_dataset,
    record_disk_syncs,
    refuse_deletes,
    use_capillary,
)

pytestmark = pytest.mark.airflow

# Two events of 60,000 rows each: each file takes a good fraction of a second to write, long enough
# for a reader polling the folder to catch it half-written many times over.
BIG = org_dataset(seed=11, records_per_event=(1500, 1500), history_per_record=(40, 40), recent_changes=(0, 0))
BIG_NAMES = ["big event one", "big event two"]


class FolderWatcher:
    """Poll a folder from another thread, keeping the SHA-256 of every version of every file seen."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.versions: dict[str, set[str]] = {}
        self.hidden: set[str] = set()
        self._last: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="folder-watcher", daemon=True)

    def __enter__(self) -> FolderWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.look()  # whatever landed after the last poll

    def _poll(self) -> None:
        # A short pause between looks leaves the writer the core and the GIL it needs.
        while not self._stop.wait(0.002):
            self.look()

    def look(self) -> None:
        """Read each file that is new or changed since the last look."""
        for entry in os.scandir(self.folder):
            if entry.name.startswith("."):
                self.hidden.add(entry.name)
                continue
            try:
                status = entry.stat()
                key = (status.st_ino, status.st_size, status.st_mtime_ns)
                if self._last.get(entry.name) == key:
                    continue
                data = Path(entry.path).read_bytes()
            except FileNotFoundError:
                continue
            self._last[entry.name] = key
            self.versions.setdefault(entry.name, set()).add(hashlib.sha256(data).hexdigest())


def test_a_reader_of_the_folder_never_sees_a_partial_file(monkeypatch, airflow_db, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=BIG) as api:
        use_capillary(monkeypatch, api.url, timeout=60)
        with FolderWatcher(folder) as watcher:
            fetch_to(folder, BIG_NAMES)

    final = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert sorted(final) == sorted([MANIFEST, *(event_file_name(n, "jsonl") for n in BIG_NAMES)])
    # Every version of a visible file that the reader ever saw is the final, whole one.
    assert watcher.versions == {name: {digest} for name, digest in final.items()}
    # The files were written where the reader could see them being written: under a hidden name.
    assert any(name.startswith(TEMP_PREFIX) for name in watcher.hidden)
    assert hidden_files(folder) == []
    for name in BIG_NAMES:
        rows = jsonl_rows(folder / event_file_name(name, "jsonl"))
        assert len(rows) == 60_000
        assert rows == event_rows(BIG, name)


DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(task_id="fetch", event_names={names!r}, destination={folder!r}, output_format={fmt!r})
"""
NAMES = ["PointsRedeemed", "Café Visit ☕", "coupons & offers"]


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_the_manifest_describes_the_files_it_lists(api, monkeypatch, run_dag, tmp_path, output_format):
    use_capillary(monkeypatch, api.url)
    folder = tmp_path / "out"

    dag_run, xcom = run_dag(DAG.format(names=NAMES, folder=str(folder), fmt=output_format))

    assert dag_run.state == "success"
    [ti] = dag_run.get_task_instances()
    manifest = manifest_of(folder)
    assert [e["event_name"] for e in manifest["events"]] == NAMES
    listed = {e["file"] for e in manifest["events"]}
    assert listed == set(data_files(folder)) == {event_file_name(n, output_format) for n in NAMES}
    for entry in manifest["events"]:
        content = (folder / entry["file"]).read_bytes()
        assert entry["bytes"] == len(content) == os.path.getsize(folder / entry["file"])
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["records"] == len(api.dataset.records(entry["event_name"]))
        assert entry["rows"] == len(event_rows(api.dataset, entry["event_name"]))
    assert manifest["total_rows"] == sum(e["rows"] for e in manifest["events"]) == xcom("fetch")["total_rows"]
    # fetched_at: an ISO 8601 time in UTC, taken while the task ran.
    fetched_at = datetime.fromisoformat(manifest["fetched_at"])
    assert fetched_at.utcoffset() == timedelta(0)
    assert manifest["fetched_at"].endswith("+00:00")
    assert ti.start_date <= fetched_at <= ti.end_date
    assert (manifest["run_id"], manifest["task_id"], manifest["output_format"]) == (
        dag_run.run_id,
        "fetch",
        output_format,
    )


@needs_proc_fd
def test_every_file_is_on_disk_before_the_manifest_that_lists_it(api, monkeypatch, airflow_db, tmp_path):
    use_capillary(monkeypatch, api.url)
    folder = (tmp_path / "out").resolve()
    syncs = record_disk_syncs(monkeypatch)

    fetch_to(folder, NAMES)

    ours = [event for event in syncs if any(path.startswith(str(folder)) for path in event[1:])]
    renamed = {event[2]: at for at, event in enumerate(ours) if event[0] == "rename"}
    assert sorted(os.path.basename(target) for target in renamed) == sorted(
        [MANIFEST, *(event_file_name(n, "jsonl") for n in NAMES)]
    )
    manifest_at = renamed[str(folder / MANIFEST)]
    for target, at in renamed.items():
        # The data was synced under the hidden name before the rename, and the rename synced after it.
        assert ("fsync", ours[at][1]) in ours[:at]
        assert ("fsync", str(folder)) in ours[at + 1 :]
        if target != str(folder / MANIFEST):
            assert ("fsync", str(folder)) in ours[at + 1 : manifest_at]


def test_a_store_that_refuses_deletes_still_gets_every_file_and_the_manifest(
    api, monkeypatch, airflow_db, memory_store, capfd, caplog
):
    use_capillary(monkeypatch, api.url)
    refuse_deletes(monkeypatch, memory_store)

    summary = fetch_to("memory://audit-bucket/capillary", NAMES)

    assert summary["total_rows"] == sum(len(event_rows(api.dataset, name)) for name in NAMES)
    manifest = json.loads(memory_store.cat(f"/audit-bucket/capillary/{MANIFEST}"))
    assert [entry["event_name"] for entry in manifest["events"]] == NAMES
    for entry in manifest["events"]:
        content = memory_store.cat(f"/audit-bucket/capillary/{entry['file']}")
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert [json.loads(line) for line in content.decode().splitlines()] == event_rows(
            api.dataset, entry["event_name"]
        )
    # Each file and the manifest left a temporary object behind, and the log names every one.
    leftovers = [p for p in memory_store.find("/audit-bucket") if p.rpartition("/")[2].startswith(TEMP_PREFIX)]
    assert len(leftovers) == len(NAMES) + 1
    log = logged(capfd, caplog)
    for leftover in leftovers:
        assert leftover in log
