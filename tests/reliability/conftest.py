"""What the reliability tests share: a stand-in with a seeded fault RNG, fast retries, folder helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
from tests.conftest import connection_json
from tests.conftest import expected_rows as all_expected_rows

LOGIN = "store.server"
PASSWORD = "server123"
FAULT_SEED = 20261125
# Small waits keep the whole folder fast; retry_max_wait leaves room for an HTTP-date Retry-After of 1 s.
FAST_RETRIES = {"timeout": 2, "max_retries": 3, "retry_initial_wait": 0.01, "retry_max_wait": 3}
MANIFEST = "_manifest.json"


@pytest.fixture
def api():
    """Start a stand-in whose partial-rate faults draw from a seeded RNG, so runs repeat."""
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), seed=FAULT_SEED) as server:
        yield server


def use_capillary(monkeypatch, url: str, conn_id: str = "capillary_default", **extra: Any) -> None:
    """Point a ``capillary`` connection at ``url`` with fast retries, overridden by ``extra``."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection_json(url, **{**FAST_RETRIES, **extra}))


def fetch_to(folder: Path, event_names: Any, **arguments: Any) -> Any:
    """Run the operator once, outside a DAG, writing into ``folder``; return its summary."""
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names=event_names, destination=str(folder), **arguments
    )
    return operator.execute({})


def data_files(folder: Path) -> dict[str, bytes]:
    """Return the event files in ``folder`` (no manifest, no hidden file), name -> bytes."""
    if not folder.exists():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith((".", "_manifest"))
    }


def hidden_files(folder: Path) -> list[str]:
    """Return what a write could leave behind: temporary (dot) files anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


def manifest_of(folder: Path) -> dict[str, Any] | None:
    """Return the folder's manifest, or None when there is none."""
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def expected_rows(dataset: Dataset, name: str) -> list[dict[str, Any]]:
    """Build an event's flat rows from what the stand-in generated, without the package's code."""
    return all_expected_rows(dataset, [name])


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file back."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
