"""
Serve the Capillary stand-in in a process of its own, and report what it received when stopped.

A server in the benchmark's own process would compete with the client for the GIL, so the
figures would measure the two together. Run as ``python -m benchmarks.stand_in``; the parent uses
:class:`StandInProcess`. The command line is the stand-in's own (``python -m
airflow_capillary_audit.sandbox``), with two options added: ``--warm`` and ``--report-file``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_capillary_audit.sandbox.__main__ import build_parser, build_stand_in

ROOT = Path(__file__).resolve().parent.parent
LOGIN = "store.server"
PASSWORD = "server123"
SEED = 20261124
# A fixed end keeps the served bytes the same whatever the day the benchmark runs.
DATA_END = datetime(2026, 11, 25, tzinfo=timezone.utc)


def event_names(prefix: str, count: int) -> list[str]:
    """Return the benchmark's event names: ``<prefix>-0000`` and on."""
    return [f"{prefix}-{index:04d}" for index in range(count)]


def _parser() -> argparse.ArgumentParser:
    parser = build_parser()
    parser.prog = "python -m benchmarks.stand_in"
    parser.add_argument(
        "--warm",
        action="append",
        default=[],
        metavar="PREFIX:COUNT",
        help="generate these events' bodies before reporting ready",
    )
    parser.add_argument("--report-file", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM, then write the status and arrival time of every request, also by path."""
    args = _parser().parse_args(argv)
    stand_in = build_stand_in(args, data_end=DATA_END)
    for spec in args.warm:
        prefix, _, count = spec.rpartition(":")
        for name in event_names(prefix, int(count)):
            stand_in.dataset.body(name)
    stand_in.serve_until_signalled(args.ready_file, announce=False)
    received = stand_in.requests
    by_path: dict[str, list[float]] = {}
    for request in received:
        by_path.setdefault(request.path, []).append(request.monotonic)
    report = {
        "statuses": dict(Counter(str(r.status) for r in received)),
        "arrivals": sorted(r.monotonic for r in received),
        "arrivals_by_path": {path: sorted(arrivals) for path, arrivals in by_path.items()},
    }
    Path(args.report_file).write_text(json.dumps(report))
    return 0


class StandInProcess:
    """Start ``python -m benchmarks.stand_in`` with the given options; ``stop()`` returns its report.

    Each option is the stand-in's command-line option of that name (``rate_limit=600`` is
    ``--rate-limit 600``; a list repeats it); the port, seed and user are the benchmarks' own.
    """

    def __init__(self, env: dict[str, str], **options: Any) -> None:
        self._env = env
        self._options = options
        self._folder = Path(tempfile.mkdtemp(prefix="capillary-bench-stand-in-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> StandInProcess:
        ready = self._folder / "url"
        command = [
            sys.executable,
            "-m",
            "benchmarks.stand_in",
            "--port",
            "0",
            "--seed",
            str(SEED),
            "--user",
            f"{LOGIN}:{PASSWORD}",
            "--ready-file",
            str(ready),
            "--report-file",
            str(self._folder / "report.json"),
        ]
        for name, value in self._options.items():
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    command += [f"--{name.replace('_', '-')}", str(item)]
        # Its standard output says only what the stand-in changed (B7), which the report does not need.
        self._process = subprocess.Popen(command, cwd=ROOT, env=self._env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self._process.poll() is not None:
                raise RuntimeError(f"the stand-in exited with {self._process.returncode} before it was ready")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the stand-in was not ready within 120 s")
            time.sleep(0.05)
        self.url = ready.read_text()
        return self

    def stop(self) -> dict[str, Any]:
        """
        Stop the server; return ``{"statuses": {status: count}, "arrivals": [monotonic, ...],
        "arrivals_by_path": {path: [monotonic, ...]}}``.
        """
        process, self._process = self._process, None
        if process is None:
            return {}
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        report = self._folder / "report.json"
        result = json.loads(report.read_text()) if report.exists() else {}
        for path in self._folder.iterdir():
            path.unlink()
        os.rmdir(self._folder)
        return result

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
