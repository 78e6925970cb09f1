"""
Show the watch locally: the stand-in changes an event every few seconds, and the trigger reports it.

``make watch-demo`` (or ``python scripts/watch_demo.py [--seconds 60] [--every 7] [--poll 3]``) starts the
stand-in on a free loopback port with ``live_every``, points a ``capillary`` connection at it, and runs
``CapillaryAuditLogTrigger.run()`` on an event loop, as the triggerer does, printing each change it
reports: the baseline first (nothing fires for history), then each change a few seconds after it is made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

EVENTS = ("TierUpgraded", "PointsIssued", "CouponRedeemed")


def main(argv: list[str]) -> int:
    """Run the demo for ``--seconds``; return 0 when every change made was reported once."""
    parser = argparse.ArgumentParser(
        prog="python scripts/watch_demo.py", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=45.0, help="how long to watch (default 45)")
    parser.add_argument("--every", type=float, default=7.0, help="seconds between changes (default 7)")
    parser.add_argument("--poll", type=float, default=3.0, help="the trigger's poll_interval (default 3)")
    args = parser.parse_args(argv)
    home = tempfile.mkdtemp(prefix="capillary-watch-demo-")
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    from airflow_capillary_audit.changes import describe
    from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
    from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger

    made: list[object] = []
    reported: list[dict[str, object]] = []
    dataset = Dataset(seed=42, event_names=EVENTS, end=datetime.now(timezone.utc))

    def announce(change: object) -> None:
        made.append(change)
        print(
            f"[stand-in] {change.event_name!r} changed: {change.previous_value!r} -> {change.value!r}",
            flush=True,
        )  # type: ignore[attr-defined]

    with CapillaryStandIn(
        users={"store.server": "server123"}, dataset=dataset, live_every=args.every, on_change=announce
    ) as stand_in:
        os.environ["AIRFLOW_CONN_CAPILLARY_DEFAULT"] = json.dumps(
            {"conn_type": "capillary", "host": stand_in.url, "login": "store.server", "password": "server123"}
        )
        print(f"Stand-in at {stand_in.url}: {', '.join(EVENTS)}; a change every {args.every:g} s")
        trigger = CapillaryAuditLogTrigger(event_names=list(EVENTS), poll_interval=args.poll)
        print(
            f"Watching every {args.poll:g} s for {args.seconds:g} s: {trigger.serialize()[1]}\n", flush=True
        )
        started = time.monotonic()

        async def watch() -> None:
            async def collect() -> None:
                async for event in trigger.run():
                    for row in event.payload["changes"]:
                        reported.append(row)
                        print(
                            f"[trigger]  fired after {time.monotonic() - started:5.1f} s: {describe(row)}",
                            flush=True,
                        )

            task = asyncio.create_task(collect())
            await asyncio.sleep(args.seconds)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(watch())
    # A change made in the last poll interval may not be reported yet: those before it must be, once.
    settled = [c for c in made if c.wall < time.time() - 2 * args.poll - 2]  # type: ignore[attr-defined]
    keys = [(r["event_name"], r["id"], r["value"]) for r in reported]
    missing = [c for c in settled if (c.event_name, c.record_id, c.value) not in keys]  # type: ignore[attr-defined]
    print(
        f"\n{len(made)} changes made, {len(reported)} reported, {len(keys) - len(set(keys))} twice, "
        f"{len(missing)} of the settled ones missing"
    )
    return 0 if not missing and len(keys) == len(set(keys)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
