"""The command line: ``python3 -m scripts.system_test [--keep]``, from the repository's root.

Outside ``.venv-system`` it installs what is missing and runs itself again inside it (see
:mod:`scripts.system_test.install`); inside, it runs the test (:mod:`scripts.system_test.runner`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType
from typing import NoReturn

import scripts.system_test
from scripts.system_test.common import STARTED_AT_VARIABLE, Interrupted
from scripts.system_test.install import bootstrap, in_venv


def main(argv: list[str]) -> int:
    """Bootstrap the environment if needed, then run the system test inside ``.venv-system``."""
    description = (scripts.system_test.__doc__ or "").strip().split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python3 -m scripts.system_test", description=description)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    args = parser.parse_args(argv)
    os.environ.setdefault(STARTED_AT_VARIABLE, repr(time.time()))
    if not in_venv():
        bootstrap(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    from scripts.system_test.runner import SystemTest

    return SystemTest(keep=args.keep).run()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
