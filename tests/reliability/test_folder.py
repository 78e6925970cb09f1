"""What a reader of the destination folder sees: whole files only, and a manifest that matches them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from airflow_capillary_audit.commit import TEMP_PREFIX
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import CapillaryStandIn, Fault
from tests.helpers import (
    FAST_RETRIES,
    LOGIN,
    MANIFEST,
    PASSWORD,
    DagProcess,
    connection_json,
    data_files,
    event_rows,
    fetch_to,
    hidden_files,
    jsonl_rows,
    logged,
    logged_matching,
    manifest_of,
    manifests_in,
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
    # Every version of a visible file that the reader ever saw is the final, whole one; the run's
    # claim was there while it wrote, whole too, and is gone.
    claims = {name: versions for name, versions in watcher.versions.items() if name.startswith("_claim")}
    assert list(claims) == ["_claim.fetch.json"] and len(claims["_claim.fetch.json"]) == 1
    assert {n: v for n, v in watcher.versions.items() if n not in claims} == {
        name: {digest} for name, digest in final.items()
    }
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
        ["_claim.fetch.json", MANIFEST, *(event_file_name(n, "jsonl") for n in NAMES)]
    )
    # The claim is written whole and synced, as every file is, before the first event's file.
    assert min(renamed.values()) == renamed[str(folder / "_claim.fetch.json")]
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
    # Each file, the manifest, the claim and the claim emptied at the end left a temporary object
    # behind, and the log names every one.
    leftovers = [p for p in memory_store.find("/audit-bucket") if p.rpartition("/")[2].startswith(TEMP_PREFIX)]
    assert len(leftovers) == len(NAMES) + 3
    log = logged(capfd, caplog)
    for leftover in leftovers:
        assert leftover in log
    # The claim the store would not delete holds no file: the next writer of these files goes ahead.
    assert json.loads(memory_store.cat("/audit-bucket/capillary/_claim.fetch.json"))["files"] == []


# Two tasks of two DAGs that write one event's file into one folder, each with an event of its own.
SHARED = "PointsRedeemed"
SLOW_ONLY, QUICK_ONLY = "good", "fine"
WRITER_DAG = """
import pathlib, time
import pendulum
from airflow.sdk import DAG, task
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    @task
    def wait_for(path):
        # The test's signal to start: the other writer's request is in flight.
        while path and not pathlib.Path(path).exists():
            time.sleep(0.05)

    wait_for({go!r}) >> CapillaryAuditLogsOperator(
        task_id={task_id!r}, event_names={names!r}, destination={folder!r}, flatten={flatten!r}, outlets=[],
    )
"""


def writer_dag(task_id: str, names: list[str], folder: Path, go: Path | None = None, flatten: bool = True) -> str:
    """A DAG whose task writes ``names`` into ``folder``, once the file ``go`` exists if one is given."""
    return WRITER_DAG.format(
        task_id=task_id, names=names, folder=str(folder), go=str(go) if go else None, flatten=flatten
    )


def assert_every_manifest_is_true(folder: Path) -> None:
    """Each file every manifest lists is there, with the bytes, rows and SHA-256 the manifest states."""
    for name, manifest in manifests_in(folder).items():
        for entry in manifest["events"]:
            path = folder / entry["file"]
            assert path.exists(), f"{name} lists {entry['file']}, which is gone"
            content = path.read_bytes()
            assert (len(content), content.count(b"\n"), hashlib.sha256(content).hexdigest()) == (
                entry["bytes"],
                entry["rows"],
                entry["sha256"],
            ), f"{name} does not describe {entry['file']}"


def wait_for_request(api, event_name: str, process: DagProcess) -> None:
    while not any(r.event_name == event_name for r in api.requests):
        assert process.running(), process.wait()
        time.sleep(0.05)


def test_two_tasks_writing_one_file_at_overlapping_times_leave_every_manifest_true(api, airflow_db, tmp_path):
    folder = tmp_path / "out"
    go = tmp_path / "go"
    # The first request for the shared event (the slow writer's) takes 15 s to answer.
    api.set_faults([Fault("slow", seconds=15, times=1, event_names=[SHARED])])
    env = {"AIRFLOW_CONN_CAPILLARY_DEFAULT": connection_json(api.url, **{**FAST_RETRIES, "timeout": 60})}
    # Their files differ (records against rows), as two tasks' with other windows or options would.
    slow_dag = writer_dag("fetch_slow", [SHARED, SLOW_ONLY], folder, flatten=False)
    slow = DagProcess(tmp_path, "slow_writer", slow_dag, env)
    quick = DagProcess(tmp_path, "quick_writer", writer_dag("fetch_quick", [SHARED, QUICK_ONLY], folder, go), env)
    try:
        # The stand-in records a request once answered: the slow writer's other event is answered at once.
        wait_for_request(api, SLOW_ONLY, slow)
        go.touch()  # the quick writer starts while the slow one waits for its answer
        quick_log = quick.wait()
        slow_log = slow.wait()
    finally:
        quick.kill()
        slow.kill()

    assert "fetch_slow" in slow_log and "state=success" in slow_log.replace(" ", ""), slow_log
    assert_every_manifest_is_true(folder)
    # The quick writer was refused before any audit-log request, naming the task that writes the file.
    assert [r.event_name for r in api.requests].count(SHARED) == 1
    assert QUICK_ONLY not in [r.event_name for r in api.requests]
    assert "slow_writer" in quick_log and "fetch_slow" in quick_log
    assert list(manifests_in(folder)) == ["_manifest.slow_writer.fetch_slow.json"]


def test_a_failed_writer_leaves_the_file_another_task_wrote(api, monkeypatch, run_dag, tmp_path):
    folder = tmp_path / "out"
    use_capillary(monkeypatch, api.url)
    first, _ = run_dag(writer_dag("fetch_first", [SHARED, "a"], folder))
    assert first.state == "success"
    written = data_files(folder)
    manifests = manifests_in(folder)

    # A task of another DAG writes the same file later, and that event fails for it.
    api.set_faults([Fault("http_400", event_names=[SHARED])])
    second, _ = run_dag(writer_dag("fetch_second", [SHARED, "b"], folder, flatten=False))

    assert second.state == "failed"
    assert_every_manifest_is_true(folder)
    assert data_files(folder)[event_file_name(SHARED, "jsonl")] == written[event_file_name(SHARED, "jsonl")]
    assert manifests_in(folder) == manifests


KILLED_DAG = """
import pendulum
from airflow.sdk import DAG, task
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator
from airflow_capillary_audit.sinks import FolderSink, Writer

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    @task
    def killed(**context):
        # Claims the file as a writer does, then dies without releasing it, as a killed process would.
        ti = context["ti"]
        FolderSink({folder!r}).claim(Writer(ti.dag_id, ti.task_id, ti.run_id, ti.map_index), [{file!r}])
        raise RuntimeError("killed")

    killed() >> CapillaryAuditLogsOperator(
        task_id="fetch", event_names=[{event!r}], destination={folder!r}, outlets=[], trigger_rule="all_done",
    )
"""


def test_a_claim_airflow_knows_has_ended_is_removed_and_the_run_goes_on(
    api, monkeypatch, run_dag, tmp_path, capfd, caplog
):
    folder = tmp_path / "out"
    use_capillary(monkeypatch, api.url)
    file_name = event_file_name(SHARED, "jsonl")

    dag_run, xcom = run_dag(KILLED_DAG.format(folder=str(folder), file=file_name, event=SHARED))

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"killed": "failed", "fetch": "success"}
    assert xcom("fetch")["rows"] == {SHARED: len(event_rows(api.dataset, SHARED))}
    assert_every_manifest_is_true(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([file_name, f"_manifest.{dag_run.dag_id}.fetch.json"])
    assert logged_matching(
        rf"The claim \S+/_claim\.{dag_run.dag_id}\.killed\.\S+\.json of task 'killed' of DAG "
        rf"'{dag_run.dag_id}', run '{re.escape(dag_run.run_id)}' \(host .*, pid \d+, since \S+\) is stale, "
        r"and is removed: Airflow says that task instance is failed, so it is writing nothing \(a process "
        r"killed outright leaves its claim\)",
        logged(capfd, caplog),
    )


def test_a_claim_of_a_task_this_airflow_does_not_know_stands(api, monkeypatch, run_dag, tmp_path):
    from airflow_capillary_audit.sinks import FolderSink, Writer

    folder = tmp_path / "out"
    use_capillary(monkeypatch, api.url)
    # Another deployment's task, on the same store: Airflow here cannot say it ended.
    elsewhere = Writer("audit_in_staging", "fetch", "manual__1")
    FolderSink(str(folder)).claim(elsewhere, [event_file_name(SHARED, "jsonl")])

    dag_run, _ = run_dag(writer_dag("fetch_here", [SHARED], folder))

    assert dag_run.state == "failed"
    assert [r.event_name for r in api.requests if r.event_name is not None] == []
    assert sorted(p.name for p in folder.iterdir()) == ["_claim.audit_in_staging.fetch.manual__1.json"]
