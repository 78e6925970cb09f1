"""Start processes, stop every one of them by its id, and wait for what they should do."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from scripts.system_test.common import MARKER_VARIABLE, SystemTestError, tail

T = TypeVar("T")


class Processes:
    """Start processes, each in a session of its own, and stop every one of them by its id."""

    def __init__(self, log_dir: Path, marker: str) -> None:
        self.log_dir = log_dir
        self.marker = marker
        self.started: list[Started] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        tier: int = 0,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``<log_dir>/<name>.log``; higher tiers are stopped first."""
        with open(self.log(name), "ab") as log:
            process = subprocess.Popen(
                argv,
                env={**env, MARKER_VARIABLE: self.marker},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                cwd=self.log_dir,
            )
        self.started.append(Started(name, process, tier, stop_signal))
        return process

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        """Stop following a process that exited on its own as expected (a server that lost its port)."""
        if process.poll() is None:
            raise SystemTestError(f"pid {process.pid} still runs; only an exited process can be forgotten")
        self.started = [started for started in self.started if started.process is not process]

    def stop(self, name: str, grace: float = 30.0) -> list[str]:
        """Stop the process started as ``name`` (and what it left in its session); return what was killed."""
        group = [started for started in self.started if started.name == name]
        if not group:
            raise SystemTestError(f"no process was started as {name!r}")
        forced = _stop_group(group, grace)
        self.started = [started for started in self.started if started.name != name]
        return forced

    def log(self, name: str) -> Path:
        """Return the log file of the process started as ``name``."""
        return self.log_dir / f"{name}.log"

    def check_alive(self) -> None:
        """Fail when a started process has exited: nothing after it could work."""
        for started in self.started:
            if started.process.poll() is not None:
                raise SystemTestError(
                    f"{started.name} exited with code {started.process.returncode}; see "
                    f"{self.log(started.name)}:\n" + tail(self.log(started.name), 30)
                )

    def stop_all(self, grace: float = 30.0) -> list[str]:
        """Stop every started process, tier by tier, highest first; return what had to be killed."""
        forced = []
        for tier in sorted({started.tier for started in self.started}, reverse=True):
            group = [started for started in self.started if started.tier == tier]
            forced += _stop_group(group, grace)
        # Anything that left its process group but stayed in the session, or still carries the marker.
        for pid in self.leftovers():
            forced.append(f"pid {pid} ({_command_line(pid)})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return forced

    def leftovers(self) -> list[int]:
        """Return the live processes in a session this object started, or carrying its marker."""
        sessions = {started.process.pid for started in self.started}
        return sorted(set(processes_in_sessions(sessions)) | set(marked_processes(self.marker)))


@dataclass(frozen=True)
class Started:
    """One process this script started, and how to stop it."""

    name: str
    process: subprocess.Popen[bytes]
    tier: int
    stop_signal: signal.Signals


def _stop_group(group: list[Started], grace: float) -> list[str]:
    """Stop the processes of one tier and whatever they left in their sessions; return what was killed."""
    forced = []
    # The leader alone first, so that it shuts its own children down in order.
    for started in group:
        if started.process.poll() is None:
            started.process.send_signal(started.stop_signal)
    deadline = time.monotonic() + grace
    for started in group:
        try:
            started.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            forced.append(f"{started.name} (pid {started.process.pid})")
            _signal_group(started.process.pid, signal.SIGKILL)
            started.process.wait(timeout=10)
    # Children left in a session after its leader exited (task processes, pool workers).
    for started in group:
        if processes_in_sessions({started.process.pid}):
            _signal_group(started.process.pid, signal.SIGTERM)
            wait_gone = time.monotonic() + 5
            while processes_in_sessions({started.process.pid}) and time.monotonic() < wait_gone:
                time.sleep(0.1)
            if processes_in_sessions({started.process.pid}):
                forced.append(f"children of {started.name} (session {started.process.pid})")
                _signal_group(started.process.pid, signal.SIGKILL)
    return forced


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def processes_in_sessions(sessions: set[int]) -> list[int]:
    """Return the live processes whose session id is one of these."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # After the command name in parentheses: state, parent, process group, session, ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) in sessions:
            found.append(int(entry.name))
    return found


def marked_processes(marker: str) -> list[int]:
    """Return the live processes whose environment still carries this run's marker.

    Processes that set their title (PostgreSQL, Redis, Celery) may overwrite their environment
    block, so this complements :func:`processes_in_sessions` rather than replacing it.
    """
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def uts_namespace_command() -> list[str]:
    """Return the ``unshare`` prefix that runs a command under a host name of its own."""
    # Root can make a UTS namespace directly; anyone else needs a user namespace around it.
    command = ["unshare", "--uts"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--uts"]
    probe = subprocess.run(
        [*command, "hostname", "capillary-probe"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise SystemTestError(
            f"`{shlex.join(command)}` failed ({probe.stderr.strip()}): each worker needs a host name of its "
            "own; run as root or enable unprivileged user namespaces"
        )
    return command


def listening_ports(ports: Iterable[int]) -> list[int]:
    """Return which of these TCP ports still have a listening socket on this machine."""
    wanted = set(ports)
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # Field 3 is the socket state; 0A is LISTEN.
            if fields[3] == "0A":
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in wanted:
                    listening.add(port)
    return sorted(listening)


def logged_url(processes: Processes, name: str, pattern: str) -> Callable[[], str | None]:
    """Return a check for ``wait_until``: the first group of ``pattern`` in the process's log, once there.

    A server started on port 0 binds a free port itself and logs it; reading it back leaves no window
    in which another process could take the port.
    """

    def check() -> str | None:
        found = re.search(pattern, processes.log(name).read_text(errors="replace"))
        return found.group(1) if found else None

    return check


def wait_until(what: str, check: Callable[[], T | None], timeout: float, processes: Processes) -> T:
    """Call ``check`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        processes.check_alive()
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 -- not ready yet; the last error explains a timeout
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise SystemTestError(f"{what}: not within {timeout:.0f} s{detail}")
        time.sleep(0.5)
