"""Run the example DAGs through the REST API, check what they wrote, sent and logged, print the figures.

Every expected row comes from a stand-in's own record of what it generated (``Dataset``), and every
request counted from the org stand-in's own log of what it received, never from the provider's code.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from scripts.system_test.cluster import Cluster
from scripts.system_test.common import (
    BUCKET,
    DAILY_DAG,
    FAILING_EVENT,
    LOGIN,
    MAPPED_DAG,
    ORG_DAG,
    ORG_EVENTS,
    ORG_GROUP_SIZE,
    ORG_PREFIX,
    ORG_RATE_LIMIT,
    ORG_SPAN_TOLERANCE,
    PASSWORD,
    PG_DAG,
    PG_TASK_ID,
    ROOT,
    TASK_ID,
    WAREHOUSE_TABLE,
    WORKER_HOSTS,
    SystemTestError,
    step,
)
from scripts.system_test.services import BROKER_DB, BUDGET_DB, Services

# Capillary's paths, as the org stand-in logs them.
AUDIT_LOGS_PATH = "/v2/events/audit_logs"
EVENTS_PATH = "/v2/events"
# What each task's log says once its work is done.
TASK_LOG_LINES = {
    TASK_ID: "Wrote ",
    "list_events": "The org has ",
    PG_TASK_ID: f"Table {WAREHOUSE_TABLE}: deleted ",
}
# The table's columns, as the docs' table page (docs/operators/sql.rst) lists them.
TABLE_COLUMNS = (
    "event_name",
    "id",
    "org_id",
    "updated_type",
    "request_id",
    "value",
    "previous_value",
    "changed_on",
    "changed_on_raw",
)
# The PostgreSQL DAG's schedule, "30 0 * * *": each window starts half an hour past midnight UTC.
PG_WINDOW_START = timedelta(minutes=30)

# --- The mapped DAG ---------------------------------------------------------------------------------


def run_mapped_dag(cluster: Cluster, services: Services) -> dict[str, Any]:
    """Trigger the mapped DAG for yesterday's interval and check the bucket, manifests and workers."""
    dag_file = load_dag_file("capillary_audit_mapped_s3.py")
    groups: list[list[str]] = dag_file.EVENT_GROUPS
    # The interval a scheduled run of "0 2 * * *" covers: yesterday 02:00 to today 02:00.
    run_id, run, elapsed = _trigger_for_yesterday(cluster, MAPPED_DAG, hour=2)
    since, until = parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])
    tis = [ti for ti in cluster.task_instances(MAPPED_DAG, run_id) if ti["task_id"] == TASK_ID]
    if sorted(ti["map_index"] for ti in tis) != list(range(len(groups))):
        raise SystemTestError(
            f"expected map indexes 0..{len(groups) - 1}, got {[ti['map_index'] for ti in tis]}"
        )
    per_worker = Counter(ti["hostname"] for ti in tis)
    print(f"Run {run_id}: {run['state']} in {elapsed:.1f} s; instances per worker: {dict(per_worker)}")
    if set(per_worker) != set(WORKER_HOSTS):
        raise SystemTestError(
            f"the mapped instances ran on {dict(per_worker)}, not on both {WORKER_HOSTS}"
        )
    objects = _check_bucket(
        services.dataset(), services, MAPPED_DAG, f"capillary/{since:%Y-%m-%d}/", groups, run_id, since, until
    )
    total = sum(objects.rows.values())
    return {
        "runs": [(MAPPED_DAG, run_id)],
        "elapsed": elapsed,
        "rows": total,
        "events": sum(len(group) for group in groups),
        "instances": len(tis),
        "per_worker": per_worker,
    }


def _trigger_for_yesterday(cluster: Cluster, dag_id: str, hour: int) -> tuple[str, dict[str, Any], float]:
    """Trigger the run a daily schedule at ``hour`` o'clock UTC would make today; wait for it.

    Return the run's id, its final state and the seconds from the trigger to its end.
    """
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=1) + timedelta(hours=hour), today + timedelta(hours=hour)
    run_id = f"system_test__{start:%Y-%m-%d}"
    cluster.api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    started = time.monotonic()
    _trigger(cluster, dag_id, run_id, start, end)
    [run] = cluster.wait_for_runs(dag_id, [run_id])
    return run_id, run, time.monotonic() - started


def _trigger(
    cluster: Cluster,
    dag_id: str,
    run_id: str,
    start: datetime,
    end: datetime,
    conf: dict[str, Any] | None = None,
) -> None:
    """Trigger a run of the data interval [start, end) through the REST API, as a user would."""
    step(f"Triggering {dag_id} through the REST API for {start.isoformat()} .. {end.isoformat()}")
    body: dict[str, Any] = {
        "dag_run_id": run_id,
        "logical_date": start.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
    }
    if conf is not None:
        body["conf"] = conf
    cluster.api.call("POST", f"/dags/{dag_id}/dagRuns", json=body)


@dataclass(frozen=True)
class _Objects:
    """What a mapped run wrote: each map index's manifest, and each event's rows."""

    manifests: dict[int, dict[str, Any]]
    rows: dict[str, int]


def _check_bucket(
    dataset: Any,
    services: Services,
    dag_id: str,
    prefix: str,
    groups: list[list[str]],
    run_id: str,
    since: datetime,
    until: datetime,
) -> _Objects:
    """Check the run's objects: each event's rows once, exactly, and a complete manifest per group."""
    objects = services.list_objects(prefix)
    if any(key.rsplit("/", 1)[1].startswith(".") for key in objects):
        raise SystemTestError(f"temporary objects left in s3://{BUCKET}/{prefix}: {sorted(objects)}")
    event_objects = {
        key: _event_of(key.rsplit("/", 1)[1]) for key in objects if not key.rsplit("/", 1)[1].startswith("_")
    }
    all_events = [name for group in groups for name in group]
    if Counter(event_objects.values()) != Counter(all_events):
        raise SystemTestError(
            f"objects {sorted(event_objects.values())} are not one per event of {all_events}"
        )
    rows_per_event: dict[str, int] = {}
    for key, event_name in event_objects.items():
        got = [json.loads(line) for line in objects[key].decode().splitlines()]
        want = expected_rows(dataset, [event_name], since, until)
        if got != want:
            raise SystemTestError(
                f"s3://{BUCKET}/{key}: {len(got)} rows differ from the stand-in's {len(want)} rows of "
                f"event {event_name!r} in the window"
            )
        rows_per_event[event_name] = len(got)
    by_key = {key.rsplit("/", 1)[1]: body for key, body in objects.items()}
    manifest_names = sorted(name for name in by_key if name.startswith("_"))
    # The provider names each task instance's manifest _manifest.<dag_id>.<task_id>[.map-N].json.
    wanted_manifests = sorted(
        f"_manifest.{dag_id}.{TASK_ID}.map-{index}.json" for index in range(len(groups))
    )
    if manifest_names != wanted_manifests:
        raise SystemTestError(f"manifests {manifest_names}, expected {wanted_manifests}")
    manifests = {}
    for index, group in enumerate(groups):
        manifest = json.loads(by_key[f"_manifest.{dag_id}.{TASK_ID}.map-{index}.json"])
        check_manifest(
            manifest, group, by_key, run_id, since, until, f"s3://{BUCKET}/{prefix}", map_index=index
        )
        manifests[index] = manifest
    print(
        f"s3://{BUCKET}/{prefix}: {len(event_objects)} objects, {sum(rows_per_event.values())} rows, "
        f"each event once, {len(manifest_names)} complete manifests"
    )
    return _Objects(manifests, rows_per_event)


# --- The org's DAG ----------------------------------------------------------------------------------


def run_org_dag(cluster: Cluster, services: Services) -> dict[str, Any]:
    """Trigger the org's DAG for yesterday; check its groups, objects, asset events, budget and pace."""
    run_id, run, elapsed = _trigger_for_yesterday(cluster, ORG_DAG, hour=1)
    since, until = parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])
    names = sorted(ORG_EVENTS)
    # The listing task returns the org's names sorted, in consecutive groups of the group size.
    groups = [names[start : start + ORG_GROUP_SIZE] for start in range(0, len(names), ORG_GROUP_SIZE)]
    tis = [ti for ti in cluster.task_instances(ORG_DAG, run_id) if ti["task_id"] == TASK_ID]
    if sorted(ti["map_index"] for ti in tis) != list(range(len(groups))):
        raise SystemTestError(
            f"{ORG_DAG}: expected map indexes 0..{len(groups) - 1} of {TASK_ID}, got "
            f"{sorted(ti['map_index'] for ti in tis)}"
        )
    per_worker = Counter(ti["hostname"] for ti in tis)
    print(f"Run {run_id}: {run['state']} in {elapsed:.1f} s; instances per worker: {dict(per_worker)}")
    if set(per_worker) != set(WORKER_HOSTS):
        raise SystemTestError(f"the org's instances ran on {dict(per_worker)}, not on both {WORKER_HOSTS}")
    # First: the budget's key lapses a minute after the last slot taken.
    _check_budget_in_redis(cluster, services, run_id)
    prefix = f"{ORG_PREFIX}/{since:%Y-%m-%d}/"
    objects = _check_bucket(services.org_dataset(), services, ORG_DAG, prefix, groups, run_id, since, until)
    _check_org_asset_events(cluster, run_id, prefix, objects.manifests)
    pace = _check_org_pace(services.org_requests())
    return {
        "runs": [(ORG_DAG, run_id)],
        "elapsed": elapsed,
        "rows": sum(objects.rows.values()),
        "events": len(names),
        "instances": len(tis),
        "per_worker": per_worker,
        **pace,
    }


def _check_org_asset_events(
    cluster: Cluster, run_id: str, prefix: str, manifests: dict[int, dict[str, Any]]
) -> None:
    """Check that each instance recorded one event of the base folder's Asset, naming its manifest."""
    listed = cluster.api.call(
        "GET", "/assets/events", params={"source_dag_id": ORG_DAG, "source_run_id": run_id, "limit": 100}
    )["asset_events"]
    by_index = {event["source_map_index"]: event for event in listed}
    if len(listed) != len(manifests) or set(by_index) != set(manifests):
        raise SystemTestError(
            f"asset events of map indexes {sorted(e['source_map_index'] for e in listed)}, expected one for "
            f"each of {sorted(manifests)}"
        )
    folder = f"s3://{BUCKET}/{ORG_PREFIX}"
    for index, event in by_index.items():
        extra = event["extra"] or {}
        manifest_uri = f"s3://{BUCKET}/{prefix}_manifest.{ORG_DAG}.{TASK_ID}.map-{index}.json"
        if (
            event["uri"] != folder
            or event["source_task_id"] != TASK_ID
            or _object_of(extra.get("manifest")) != _object_of(manifest_uri)
            or extra.get("total_rows") != manifests[index]["total_rows"]
        ):
            raise SystemTestError(
                f"asset event of map index {index}: uri {event['uri']!r}, task {event['source_task_id']!r}, "
                f"extra {extra}; expected {folder!r}, {TASK_ID!r}, manifest {manifest_uri!r} with "
                f"{manifests[index]['total_rows']} rows"
            )
    print(f"{len(listed)} asset events of {folder}, one per map index, each naming its manifest and rows")


def _object_of(uri: object) -> tuple[str, str | None, str] | None:
    """Return a store URI's scheme, bucket and key, without the connection id it may name."""
    if not isinstance(uri, str):
        return None
    # Airflow's ObjectStoragePath writes s3://<conn_id>@<bucket>/<key>.
    parts = urlsplit(uri)
    return parts.scheme, parts.hostname, parts.path


def _check_budget_in_redis(cluster: Cluster, services: Services, run_id: str) -> None:
    """Check that the instances paced from the shared budget in Redis's second database, not a split."""
    keys = services.budget_keys()
    if not keys[BUDGET_DB] or keys[BROKER_DB]:
        raise SystemTestError(
            f"shared rate budget keys by Redis database: {keys}; expected some in {BUDGET_DB}, "
            f"none in the broker's {BROKER_DB}"
        )
    folder = cluster.airflow_home / "logs" / f"dag_id={ORG_DAG}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
    logs = sorted(folder.rglob("*.log"))
    # The hook's own line: the instance took its slots from Redis rather than a share of the rate.
    shared = "from the shared budget"
    unshared = [str(path) for path in logs if shared not in path.read_text(errors="replace")]
    if not logs or unshared:
        raise SystemTestError(f"task logs that do not pace from the shared budget: {unshared or folder}")


def _check_org_pace(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Check what the org stand-in received: each event asked once, no 429, the span near the floor."""
    audit = sorted(r["monotonic"] for r in requests if r["path"] == AUDIT_LOGS_PATH)
    listing = sorted(r["monotonic"] for r in requests if r["path"] == EVENTS_PATH)
    rejected = [r for r in requests if r["status"] == 429]
    asked = Counter(r["event_name"] for r in requests if r["path"] == AUDIT_LOGS_PATH)
    others = Counter((r["path"], r["status"]) for r in requests if r["status"] != 200 and r["status"] != 429)
    floor = (len(audit) - 1) * 60 / ORG_RATE_LIMIT
    span = audit[-1] - audit[0] if audit else 0.0
    gaps = [later - earlier for earlier, later in itertools.pairwise(audit)]
    pace = {
        "requests": len(requests),
        "audit_requests": len(audit),
        "rejected": len(rejected),
        # From the listing task's listing; each mapped instance lists again to check its names.
        "listing_gap": audit[0] - listing[0] if audit and listing else float("nan"),
        "span": span,
        "floor": floor,
        "ratio": span / floor if floor else float("nan"),
        "longest_gap": max(gaps, default=0.0),
    }
    print(
        f"Org stand-in: {pace['requests']} requests ({len(listing)} listing, {len(audit)} audit-log), "
        f"{len(rejected)} answered 429; audit-log span {span:.2f} s, {pace['ratio']:.3f}x the floor of "
        f"{floor:.1f} s ({len(audit) - 1} intervals of {60 / ORG_RATE_LIMIT:.2f} s); longest gap "
        f"{pace['longest_gap']:.2f} s; listing to first audit-log request {pace['listing_gap']:.2f} s"
    )
    problems = []
    if rejected:
        problems.append(f"{len(rejected)} requests answered 429, e.g. {rejected[0]}")
    if others:
        problems.append(f"answers other than 200: {dict(others)}")
    if asked != Counter(ORG_EVENTS):
        twice = sorted(name for name, count in asked.items() if count > 1)
        missing = sorted(set(ORG_EVENTS) - set(asked))
        problems.append(f"audit logs asked twice for {twice[:5]}, never for {missing[:5]}")
    # The listing task's, and each mapped instance's own, which checks its names against the org's list.
    listings = 1 + -(-len(ORG_EVENTS) // ORG_GROUP_SIZE)
    if len(listing) != listings:
        problems.append(f"{len(listing)} listing requests, expected {listings}")
    if audit and span > ORG_SPAN_TOLERANCE * floor:
        problems.append(
            f"the audit-log requests spanned {span:.2f} s, {pace['ratio']:.3f}x the floor of {floor:.1f} s; "
            f"at most {ORG_SPAN_TOLERANCE}x is allowed (longest gap {pace['longest_gap']:.2f} s)"
        )
    if problems:
        raise SystemTestError(f"{ORG_DAG} at the org stand-in: " + "; ".join(problems))
    return pace


# --- The daily DAG ----------------------------------------------------------------------------------


def run_daily_backfill(cluster: Cluster, services: Services) -> dict[str, Any]:
    """Backfill the daily DAG over three days; check the windows are disjoint and cover every change."""
    dag_file = load_dag_file("capillary_audit_daily.py")
    event_names: list[str] = list(dag_file.dag.params["event_names"])
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    first, last = today - timedelta(days=3), today - timedelta(days=1)
    backfill, runs, elapsed = _backfill(cluster, first, last)
    windows = sorted(
        (parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])) for run in runs
    )
    wanted = [(first + timedelta(days=n), first + timedelta(days=n + 1)) for n in range(3)]
    if windows != wanted:
        raise SystemTestError(f"backfill {backfill['id']} made windows {windows}, expected {wanted}")
    in_order = sorted(runs, key=lambda r: r["data_interval_start"])
    total = _check_daily_files(cluster, services, in_order, windows, event_names)
    run_ids = [run["dag_run_id"] for run in runs]
    per_worker = Counter(
        ti["hostname"] for run_id in run_ids for ti in cluster.task_instances(DAILY_DAG, run_id)
    )
    print(
        f"Backfill {backfill['id']}: 3 runs in {elapsed:.1f} s, {total} rows in 3 disjoint windows "
        f"that together hold every change of the 3 days; instances per worker: {dict(per_worker)}"
    )
    return {
        "runs": [(DAILY_DAG, run_id) for run_id in run_ids],
        "elapsed": elapsed,
        "rows": total,
        "per_worker": per_worker,
    }


def _backfill(
    cluster: Cluster, first: datetime, last: datetime
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Backfill the daily DAG from ``first`` to ``last``; return the backfill, its runs, its seconds."""
    step(f"Backfilling {DAILY_DAG} through the REST API over {first:%Y-%m-%d} .. {last:%Y-%m-%d}")
    cluster.api.call("PATCH", f"/dags/{DAILY_DAG}", json={"is_paused": False})
    started = time.monotonic()
    backfill = cluster.api.call(
        "POST",
        "/backfills",
        json={
            "dag_id": DAILY_DAG,
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
            "max_active_runs": 3,
        },
    )
    runs = cluster.api.call("GET", f"/dags/{DAILY_DAG}/dagRuns")["dag_runs"]
    run_ids = [run["dag_run_id"] for run in runs if run["run_type"] == "backfill"]
    runs = cluster.wait_for_runs(DAILY_DAG, run_ids)
    return backfill, runs, time.monotonic() - started


def _check_daily_files(
    cluster: Cluster,
    services: Services,
    runs: list[dict[str, Any]],
    windows: list[tuple[datetime, datetime]],
    event_names: list[str],
) -> int:
    """Check each window's folder against the stand-in, and that the windows share no row and miss none."""
    dataset = services.dataset()
    every_row: Counter[str] = Counter()
    for run, (since, until) in zip(runs, windows):
        folder = cluster.daily_output / f"{since:%Y-%m-%d}"
        files = {path.name: path.read_bytes() for path in folder.iterdir()}
        if any(name.startswith(".") for name in files):
            raise SystemTestError(f"temporary files left in {folder}: {sorted(files)}")
        check_manifest(
            json.loads(files[f"_manifest.{DAILY_DAG}.{TASK_ID}.json"]),
            event_names,
            files,
            run["dag_run_id"],
            since,
            until,
            str(folder),
            map_index=-1,
        )
        window_rows: list[str] = []
        for event_name in event_names:
            [name] = [n for n in files if not n.startswith("_") and _event_of(n) == event_name]
            got = [json.loads(line) for line in files[name].decode().splitlines()]
            if got != expected_rows(dataset, [event_name], since, until):
                raise SystemTestError(f"{folder / name}: rows differ from the stand-in's in the window")
            window_rows += [json.dumps(row, sort_keys=True) for row in got]
        if len(set(window_rows)) != len(window_rows):
            raise SystemTestError(f"window {since:%Y-%m-%d} holds a row twice")
        every_row.update(window_rows)
    overlaps = {row for row, count in every_row.items() if count > 1}
    if overlaps:
        raise SystemTestError(
            f"{len(overlaps)} rows are in more than one window, e.g. {next(iter(overlaps))}"
        )
    # The windows are the three whole days, as checked before.
    first, end = windows[0][0], windows[-1][1]
    whole = Counter(
        json.dumps(row, sort_keys=True) for row in expected_rows(dataset, event_names, first, end)
    )
    if every_row != whole:
        raise SystemTestError(
            f"the three windows hold {sum(every_row.values())} rows; the changes in "
            f"{first:%Y-%m-%d} .. {end - timedelta(days=1):%Y-%m-%d} are {sum(whole.values())} rows"
        )
    return sum(every_row.values())


# --- The PostgreSQL DAG -----------------------------------------------------------------------------


def run_postgres_dag(cluster: Cluster, services: Services) -> dict[str, Any]:
    """Load two adjacent days into the warehouse, rerun the first, fail a third; check the table each time."""
    dag_file = load_dag_file("capillary_audit_to_postgres.py")
    event_names: list[str] = list(dag_file.dag.params["event_names"])
    dataset = services.dataset()
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=4) + PG_WINDOW_START
    windows = [(first + timedelta(days=n), first + timedelta(days=n + 1)) for n in range(3)]
    cluster.api.call("PATCH", f"/dags/{PG_DAG}", json={"is_paused": False})

    loads = []
    for number, (since, until) in enumerate(windows[:2], start=1):
        load = _load_window(cluster, f"system_test__{since:%Y-%m-%d}", since, until)
        table = _check_table(services, dataset, event_names, first, until, f"after window {number}")
        window_rows = len(expected_rows(dataset, event_names, since, until))
        _check_summary(load, deleted=0, inserted=window_rows, events=len(event_names))
        print(
            f"Window {number}: {load['run_id']} in {load['elapsed']:.1f} s, inserted {window_rows} rows; the "
            f"table holds exactly the stand-in's rows from {first:%Y-%m-%d %H:%M} on, none twice"
        )
        loads.append(load)

    rerun = _rerun(cluster, loads[0]["run_id"])
    after_rerun = _check_table(services, dataset, event_names, first, windows[1][1], "after the rerun")
    window_rows = loads[0]["summary"]["rows_inserted"]
    _check_summary(rerun, deleted=window_rows, inserted=window_rows, events=len(event_names))
    if after_rerun != table:
        raise SystemTestError(
            f"the rerun of {rerun['run_id']} changed the table ({len(table)} bytes before, "
            f"{len(after_rerun)} after)"
        )
    print(
        f"Rerun of window 1 (cleared, try 2) in {rerun['elapsed']:.1f} s: deleted {window_rows} rows, "
        f"inserted {window_rows}; the table is the same, byte for byte"
    )

    since, until = windows[2]
    would_add = len(expected_rows(dataset, event_names, since, until))
    failed = _load_window(
        cluster,
        f"system_test__fails__{since:%Y-%m-%d}",
        since,
        until,
        conf={"event_names": [*event_names, FAILING_EVENT]},
        expect="failed",
    )
    _check_failed_load(cluster, failed)
    after_failure = _check_table(services, dataset, event_names, first, windows[1][1], "after the failed run")
    if after_failure != table:
        raise SystemTestError(f"the failed run {failed['run_id']} changed the table")
    print(
        f"Failed run {failed['run_id']} in {failed['elapsed']:.1f} s ({FAILING_EVENT!r} answered 400; a "
        f"success would have added {would_add} rows): the table is the same, byte for byte "
        f"({len(table)} bytes)"
    )
    return {
        "runs": [(PG_DAG, load["run_id"]) for load in loads],
        "failed_runs": [(PG_DAG, failed["run_id"])],
        "events": len(event_names),
        "loads": loads,
        "rerun": rerun,
        "failed": failed,
        "would_add": would_add,
        "table_bytes": len(table),
    }


def _load_window(
    cluster: Cluster,
    run_id: str,
    since: datetime,
    until: datetime,
    conf: dict[str, Any] | None = None,
    expect: str = "success",
) -> dict[str, Any]:
    """Trigger the PostgreSQL DAG for [since, until) and wait for the run to end ``expect``."""
    started = time.monotonic()
    _trigger(cluster, PG_DAG, run_id, since, until, conf)
    return _finished_load(cluster, run_id, started, expect)


def _rerun(cluster: Cluster, run_id: str) -> dict[str, Any]:
    """Clear a run of the PostgreSQL DAG through the REST API, as a user reruns a day; wait for it."""
    step(f"Clearing {PG_DAG} run {run_id} through the REST API, to load its window again")
    started = time.monotonic()
    cleared = cluster.api.call("POST", f"/dags/{PG_DAG}/dagRuns/{run_id}/clear", json={"dry_run": False})
    if cleared.get("state") != "queued":
        raise SystemTestError(f"clearing {run_id} left it {cleared.get('state')!r}, not queued")
    rerun = _finished_load(cluster, run_id, started, "success")
    if rerun["try_number"] != 2:
        raise SystemTestError(f"the rerun of {run_id} ran as try {rerun['try_number']}, not 2")
    return rerun


def _finished_load(cluster: Cluster, run_id: str, started: float, expect: str) -> dict[str, Any]:
    """Wait for a run of the PostgreSQL DAG; return its seconds, its task's try and the task's summary."""
    cluster.wait_for_runs(PG_DAG, [run_id], expect)
    elapsed = time.monotonic() - started
    [ti] = cluster.task_instances(PG_DAG, run_id)
    if ti["state"] != expect:
        raise SystemTestError(f"{run_id}: {PG_TASK_ID} ended {ti['state']!r}, expected {expect!r}")
    summary = None
    if expect == "success":
        path = f"/dags/{PG_DAG}/dagRuns/{run_id}/taskInstances/{PG_TASK_ID}/xcomEntries/return_value"
        value = cluster.api.call("GET", path)["value"]
        summary = json.loads(value) if isinstance(value, str) else value
    return {
        "run_id": run_id,
        "elapsed": elapsed,
        "task_seconds": ti["duration"],
        "try_number": ti["try_number"],
        "summary": summary,
    }


def _check_summary(load: dict[str, Any], deleted: int, inserted: int, events: int) -> None:
    """Check what the task returned against the rows the stand-in's data says it deleted and inserted."""
    wanted = {"table": WAREHOUSE_TABLE, "rows_deleted": deleted, "rows_inserted": inserted, "events": events}
    if load["summary"] != wanted:
        raise SystemTestError(f"{load['run_id']}: the task returned {load['summary']}, expected {wanted}")


def _check_failed_load(cluster: Cluster, failed: dict[str, Any]) -> None:
    """
    Check that the failed run tried once and failed on the retired event alone, before any load: the
    org no longer lists it, so the name check refuses it before any audit log is requested.
    """
    run_folder = cluster.airflow_home / "logs" / f"dag_id={PG_DAG}" / f"run_id={failed['run_id']}"
    folder = run_folder / f"task_id={PG_TASK_ID}"
    logs = sorted(folder.rglob("*.log"))
    text = "".join(path.read_text(errors="replace") for path in logs)
    said = [f"{FAILING_EVENT!r} is not an event the org lists", "No audit log was requested"]
    missing = [line for line in said if line not in text]
    if failed["try_number"] != 1 or not logs or missing or TASK_LOG_LINES[PG_TASK_ID] in text:
        raise SystemTestError(
            f"{failed['run_id']}: try {failed['try_number']}, logs {[str(p) for p in logs]}: expected one "
            f"try whose log says {missing or said} and does not say {TASK_LOG_LINES[PG_TASK_ID]!r}"
        )


def _check_table(
    services: Services, dataset: Any, event_names: list[str], since: datetime, until: datetime, when: str
) -> bytes:
    """Check the table holds exactly the stand-in's rows of [since, until), none twice; return its dump."""
    rows, dump = services.read_warehouse(WAREHOUSE_TABLE, TABLE_COLUMNS)
    got = Counter(_stored(row) for row in rows)
    want = Counter(_as_stored(row) for row in expected_rows(dataset, event_names, since, until))
    if got != want:
        missing, extra = want - got, got - want
        raise SystemTestError(
            f"{when}: table {WAREHOUSE_TABLE} holds {len(rows)} rows; the stand-in's rows of "
            f"{since.isoformat()} .. {until.isoformat()} are {want.total()}: {missing.total()} missing "
            f"(e.g. {next(iter(missing), None)}), {extra.total()} extra (e.g. {next(iter(extra), None)})"
        )
    twice = [row for row, count in got.items() if count > 1]
    if twice:
        raise SystemTestError(
            f"{when}: {len(twice)} rows are in table {WAREHOUSE_TABLE} twice, e.g. {twice[0]}"
        )
    return dump


def _stored(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Return a row read from the table with its time as ISO 8601 UTC text, as expected rows have it."""
    row = dict(zip(TABLE_COLUMNS, values))
    if row["changed_on"] is not None:
        row["changed_on"] = row["changed_on"].astimezone(timezone.utc).isoformat()
    return tuple(row[column] for column in TABLE_COLUMNS)


def _as_stored(row: dict[str, Any]) -> tuple[Any, ...]:
    """Return an expected row as the table holds it: text columns as text, in the table's order."""
    text = {"id", "updated_type", "request_id", "value", "previous_value"}
    return tuple(_text(row[column]) if column in text else row[column] for column in TABLE_COLUMNS)


def _text(value: Any) -> str | None:
    """Return a value as the docs say the table keeps it: a string as it is, other JSON as its JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- The workers' logs ------------------------------------------------------------------------------


def check_logs(
    cluster: Cluster,
    services: Services,
    runs: list[tuple[str, str]],
    failed_runs: list[tuple[str, str]],
) -> None:
    """Check that the workers' task logs exist, say what they did, and hold no secret.

    A failed run's log is only searched for secrets: its own check has read the error it holds.
    """
    step("Checking the workers' logs for secrets")
    md5 = hashlib.md5(PASSWORD.encode()).hexdigest()
    token = base64.b64encode(f"{LOGIN}:{md5}".encode()).decode()
    needles = {
        "the password": PASSWORD,
        "its MD5": md5,
        "the Basic token": token,
        "the AWS secret key": services.aws_secret,
        "the Redis password": services.redis_password,
        "the warehouse password": services.warehouse_password,
    }
    task_logs = []
    for dag_id, run_id in [*runs, *failed_runs]:
        found = sorted(
            (cluster.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").rglob("*.log")
        )
        if not found:
            raise SystemTestError(f"no task log for {dag_id} {run_id}")
        for path in found if (dag_id, run_id) in runs else ():
            task_folder = next(part for part in path.parts if part.startswith("task_id="))
            said = TASK_LOG_LINES[task_folder.removeprefix("task_id=")]
            if said not in path.read_text(errors="replace"):
                raise SystemTestError(f"{path} does not hold the operator's {said!r} line")
        task_logs += found
    worker_logs = [cluster.processes.log(f"worker-{n}") for n in range(1, len(WORKER_HOSTS) + 1)]
    for path in [*task_logs, *worker_logs, services.org_request_log]:
        text = path.read_text(errors="replace")
        for what, secret in needles.items():
            if secret in text:
                raise SystemTestError(f"{path} holds {what}")
    print(
        f"{len(task_logs)} task logs, {len(worker_logs)} worker logs and the org stand-in's request log: "
        "no password, MD5, Basic token, AWS secret key, Redis password or warehouse password"
    )


# --- The figures ------------------------------------------------------------------------------------


def print_figures(
    total: float,
    phases: dict[str, float],
    mapped: dict[str, Any],
    daily: dict[str, Any],
    org: dict[str, Any],
    pg: dict[str, Any],
) -> None:
    """Print the run's figures: where the time went, rows, instances per worker, the org's pace, the table."""
    step("Figures")
    print(f"  total run time                      {total:6.1f} s")
    for name, seconds in phases.items():
        print(f"    {name:<34}{seconds:6.1f} s")
    print(
        f"  mapped run (trigger to success)     {mapped['elapsed']:6.1f} s: {mapped['instances']} mapped "
        f"instances, {mapped['events']} events, {mapped['rows']} rows"
    )
    print(f"    instances per worker              {format_counts(mapped['per_worker'])}")
    print(f"  daily backfill, 3 days              {daily['elapsed']:6.1f} s: 3 runs, {daily['rows']} rows")
    print(f"    instances per worker              {format_counts(daily['per_worker'])}")
    print(
        f"  org run (trigger to success)        {org['elapsed']:6.1f} s: {org['instances']} mapped "
        f"instances, {org['events']} events, {org['rows']} rows"
    )
    print(f"    instances per worker              {format_counts(org['per_worker'])}")
    print(
        f"    requests at the org stand-in      {org['requests']} ({org['audit_requests']} audit-log), "
        f"{org['rejected']} answered 429"
    )
    print(f"    listing to first audit-log        {org['listing_gap']:6.2f} s")
    print(
        f"    audit-log span                    {org['span']:6.2f} s: {org['ratio']:.3f}x the floor of "
        f"{org['floor']:.1f} s (at most {ORG_SPAN_TOLERANCE}x); longest gap {org['longest_gap']:.2f} s"
    )
    print(f"  PostgreSQL DAG, {pg['events']} events into {WAREHOUSE_TABLE} (trigger or clear to end; task)")
    for number, load in enumerate(pg["loads"], start=1):
        print(
            f"    window {number}                          {load['elapsed']:6.1f} s; "
            f"{load['task_seconds']:5.1f} s: {load['summary']['rows_inserted']} rows inserted"
        )
    rerun = pg["rerun"]
    print(
        f"    rerun of window 1 (clear)         {rerun['elapsed']:6.1f} s; {rerun['task_seconds']:5.1f} s: "
        f"{rerun['summary']['rows_deleted']} rows deleted, {rerun['summary']['rows_inserted']} inserted, "
        "table unchanged"
    )
    failed = pg["failed"]
    print(
        f"    run with a refused event          {failed['elapsed']:6.1f} s; {failed['task_seconds']:5.1f} s: "
        f"failed, table unchanged ({pg['table_bytes']} bytes; {pg['would_add']} rows not added)"
    )


def format_counts(counts: Counter[str]) -> str:
    """Format a count per host name, sorted by name."""
    return ", ".join(f"{host}: {count}" for host, count in sorted(counts.items()))


# --- What the files should hold ---------------------------------------------------------------------


def load_dag_file(name: str) -> ModuleType:
    """Import an example DAG file, to read its event names as the DAG defines them."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / "dags_examples" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_rows(dataset: Any, names: list[str], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """
    Build the rows of a window from the stand-in's own record of what it generated.

    A record's timed entries go by true instant, ties in the order served; each names the value of the
    one before it, inside the window or not, as ``previous_value``.
    """
    rows = []
    for name in names:
        for record, instants in zip(dataset.records(name), dataset.instants(name)):
            timed = sorted(
                (instant, position, entry)
                for position, (entry, instant) in enumerate(zip(record["valueHistory"], instants))
                if instant is not None
            )
            for number, (instant, _, entry) in enumerate(timed):
                if not since <= instant < until:
                    continue
                rows.append(
                    {
                        "event_name": name,
                        "id": record["id"],
                        "org_id": record["orgId"],
                        "updated_type": record["updatedType"],
                        "request_id": record["requestId"],
                        "value": entry["value"],
                        "previous_value": timed[number - 1][2]["value"] if number else None,
                        "changed_on": instant.astimezone(timezone.utc).isoformat(),
                        "changed_on_raw": str(entry["changedOn"]),
                    }
                )
    return rows


def check_manifest(
    manifest: dict[str, Any],
    event_names: list[str],
    files: dict[str, bytes],
    run_id: str,
    since: datetime,
    until: datetime,
    where: str,
    map_index: int,
) -> None:
    """Check that a manifest lists every event of its share, with each file's true rows, size and hash."""
    problems = []
    if [entry["event_name"] for entry in manifest["events"]] != event_names:
        problems.append(f"events {[e['event_name'] for e in manifest['events']]} != {event_names}")
    for entry in manifest["events"]:
        body = files.get(entry["file"])
        if body is None:
            problems.append(f"{entry['file']} is listed but missing")
            continue
        if entry["bytes"] != len(body) or entry["sha256"] != hashlib.sha256(body).hexdigest():
            problems.append(f"{entry['file']}: size or SHA-256 differs from the file")
        if entry["rows"] != len(body.decode().splitlines()):
            problems.append(
                f"{entry['file']}: {entry['rows']} rows listed, {len(body.decode().splitlines())} in the file"
            )
    if manifest["total_rows"] != sum(entry["rows"] for entry in manifest["events"]):
        problems.append("total_rows is not the sum of the events' rows")
    if manifest["run_id"] != run_id or manifest["map_index"] != map_index:
        problems.append(
            f"run {manifest['run_id']!r} map index {manifest['map_index']}, expected {run_id!r} {map_index}"
        )
    if parse_time(manifest["changed_since"]) != since or parse_time(manifest["changed_until"]) != until:
        problems.append(f"window {manifest['changed_since']} .. {manifest['changed_until']} is not the run's")
    if problems:
        raise SystemTestError(f"manifest in {where} (map index {map_index}): " + "; ".join(problems))


def _event_of(file_name: str) -> str:
    from airflow_capillary_audit.formats import event_name_from_file

    return event_name_from_file(file_name)[0]


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time from the REST API or a manifest into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
