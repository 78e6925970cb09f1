"""What every part of the system test shares: the repository, the test's fixed data, errors, output."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTED_AT_VARIABLE = "CAPILLARY_SYSTEM_TEST_STARTED_AT"
# Every process this script starts carries this variable, so a stray child can be found by it.
MARKER_VARIABLE = "CAPILLARY_SYSTEM_TEST_ID"

MAPPED_DAG = "capillary_audit_mapped_s3"
DAILY_DAG = "capillary_audit_daily"
TASK_ID = "fetch_audit_logs"
LOGIN, PASSWORD = "store.server", "server123"
# The stand-in's data: a few hundred records per event, up to 20 changes each, over the last 30 days.
SEED = 42
RECORDS_PER_EVENT = (300, 600)
HISTORY_PER_RECORD = (0, 20)
BUCKET = "capillary-system-test"

ORG_DAG = "capillary_audit_org"
ORG_CONN_ID = "capillary_org"
ORG_PREFIX = "org"
# The org's stand-in: 300 events, a few with the names users give them, in groups of 50 (6 groups).
ORG_EVENTS = (
    "PointsRedeemed",
    "TierUpgraded",
    "Café Visit",
    "coupons & offers",
    *(f"OrgEvent-{number:03d}" for number in range(4, 300)),
)
ORG_GROUP_SIZE = 50
# Fewer records than the other stand-in's: the run measures pacing, not the workers' parsing.
ORG_RECORDS_PER_EVENT = (20, 60)
# Capillary's limit as the stand-in enforces it, and the connection's requests_per_minute: equal.
ORG_RATE_LIMIT = 600
ORG_RATE_BURST = 5
# The audit-log requests' span may exceed the floor the rate sets by at most this factor.
ORG_SPAN_TOLERANCE = 1.15
PG_DAG = "capillary_audit_to_postgres"
PG_TASK_ID = "load_audit_logs"
# The PostgreSQL DAG's database, its owner and the workers' connection to it share one name.
WAREHOUSE = "warehouse"
WAREHOUSE_TABLE = "capillary_audit_logs"
# The stand-in answers 400 to this event's audit logs, as Capillary does to a name it refuses.
FAILING_EVENT = "RetiredEvent"
# The watch: capillary_audit_watch on a stand-in of its own, whose history ends when it starts, through
# the shared rate budget; a change must start its run within the poll interval and 15 s.
WATCH_DAG = "capillary_audit_watch"
WATCH_CONN_ID = "capillary_watch"
WATCH_EVENTS = ("TierUpgraded", "PointsIssued", "CouponRedeemed")
WATCH_POLL_INTERVAL = 5.0
WATCH_LAG_LIMIT = WATCH_POLL_INTERVAL + 15.0
WORKER_HOSTS = ("capillary-worker-1", "capillary-worker-2")
# Two slots per worker, three mapped instances: with Airflow's late acks (prefetch = concurrency) one
# worker holds at most two tasks, so the third must go to the other.
WORKER_CONCURRENCY = 2
START_TIMEOUT = 180.0
RUN_TIMEOUT = 300.0


class SystemTestError(Exception):
    """A check failed or a service misbehaved; the message says which and where to look."""


class Interrupted(BaseException):
    """A signal asked the test to stop; raised so that every ``finally`` still runs."""


def step(message: str) -> None:
    """Print the heading of the next step."""
    print(f"\n==> {message}", flush=True)


def tail(path: Path, lines: int) -> str:
    """Return the last lines of a text file, indented."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text)
