"""Serve the Capillary stand-in from a shell until SIGINT or SIGTERM.

Example::

    python -m airflow_capillary_audit.sandbox --port 8765 --user store.server:server123 --seed 42 \\
        --events "points_update,tier_change" --rate-limit 600 --fault http_503:0.05 \\
        --fault "http_400@tier_change" --ready-file /tmp/url \\
        --request-log /tmp/requests.jsonl

    # A change every 30 s to each listed event in turn; the history generated ends at start-up.
    python -m airflow_capillary_audit.sandbox --events "points_update,tier_change" --live-every 30

    # A change now, from another shell (any event the org has; value, record_id optional):
    curl -X POST localhost:8765/_control/changes -d '{"event_name": "points_update", "value": "Gold"}'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from airflow_capillary_audit.sandbox.changes import AddedChange
from airflow_capillary_audit.sandbox.data import Dataset
from airflow_capillary_audit.sandbox.faults import FAULT_KINDS, RATE_LIMIT_ALGORITHMS, Fault, RateLimit
from airflow_capillary_audit.sandbox.server import DEFAULT_USERS, CapillaryStandIn


def _pair(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name, value


def _range(text: str) -> tuple[int, int]:
    low, separator, high = text.partition(":")
    try:
        return (int(low), int(high)) if separator else (int(low), int(low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, got {text!r}") from None


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return count


def _names(text: str | None) -> list[str] | None:
    """Return the names of a comma-separated list, or None for none."""
    names = [name.strip() for name in text.split(",") if name.strip()] if text else []
    return names or None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return seconds


def _moment(text: str) -> datetime:
    if text == "now":
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"expected 'now' or an ISO 8601 time with an offset, got {text!r}")
    return moment


def _fault(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the command line's parser; ``benchmarks.stand_in`` adds its own options to it."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_capillary_audit.sandbox",
        description=(
            "Serve a local stand-in of Capillary's audit-log API (GET /v2/events/audit_logs) and of its "
            "list of the org's events (GET /v2/events)."
        ),
        epilog=(
            'Changes while it runs: POST /_control/changes with a JSON object {"event_name": ..., '
            '"value": ..., "record_id": ..., "updated_type": ..., "new_record": false} adds a '
            "value-history entry to that event now (changedOn = now; value, record and updatedType "
            "chosen when left out) and answers 201 with the change; GET /_control/changes lists the "
            "changes added. The control endpoint needs no credentials and is neither rate limited nor "
            "in --request-log. --live-every adds one by itself."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--user",
        action="append",
        type=_pair,
        default=[],
        metavar="LOGIN:PASSWORD",
        help="a user, with the plain password (repeatable; default store.server:server123)",
    )
    parser.add_argument("--seed", default="42", help="seed of the generated data")
    parser.add_argument(
        "--events",
        help="comma-separated event names the org has, which GET /v2/events lists (default: any name, and "
        "a default list)",
    )
    parser.add_argument(
        "--nameless-events",
        type=_count,
        default=0,
        metavar="N",
        help="entries without a usable event name added to GET /v2/events (default: 0)",
    )
    parser.add_argument("--records-per-event", type=_range, default=(1, 6), metavar="LOW:HIGH")
    parser.add_argument("--history-per-record", type=_range, default=(0, 5), metavar="LOW:HIGH")
    parser.add_argument(
        "--unparseable-rate", type=float, default=0.0, help="fraction of junk changedOn values"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds waited before every response")
    parser.add_argument(
        "--gzip", action="store_true", help="gzip bodies for clients that accept it (Content-Encoding: gzip)"
    )
    parser.add_argument(
        "--chunked", action="store_true", help="send whole bodies with Transfer-Encoding: chunked"
    )
    parser.add_argument("--rate-limit", type=int, help="requests allowed per window (default: no limit)")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--rate-algorithm", choices=RATE_LIMIT_ALGORITHMS, default="fixed")
    parser.add_argument("--rate-burst", type=int, help="leaky bucket capacity")
    parser.add_argument("--retry-after", choices=("seconds", "http-date", "zero", "none"), default="seconds")
    parser.add_argument(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="KIND[:RATE][@EVENT_NAME]",
        help=f"inject a fault (repeatable); @EVENT_NAME keeps it to that event's audit logs. Kinds: "
        f"{', '.join(FAULT_KINDS)}",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault RNG")
    parser.add_argument("--oauth-client", action="append", type=_pair, default=[], metavar="KEY:SECRET")
    parser.add_argument("--oauth-ttl", type=int, default=300, help="OAuth token lifetime in seconds")
    parser.add_argument("--no-basic-auth", action="store_true", help="refuse Basic authentication")
    parser.add_argument(
        "--data-end",
        type=_moment,
        metavar="now|ISO",
        help="end of the generated history (exclusive): 'now' or an ISO time with offset (default: the "
        "next UTC midnight; 'now' with --live-every)",
    )
    parser.add_argument(
        "--live-every",
        type=_seconds,
        metavar="SECONDS",
        help="add a change to an event every SECONDS while running, to each of --live-events in turn, "
        "and print it",
    )
    parser.add_argument(
        "--live-events",
        metavar="NAMES",
        help="comma-separated events --live-every changes (default: the org's event list)",
    )
    parser.add_argument("--ready-file", help="write the URL to this file once listening")
    parser.add_argument(
        "--request-log",
        metavar="FILE",
        help="append one JSON line per request answered to FILE, as it is answered: wall, monotonic "
        "(times received), method, path, event_name, status, fault, request_id",
    )
    return parser


def build_stand_in(args: argparse.Namespace, *, data_end: datetime | None = None) -> CapillaryStandIn:
    """Return the stand-in that parsed command-line arguments describe, not yet started.

    :param data_end: ``Dataset``'s ``end``, the end of the generated instants; by default ``--data-end``,
        else now with ``--live-every``, else the next UTC midnight. The benchmarks fix it, so that the
        bytes served do not depend on the day.
    """
    seed: int | str = int(args.seed) if args.seed.lstrip("-").isdigit() else args.seed
    if data_end is None:
        data_end = args.data_end
    if data_end is None and args.live_every is not None:
        # Live changes are made now: the generated history must not run past them.
        data_end = datetime.now(timezone.utc)
    events = [name.strip() for name in args.events.split(",") if name.strip()] if args.events else None
    live_events = _names(args.live_events)
    rate_limit = None
    if args.rate_limit is not None:
        rate_limit = RateLimit(
            limit=args.rate_limit,
            window=args.rate_window,
            algorithm=args.rate_algorithm,
            burst=args.rate_burst,
            retry_after=None if args.retry_after == "none" else args.retry_after,
        )
    return CapillaryStandIn(
        users=dict(args.user) if args.user else DEFAULT_USERS,
        dataset=Dataset(
            seed=seed,
            event_names=events,
            records_per_event=args.records_per_event,
            history_per_record=args.history_per_record,
            end=data_end,
            unparseable_rate=args.unparseable_rate,
            nameless_events=args.nameless_events,
        ),
        host=args.host,
        port=args.port,
        latency=args.latency,
        rate_limit=rate_limit,
        faults=args.fault,
        seed=args.fault_seed,
        oauth_clients=dict(args.oauth_client) if args.oauth_client else None,
        oauth_ttl_seconds=args.oauth_ttl,
        basic_auth_enabled=not args.no_basic_auth,
        request_log=args.request_log,
        gzip=args.gzip,
        chunked=args.chunked,
        live_every=args.live_every,
        live_events=live_events,
        on_change=_print_change,
    )


def _print_change(change: AddedChange) -> None:
    """Say on standard output what changed, so that a person running the stand-in sees it."""
    record = "new record" if change.new_record else "record"
    print(
        f"change: event {change.event_name!r}, {record} {change.record_id}: "
        f"{change.previous_value!r} -> {change.value!r} at {change.changed_on}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then return 0."""
    args = build_parser().parse_args(argv)
    build_stand_in(args).serve_until_signalled(args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
