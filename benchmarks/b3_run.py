"""
Run B3 for one output format in a fresh process: ``python -m benchmarks.b3_run URL FORMAT COUNT``.

A process per format keeps one format's peak memory from hiding in another's. Prints one JSON
line: the wall seconds of the run, its rows, the resident memory before it and the peak after.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile

from benchmarks.runs import peak_rss_bytes, prepare_environment, run_operator, use_stand_in
from benchmarks.stand_in import event_names

WARM_PREFIX = "b3-warm"
PREFIX = "b3"


def main(argv: list[str]) -> int:
    """Warm up on two events, then time the operator on ``COUNT`` events and measure its memory."""
    url, output_format, count = argv[0], argv[1], int(argv[2])
    prepare_environment()
    use_stand_in(url)
    import psutil

    with tempfile.TemporaryDirectory(prefix="capillary-bench-b3-") as folder:
        # Imports and first-use set-up (object storage, pyarrow) are not what B3 measures.
        run_operator(event_names(WARM_PREFIX, 2), f"{folder}/warm", output_format=output_format)
        gc.collect()
        rss_before = psutil.Process().memory_info().rss
        seconds, summary = run_operator(
            event_names(PREFIX, count), f"{folder}/run", output_format=output_format
        )
        peak = peak_rss_bytes()
    print(
        json.dumps(
            {"seconds": seconds, "rows": summary["total_rows"], "rss_before": rss_before, "peak_rss": peak}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
