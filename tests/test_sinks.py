"""The storage sink: no bucket is ever created, files commit whole, unknown stores are refused early."""

from __future__ import annotations

import hashlib

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryWriteError
from airflow_capillary_audit.sinks import FolderSink


@pytest.fixture
def memory_store():
    """Register fsspec's in-memory store with Airflow, the way a provider registers S3 or GCS."""
    import fsspec

    from tests.conftest import airflow_filesystems

    registry = airflow_filesystems()
    memory = fsspec.filesystem("memory")
    memory.store.clear()
    registry["memory"] = lambda conn_id, options=None: memory
    yield memory
    registry.pop("memory", None)
    memory.store.clear()


def test_prepare_creates_no_bucket_on_an_object_store(memory_store):
    sink = FolderSink("memory://audit-bucket/capillary/2026-11-24")
    sink.check()
    sink.prepare()
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
    written = sink.write("e.jsonl", lambda out: out.write(b'{"a":1}\n') and 1)
    assert memory_store.cat("/audit-bucket/capillary/e.jsonl") == b'{"a":1}\n'
    assert written.sha256 == hashlib.sha256(b'{"a":1}\n').hexdigest()
    assert memory_store.find("/audit-bucket") == ["/audit-bucket/capillary/e.jsonl"]


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
