"""Serve the Capillary stand-in from a shell until SIGINT or SIGTERM.

Example::

    python -m airflow_capillary_audit.sandbox --port 8765 --user store.server:server123 --seed 42 \\
        --events "points_update,tier_change" --rate-limit 600 --fault http_503:0.05 \\
        --fault "http_400@tier_change" --ready-file /tmp/url \\
        --request-log /tmp/requests.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime

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

    :param data_end: ``Dataset``'s ``end``, the end of the generated instants; by default the next UTC
        midnight. The benchmarks fix it, so that the bytes served do not depend on the day.
    """
    seed: int | str = int(args.seed) if args.seed.lstrip("-").isdigit() else args.seed
    events = [name.strip() for name in args.events.split(",") if name.strip()] if args.events else None
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
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then return 0."""
    args = build_parser().parse_args(argv)
    build_stand_in(args).serve_until_signalled(args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
