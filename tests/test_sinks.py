"""The storage sink: no bucket is created, files commit whole (synced on disk), bad stores fail early."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
from datetime import datetime, timedelta, timezone

import pytest

from airflow_capillary_audit.commit import TEMP_PREFIX
from airflow_capillary_audit.exceptions import (
    CapillaryConfigError,
    CapillaryFolderBusyError,
    CapillaryResponseError,
    CapillaryWriteError,
)
from airflow_capillary_audit.sinks import (
    EventFile,
    FolderSink,
    LineageName,
    MappedInstance,
    RunInfo,
    Writer,
    WrittenFile,
    claim_name,
    lineage_name,
    manifest_document,
    manifest_name,
    static_folder_uri,
)
from tests.helpers import files_in, needs_proc_fd, record_disk_syncs, refuse_deletes, warnings_logged

RUN = RunInfo(
    dag_id="capillary_audit_daily",
    task_id="fetch",
    run_id="manual__é",
    map_index=-1,
    fetched_at=datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=timezone.utc),
    capillary_conn_id="capillary_default",
    output_format="jsonl",
    flatten=True,
    changed_since=datetime(2026, 11, 24, tzinfo=timezone.utc),
    changed_until=None,
)
EVENTS = [
    EventFile(
        "Café", WrittenFile("Caf%C3%A9.jsonl", "file:///x/Caf%C3%A9.jsonl", 3, 120, "a" * 64), records=2
    ),
    EventFile(
        "Visit ☕", WrittenFile("Visit%20%E2%98%95.jsonl", "file:///x/V.jsonl", 0, 0, "b" * 64), records=1
    ),
]


def one_row(out) -> int:
    out.write(b'{"a":1}\n')
    return 1


def test_prepare_creates_no_bucket_on_an_object_store(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary/2026-11-24")
    sink.check()
    sink.prepare(manifest_name("d", "t"), ["a.jsonl"])
    assert not memory_store.exists("/audit-bucket")


def test_a_failed_write_leaves_nothing_behind(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary")

    def broken(out):
        out.write(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(CapillaryWriteError, match="disk full"):
        sink.write("e.jsonl", broken)
    assert memory_store.find("/audit-bucket") == []


def test_a_committed_file_carries_its_checksum(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary")
    content = [b'{"a":1}\n', b'{"a":2}\n']

    def write_body(out) -> int:
        for line in content:
            out.write(line)
        return len(content)

    written = sink.write("e.jsonl", write_body)
    data = b"".join(content)
    assert memory_store.cat("/audit-bucket/capillary/e.jsonl") == data
    assert (written.name, written.rows, written.bytes) == ("e.jsonl", 2, len(data))
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert written.uri.endswith("audit-bucket/capillary/e.jsonl")
    assert memory_store.find("/audit-bucket") == ["/audit-bucket/capillary/e.jsonl"]


def test_a_failed_rewrite_keeps_the_file_it_would_have_replaced(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary")
    sink.write("e.jsonl", lambda out: out.write(b'{"a":1}\n') and 1)

    def broken(out) -> int:
        out.write(b'{"a":')
        raise RuntimeError("connection lost")

    with pytest.raises(CapillaryWriteError, match="connection lost"):
        sink.write("e.jsonl", broken)
    assert memory_store.find("/audit-bucket") == ["/audit-bucket/capillary/e.jsonl"]
    assert memory_store.cat("/audit-bucket/capillary/e.jsonl") == b'{"a":1}\n'


def test_the_manifest_is_written_whole_and_described(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary")

    written = sink.write_manifest(RUN, EVENTS)

    data = memory_store.cat("/audit-bucket/capillary/_manifest.capillary_audit_daily.fetch.json")
    assert json.loads(data) == manifest_document(RUN, EVENTS)
    assert "Visit ☕".encode() in data  # readable UTF-8, not \u escapes
    assert (written.name, written.bytes, written.sha256) == (
        "_manifest.capillary_audit_daily.fetch.json",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


def test_a_temporary_object_left_after_a_good_copy_is_named_and_the_file_kept(
    memory_store, monkeypatch, caplog
):
    sink = FolderSink("memory://audit-bucket/capillary")
    refuse_deletes(monkeypatch, memory_store)

    with caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"):
        written = sink.write("e.jsonl", one_row)

    assert memory_store.cat("/audit-bucket/capillary/e.jsonl") == b'{"a":1}\n'
    assert written.sha256 == hashlib.sha256(b'{"a":1}\n').hexdigest()
    [leftover] = [p for p in memory_store.find("/audit-bucket") if not p.endswith("/e.jsonl")]
    assert leftover.rpartition("/")[2].startswith(TEMP_PREFIX)
    [warning] = warnings_logged(caplog)
    named, _, why = warning.partition("; delete it by hand: ")
    # The message names the temporary object itself, not only through the store's error.
    assert named.startswith("Could not remove the temporary file ") and named.endswith(leftover)
    assert why.startswith("AccessDenied: DeleteObject")


def test_a_failed_write_names_the_temporary_object_it_could_not_remove(memory_store, monkeypatch, caplog):
    sink = FolderSink("memory://audit-bucket/capillary")
    refuse_deletes(monkeypatch, memory_store)

    def broken(out):
        out.write(b"half a file")
        raise RuntimeError("disk full")

    with (
        caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"),
        pytest.raises(CapillaryWriteError, match="disk full"),
    ):
        sink.write("e.jsonl", broken)

    [leftover] = memory_store.find("/audit-bucket")
    assert leftover.rpartition("/")[2].startswith(TEMP_PREFIX)
    [warning] = warnings_logged(caplog)
    assert leftover in warning


@needs_proc_fd
def test_a_local_file_is_synced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    folder = tmp_path.resolve()
    syncs = record_disk_syncs(monkeypatch)

    FolderSink(str(folder)).write("e.jsonl", one_row)

    temp = syncs[0][1]
    assert os.path.dirname(temp) == str(folder)
    assert os.path.basename(temp).startswith(TEMP_PREFIX)
    assert syncs == [("fsync", temp), ("rename", temp, str(folder / "e.jsonl")), ("fsync", str(folder))]
    assert files_in(folder) == {"e.jsonl": b'{"a":1}\n'}


@needs_proc_fd
def test_a_local_removal_is_synced(tmp_path, monkeypatch):
    folder = tmp_path.resolve()
    (folder / "e.jsonl").write_bytes(b"an earlier run's file")
    syncs = record_disk_syncs(monkeypatch)

    FolderSink(str(folder)).remove("e.jsonl")

    assert files_in(folder) == {}
    assert syncs == [("fsync", str(folder))]


def test_a_failed_local_write_keeps_the_earlier_file_and_no_temporary_file(tmp_path):
    sink = FolderSink(str(tmp_path))
    sink.write("e.jsonl", one_row)

    def broken(out) -> int:
        out.write(b'{"a":')
        raise RuntimeError("connection lost")

    with pytest.raises(CapillaryWriteError, match="connection lost"):
        sink.write("e.jsonl", broken)
    assert files_in(tmp_path) == {"e.jsonl": b'{"a":1}\n'}


@pytest.mark.parametrize(
    ("destination", "says"),
    [
        ("memory://bucket/x", "no filesystem for scheme 'memory'"),
        ("gs://bucket/x", "apache-airflow-providers-google"),
        ("nosuchstore://bucket/x", "no filesystem for scheme 'nosuchstore'"),
    ],
)
def test_a_store_airflow_cannot_write_is_refused(destination, says):
    with pytest.raises(CapillaryConfigError, match=says):
        FolderSink(destination).check()


def test_a_scheme_no_provider_serves_is_refused_with_the_stores_that_can():
    with pytest.raises(CapillaryConfigError) as caught:
        FolderSink("nosuchstore://bucket/x").check()
    assert str(caught.value).endswith("; use a local path, file://, s3://, gs://")


def test_a_destination_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(CapillaryConfigError) as caught:
        FolderSink(str(tmp_path / "out")).check()
    assert str(caught.value) == (
        f"destination 'file://{tmp_path}/out' is an existing file; give a folder for the event files"
    )


def test_a_new_destination_is_made_with_its_parents(tmp_path):
    sink = FolderSink(str(tmp_path / "a" / "b" / "c"))

    sink.prepare("_manifest.fetch.json", ["e.jsonl"])
    sink.write("e.jsonl", one_row)

    assert files_in(tmp_path / "a" / "b" / "c") == {"e.jsonl": b'{"a":1}\n'}


def test_the_manifest_states_both_bounds_of_the_window():
    run = dataclasses.replace(RUN, changed_until=datetime(2026, 11, 25, tzinfo=timezone.utc))
    document = manifest_document(run, EVENTS)
    assert (document["changed_since"], document["changed_until"]) == (
        "2026-11-24T00:00:00+00:00",
        "2026-11-25T00:00:00+00:00",
    )


def test_a_local_temporary_file_that_cannot_be_removed_is_named_with_the_reason(
    tmp_path, monkeypatch, caplog
):
    from airflow_capillary_audit import commit

    refused = PermissionError("EACCES: unlink refused")

    def unlink(path, *args, **kwargs):
        raise refused

    monkeypatch.setattr(commit.os, "unlink", unlink)

    def broken(out):
        out.write(b"half")
        raise RuntimeError("disk full")

    with (
        caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"),
        pytest.raises(CapillaryWriteError, match="disk full"),
    ):
        FolderSink(str(tmp_path)).write("e.jsonl", broken)

    monkeypatch.undo()
    [leftover] = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert warnings_logged(caplog) == [
        f"Could not remove the temporary file {leftover}; delete it by hand: EACCES: unlink refused"
    ]


def test_a_store_that_cannot_hold_files_is_refused_with_the_stores_that_can():
    with pytest.raises(CapillaryConfigError) as caught:
        FolderSink("https://example.com/audit").check()
    assert str(caught.value) == (
        "destination 'https://example.com/audit': scheme 'https' cannot be written to; use a local path, "
        "file://, s3://, gs:// or another object store Airflow supports"
    )


def test_removing_what_is_not_a_file_fails_naming_it(tmp_path):
    (tmp_path / "e.jsonl").mkdir()
    sink = FolderSink(str(tmp_path))

    with pytest.raises(CapillaryWriteError) as caught:
        sink.remove("e.jsonl")

    assert str(caught.value).startswith(f"Cannot remove file://{tmp_path}/e.jsonl: ")
    sink.remove("absent.jsonl")  # nothing to remove is not an error


def test_the_manifest_is_indented_json_in_a_fixed_order(tmp_path):
    FolderSink(str(tmp_path)).write_manifest(RUN, EVENTS)

    text = (tmp_path / "_manifest.capillary_audit_daily.fetch.json").read_text(encoding="utf-8")
    assert text == (
        "{\n"
        '  "manifest_version": 1,\n'
        '  "dag_id": "capillary_audit_daily",\n'
        '  "task_id": "fetch",\n'
        '  "run_id": "manual__é",\n'
        '  "map_index": -1,\n'
        '  "fetched_at": "2026-11-25T01:02:03.456789+00:00",\n'
        '  "capillary_conn_id": "capillary_default",\n'
        '  "output_format": "jsonl",\n'
        '  "flatten": true,\n'
        '  "changed_since": "2026-11-24T00:00:00+00:00",\n'
        '  "changed_until": null,\n'
        '  "total_rows": 3,\n'
        '  "events": [\n'
        "    {\n"
        '      "event_name": "Café",\n'
        '      "file": "Caf%C3%A9.jsonl",\n'
        '      "rows": 3,\n'
        '      "records": 2,\n'
        '      "bytes": 120,\n'
        f'      "sha256": "{"a" * 64}"\n'
        "    },\n"
        "    {\n"
        '      "event_name": "Visit ☕",\n'
        '      "file": "Visit%20%E2%98%95.jsonl",\n'
        '      "rows": 0,\n'
        '      "records": 1,\n'
        '      "bytes": 0,\n'
        f'      "sha256": "{"b" * 64}"\n'
        "    }\n"
        "  ]\n"
        "}\n"
    )


@pytest.mark.parametrize(
    ("dag_id", "task_id", "map_index", "name"),
    [
        ("daily", "fetch", None, "_manifest.daily.fetch.json"),
        ("daily", "fetch", -1, "_manifest.daily.fetch.json"),
        ("daily", "fetch", 0, "_manifest.daily.fetch.map-0.json"),
        ("daily", "group.fetch", 12, "_manifest.daily.group%2Efetch.map-12.json"),
        (None, "fetch", -1, "_manifest.fetch.json"),
        ("a/b", "../x", None, "_manifest.a%2Fb.%2E%2E%2Fx.json"),
    ],
)
def test_each_task_instance_names_its_own_manifest(dag_id, task_id, map_index, name):
    assert manifest_name(dag_id, task_id, map_index) == name


def test_a_mapped_instance_writes_its_own_manifest(tmp_path):
    run = dataclasses.replace(RUN, map_index=3, changed_since=None)

    written = FolderSink(str(tmp_path)).write_manifest(run, [])

    assert written.name == "_manifest.capillary_audit_daily.fetch.map-3.json"
    manifest = json.loads((tmp_path / written.name).read_text(encoding="utf-8"))
    assert (manifest["map_index"], manifest["changed_since"], manifest["total_rows"], manifest["events"]) == (
        3,
        None,
        0,
        [],
    )
    assert [p.name for p in tmp_path.iterdir()] == [written.name]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///data/capillary/a.jsonl", ("file", "/data/capillary/a.jsonl")),
        ("s3://bucket/XYZ/a.jsonl", ("s3://bucket", "XYZ/a.jsonl")),
        (
            "gs://bucket/capillary/2026-11-24/a%20b.parquet",
            ("gs://bucket", "capillary/2026-11-24/a%20b.parquet"),
        ),
    ],
)
def test_lineage_names_a_file_by_store_and_key(uri, expected):
    assert lineage_name(uri) == LineageName(*expected)


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("s3://bucket/capillary/{{ ds }}", "s3://bucket/capillary"),
        ("s3://bucket/{{ ds }}", "s3://bucket"),
        ("s3://bucket/capillary/", "s3://bucket/capillary"),
        ("s3://bucket/X/", "s3://bucket/X"),
        ("/data/{% if params.raw %}raw{% endif %}/{% if x %}y{% endif %}", "file:///data"),
        ("/data/capillary/{{ ds }}/{{ ts }}", "file:///data/capillary"),
        ("file:///{{ ds }}", None),
        ("/{{ ds }}", None),
        ("s3://{{ var.value.bucket }}/capillary", None),
        ("{{ var.value.base }}/{{ ds }}", None),
        # Templates written without spaces, and a destination with no template at all.
        ("s3://bucket/capillary/{{ds}}", "s3://bucket/capillary"),
        ("/data/{%if x%}a{%endif%}/c", "file:///data"),
        ("gs://bucket/a/b", "gs://bucket/a/b"),
    ],
)
def test_the_fixed_folder_of_a_templated_destination(destination, expected):
    assert static_folder_uri(destination) == expected


def write_manifest_of(sink: FolderSink, dag_id: str, files: list[str], map_index: int = -1) -> str:
    """Write a manifest of task ``fetch`` in ``dag_id`` listing ``files``; return its name."""
    events = [
        EventFile(
            event_name=name, file=WrittenFile(name, f"x/{name}", rows=1, bytes=1, sha256="0" * 64), records=1
        )
        for name in files
    ]
    run = dataclasses.replace(RUN, dag_id=dag_id, map_index=map_index)
    return sink.write_manifest(run, events).name


def test_preparing_removes_only_the_runs_own_manifest(tmp_path):
    sink = FolderSink(str(tmp_path))
    mine = write_manifest_of(sink, "mine", ["a.jsonl"])
    others = [
        write_manifest_of(sink, "other", ["b.jsonl", "c.jsonl"]),
        write_manifest_of(sink, "apart", ["d.jsonl"]),
        write_manifest_of(sink, "mine", ["c.jsonl"], map_index=4),
    ]

    sink.prepare(mine, ["a.jsonl", "b.jsonl"])

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)


def test_writing_a_file_first_removes_every_other_manifest_that_lists_it(tmp_path):
    sink = FolderSink(str(tmp_path))
    mine = write_manifest_of(sink, "mine", ["a.jsonl"])
    other = write_manifest_of(sink, "other", ["b.jsonl", "c.jsonl"])
    apart = write_manifest_of(sink, "apart", ["d.jsonl"])
    earlier_grouping = write_manifest_of(sink, "mine", ["c.jsonl"], map_index=4)
    (tmp_path / "_manifest.json").write_text('{"events": [{"file": "b.jsonl"}]}')  # an earlier version's
    (tmp_path / "_manifest.notes.json").write_text("not a manifest")
    sink.prepare(mine, ["a.jsonl", "b.jsonl", "c.jsonl"])

    sink.write("a.jsonl", one_row)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "a.jsonl") == sorted(
        [other, apart, earlier_grouping, "_manifest.json", "_manifest.notes.json"]
    )
    sink.write("b.jsonl", one_row)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("_")) == sorted(
        [apart, earlier_grouping, "_manifest.notes.json"]
    )
    sink.write("c.jsonl", one_row)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("_")) == sorted(
        [apart, "_manifest.notes.json"]
    )


@pytest.mark.parametrize("store", ["file", "memory"])
def test_the_manifests_listing_a_file_go_only_once_its_content_is_whole(tmp_path, memory_store, store):
    sink = FolderSink(str(tmp_path) if store == "file" else "memory://audit-bucket/capillary")
    other = write_manifest_of(sink, "other", ["e.jsonl"])
    sink.prepare(manifest_name("mine", "fetch"), ["e.jsonl"])
    seen = []

    def body(out) -> int:
        seen.append(sink.root.joinpath(other).exists())
        out.write(b"{}\n")
        raise RuntimeError("cut off")

    with pytest.raises(CapillaryWriteError, match="cut off"):
        sink.write("e.jsonl", body)

    # A write that fails before its content is whole leaves the other task's manifest as it was.
    assert seen == [True] and sink.root.joinpath(other).exists()


def test_removing_keeps_a_file_another_tasks_manifest_lists_and_that_manifest(tmp_path):
    sink = FolderSink(str(tmp_path))
    for name in ("theirs.jsonl", "mine.jsonl", "nobodys.jsonl"):
        (tmp_path / name).write_text("{}\n")
    theirs = write_manifest_of(sink, "other", ["theirs.jsonl"])
    mine = write_manifest_of(sink, "mine", ["mine.jsonl"])
    sink.prepare(mine, ["theirs.jsonl", "mine.jsonl", "nobodys.jsonl"])

    for name in ("theirs.jsonl", "mine.jsonl", "nobodys.jsonl"):
        sink.remove(name)

    # The run's own earlier file and a file no manifest describes go; the other task's stays, listed.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs, "theirs.jsonl"])


def test_removing_a_file_whose_listing_manifest_this_run_replaced_it_past(tmp_path):
    sink = FolderSink(str(tmp_path))
    theirs = write_manifest_of(sink, "other", ["a.jsonl", "b.jsonl"])
    (tmp_path / "b.jsonl").write_text("{}\n")
    sink.prepare(manifest_name("mine", "fetch"), ["a.jsonl", "b.jsonl"])

    sink.write("a.jsonl", one_row)  # the other task's manifest goes: it no longer describes a.jsonl
    sink.remove("b.jsonl")  # so nothing vouches for b.jsonl any more

    assert not (tmp_path / theirs).exists() and files_in(tmp_path) == {"a.jsonl": b'{"a":1}\n'}


def instance(
    map_index: int, run_id: str = "manual__é", dag_id: str = "capillary_audit_daily"
) -> MappedInstance:
    return MappedInstance(dag_id=dag_id, task_id="fetch", run_id=run_id, map_index=map_index)


def test_a_claim_is_named_by_dag_task_run_and_map_index_with_every_dot_encoded():
    owner = MappedInstance("d.1", "group.fetch", "scheduled__2026-11-24T00:00:00+00:00", 7)
    assert claim_name(owner) == (
        "_claim.d%2E1.group%2Efetch.scheduled__2026-11-24T00%3A00%3A00%2B00%3A00.map-7.json"
    )


def test_a_claim_is_written_whole_and_released(tmp_path):
    sink = FolderSink(str(tmp_path / "new"))

    assert sink.claim(instance(0), ["a.jsonl", "b%20c.jsonl"]) == {}

    data = (tmp_path / "new" / claim_name(instance(0))).read_bytes()
    claim = json.loads(data)
    assert claim == {
        "dag_id": "capillary_audit_daily",
        "task_id": "fetch",
        "run_id": "manual__é",
        "map_index": 0,
        "files": ["a.jsonl", "b%20c.jsonl"],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "claimed_at": claim["claimed_at"],
    }
    # When it was written, in UTC to the second: what a person who finds it needs to judge it.
    claimed_at = datetime.fromisoformat(claim["claimed_at"])
    assert claimed_at.utcoffset() == timedelta(0) and claimed_at.microsecond == 0
    assert abs(datetime.now(timezone.utc) - claimed_at) < timedelta(minutes=5)
    # Indented UTF-8 JSON, readable by a person who finds it in the folder.
    assert data == (json.dumps(claim, ensure_ascii=False, indent=2) + "\n").encode()
    sink.release(instance(0))
    sink.release(instance(0))  # already gone
    assert files_in(tmp_path / "new") == {}


def test_files_claimed_by_other_instances_of_the_run_are_named_with_their_map_indexes(tmp_path):
    sink = FolderSink(str(tmp_path))
    sink.claim(instance(1), ["a.jsonl", "b.jsonl"])
    sink.claim(instance(2), ["b.jsonl", "d.jsonl"])

    held = sink.claim(instance(0), ["b.jsonl", "a.jsonl", "c.jsonl"])

    assert held == {"a.jsonl": [1], "b.jsonl": [1, 2]}
    assert claim_name(instance(0)) in files_in(tmp_path)  # the caller releases it


def test_of_two_overlapping_claims_the_later_to_list_sees_the_other_and_both_when_both_wrote_first(tmp_path):
    sink = FolderSink(str(tmp_path))
    # Instance 1 listed before instance 0 wrote its claim; instance 0 lists after and sees instance 1.
    assert sink.claim(instance(1), ["a.jsonl"]) == {}
    assert sink.claim(instance(0), ["a.jsonl"]) == {"a.jsonl": [1]}
    # Both claims written before either lists: each sees the other (a retry rewrites its own claim).
    assert sink.claim(instance(1), ["a.jsonl"]) == {"a.jsonl": [0]}


def test_an_earlier_claim_of_the_same_instance_and_what_no_writer_made_are_passed_over(tmp_path):
    sink = FolderSink(str(tmp_path))
    sink.claim(instance(0), ["a.jsonl", "z.jsonl"])  # an earlier try of this instance, killed
    (tmp_path / "_claim.capillary_audit_daily.fetch.manual__%C3%A9.map-5.json").write_text("not json")
    (tmp_path / "_claim.json").write_text('{"files": ["a.jsonl"]}')  # an event named _claim, as json
    sink.claim(instance(1, dag_id="other_dag"), ["b.jsonl"])  # another task, other files

    assert sink.claim(instance(0), ["a.jsonl"]) == {}
    assert json.loads((tmp_path / claim_name(instance(0))).read_text())["files"] == ["a.jsonl"]


@pytest.mark.parametrize(
    "holder",
    [
        Writer("capillary_audit_daily", "fetch", "manual__earlier", 1),
        Writer("other_dag", "fetch", "manual__é", 1),
        Writer("capillary_audit_daily", "load", "manual__é", -1),
    ],
    ids=["another run", "another DAG", "another task"],
)
def test_a_file_another_task_instance_claims_is_refused_naming_it(tmp_path, holder):
    sink = FolderSink(str(tmp_path))
    sink.claim(holder, ["a.jsonl", "PointsRedeemed.jsonl"])
    claim = json.loads((tmp_path / claim_name(holder)).read_text())

    with pytest.raises(CapillaryFolderBusyError) as refused:
        sink.claim(instance(0), ["PointsRedeemed.jsonl", "b.jsonl", "a.jsonl"])

    mapped = f", map index {holder.map_index}" if holder.map_index >= 0 else ""
    assert str(refused.value) == (
        f"Another task is writing files of this run into {sink.uri}: task {holder.task_id!r} of DAG "
        f"{holder.dag_id!r}, run {holder.run_id!r}{mapped} (host {socket.gethostname()}, pid {os.getpid()}, "
        f"since {claim['claimed_at']}) is writing event 'PointsRedeemed' (PointsRedeemed.jsonl), event 'a' "
        f"(a.jsonl) there; if it is no longer running, delete its claim {sink.uri}/{claim_name(holder)}. "
        "Two tasks must not write one file at the same time, or each would overwrite the other's: run them "
        "one after the other (a dependency, or a pool of one slot) or give them different destinations. "
        "No audit log was requested and nothing was written"
    )
    assert refused.value.claims == [claim_name(holder)]
    assert isinstance(refused.value, CapillaryWriteError)
    # The refused writer's claim stays for its caller to release; the holder's is untouched.
    assert claim_name(instance(0)) in files_in(tmp_path) and claim_name(holder) in files_in(tmp_path)


def test_a_claim_whose_writer_airflow_says_ended_is_removed_with_a_warning(tmp_path, caplog):
    sink = FolderSink(str(tmp_path))
    killed = Writer("other_dag", "fetch", "manual__1", -1)
    running = Writer("third_dag", "fetch", "manual__1", -1)
    sink.claim(killed, ["a.jsonl"])
    sink.claim(running, ["b.jsonl"])
    since = json.loads((tmp_path / claim_name(killed)).read_text())["claimed_at"]
    asked = []

    def ended(writer: Writer) -> str | None:
        asked.append(writer)
        return "failed" if writer == killed else None

    with caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"):
        assert sink.claim(instance(0), ["a.jsonl"], ended=ended) == {}
        with pytest.raises(CapillaryFolderBusyError, match="task 'fetch' of DAG 'third_dag'"):
            sink.claim(instance(0), ["a.jsonl", "b.jsonl"], ended=ended)

    assert asked == [killed, running]
    assert claim_name(killed) not in files_in(tmp_path)
    assert warnings_logged(caplog) == [
        f"The claim {sink.uri}/{claim_name(killed)} of task 'fetch' of DAG 'other_dag', run 'manual__1' "
        f"(host {socket.gethostname()}, pid {os.getpid()}, since {since}) is stale, and is removed: Airflow "
        "says that task instance is failed, so it is writing nothing (a process killed outright leaves its "
        "claim)"
    ]


def test_a_manifest_of_another_instance_of_the_run_holds_its_files(tmp_path):
    sink = FolderSink(str(tmp_path))
    write_manifest_of(sink, "capillary_audit_daily", ["a.jsonl"], map_index=2)
    write_manifest_of(sink, "capillary_audit_daily", ["b.jsonl"], map_index=0)  # this instance's own
    sink.write_manifest(
        dataclasses.replace(RUN, run_id="manual__earlier", map_index=3),
        [EventFile("c", WrittenFile("c.jsonl", "x/c.jsonl", rows=1, bytes=1, sha256="0" * 64), records=1)],
    )

    assert sink.claim(instance(0), ["a.jsonl", "b.jsonl", "c.jsonl"]) == {"a.jsonl": [2]}


def test_a_claim_on_an_object_store_is_seen_by_the_next_and_released(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary")
    other = FolderSink("memory://audit-bucket/capillary")
    assert other.claim(instance(1), ["a.jsonl"]) == {}

    assert sink.claim(instance(0), ["a.jsonl"]) == {"a.jsonl": [1]}
    sink.release(instance(0))
    other.release(instance(1))
    assert memory_store.find("/audit-bucket") == []


def test_a_claim_that_cannot_be_made_says_where(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    sink = FolderSink(str(tmp_path / "a-file" / "out"))

    with pytest.raises(CapillaryWriteError, match=r"^Cannot prepare destination 'file://.*/a-file/out': "):
        sink.claim(instance(0), ["a.jsonl"])


def test_claims_that_cannot_be_read_say_where(memory_store, monkeypatch):
    sink = FolderSink("memory://audit-bucket/capillary")
    refused = OSError("AccessDenied: ListBucket")

    def ls(*args, **kwargs):
        raise refused

    monkeypatch.setattr(memory_store, "ls", ls)

    with pytest.raises(
        CapillaryWriteError, match=r"^Cannot read the claims in 'memory://audit-bucket/capillary': "
    ) as raised:
        sink.claim(instance(0), ["a.jsonl"])
    assert raised.value.__cause__ is refused


def test_a_claim_that_cannot_be_removed_or_rewritten_says_which(memory_store, monkeypatch):
    sink = FolderSink("memory://audit-bucket/capillary")
    sink.claim(instance(0), ["a.jsonl"])
    refuse_deletes(monkeypatch, memory_store)
    monkeypatch.setattr(memory_store, "_open", lambda *args, **kwargs: (_ for _ in ()).throw(PermissionError("no")))

    with pytest.raises(
        CapillaryWriteError, match=r"^Cannot remove the claim .*_claim\.capillary_audit_daily\.fetch\..*: AccessDenied"
    ):
        sink.release(instance(0))


def test_a_claim_the_store_will_not_delete_is_emptied_and_then_holds_nothing(memory_store, monkeypatch, caplog):
    sink = FolderSink("memory://audit-bucket/capillary")
    sink.claim(instance(1, dag_id="other_dag"), ["a.jsonl"])
    refuse_deletes(monkeypatch, memory_store)

    with caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"):
        sink.release(instance(1, dag_id="other_dag"))

    path = f"/audit-bucket/capillary/{claim_name(instance(1, dag_id='other_dag'))}"
    assert json.loads(memory_store.cat(path))["files"] == []
    claim = sink.root / claim_name(instance(1, dag_id="other_dag"))
    assert warnings_logged(caplog)[-1].startswith(
        f"Could not remove the claim {claim}, so it now claims no file; delete it by hand: AccessDenied: DeleteObject"
    )
    assert sink.claim(instance(0), ["a.jsonl"]) == {}


def test_a_write_the_store_refuses_outright_warns_of_no_temporary_object(memory_store, monkeypatch, caplog):
    sink = FolderSink("memory://audit-bucket/capillary")
    real_open = memory_store._open

    def refuse_writes(path, mode="rb", *args, **kwargs):
        if "w" in mode:
            raise PermissionError(f"AccessDenied: PutObject {path}")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(memory_store, "_open", refuse_writes)

    with (
        caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"),
        pytest.raises(CapillaryWriteError, match="AccessDenied: PutObject"),
    ):
        sink.write("e.jsonl", one_row)

    # No temporary object was ever made, so there is none to warn about.
    assert warnings_logged(caplog) == []
    assert memory_store.find("/audit-bucket") == []


def test_every_other_claim_is_read_whatever_comes_before_it_in_the_listing(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary")
    folder = "/audit-bucket/capillary/"
    # The store lists by name, so these come before the claim that holds the file: this instance's
    # own claim of an earlier try, then claims no instance of this package could have written.
    sink.claim(instance(1), ["x.jsonl"])
    memory_store.pipe(folder + claim_name(instance(2)), b"[1, 2]")
    other_run = {**vars(instance(3)), "run_id": "another run", "files": ["a.jsonl"]}  # not under its name
    memory_store.pipe(folder + claim_name(instance(3)), json.dumps(other_run).encode())
    memory_store.pipe(
        folder + claim_name(instance(4)), json.dumps({**vars(instance(4)), "files": None}).encode()
    )
    sink.claim(instance(5), ["a.jsonl"])

    assert sink.claim(instance(1), ["a.jsonl", "x.jsonl"]) == {"a.jsonl": [5]}


def test_a_manifest_another_run_removes_first_is_no_error(memory_store, monkeypatch):
    sink = FolderSink("memory://audit-bucket/capillary")
    manifest = write_manifest_of(sink, "other_dag", ["e.jsonl"])
    real_open = memory_store._open

    def read_then_lose(path, mode="rb", *args, **kwargs):
        opened = real_open(path, mode, *args, **kwargs)
        if mode == "rb" and path.endswith(manifest):
            memory_store.rm(path)  # another instance removed the same stale manifest in between
        return opened

    monkeypatch.setattr(memory_store, "_open", read_then_lose)
    sink.prepare(manifest_name("mine", "fetch"), ["e.jsonl"])
    monkeypatch.undo()

    sink.write("e.jsonl", one_row)

    assert memory_store.find("/audit-bucket") == ["/audit-bucket/capillary/e.jsonl"]


@pytest.mark.parametrize("destination", ["", "   ", None, 5])
def test_a_destination_that_is_no_path_is_refused(destination):
    with pytest.raises(CapillaryConfigError) as caught:
        FolderSink(destination)
    assert str(caught.value) == (
        f"destination must be a folder URI or path, got {destination!r}; e.g. s3://bucket/capillary"
    )


def test_the_packages_own_error_met_while_writing_keeps_its_type(tmp_path):
    refused = CapillaryResponseError("Capillary's audit logs are malformed: record 3 is a list")

    def malformed(out):
        out.write(b"half")
        raise refused

    with pytest.raises(CapillaryResponseError) as caught:
        FolderSink(str(tmp_path)).write("e.jsonl", malformed)
    assert caught.value is refused
    assert files_in(tmp_path) == {}
