"""Print each benchmark's figures beside its targets, and tell which targets were missed."""

from __future__ import annotations

# Targets known to be missed, with the reason; they are reported but do not fail the run.
EXPECTED_MISSES = {
    "B3 jsonl vs decode-only": (
        "a per-row Python pipeline (read changedOn in five formats, build the row, encode) against "
        "a C decoder; reaching 3x needs a flattener in C (docs/contributing/benchmarks.md, 'Why B3 "
        "misses its target')"
    ),
}


class Report:
    """Print figures as they come and collect each target's verdict."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[str, bool | None]] = []

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def target(self, name: str, figure: str, target: str, passed: bool | None) -> None:
        word = "n/a" if passed is None else ("PASS" if passed else "MISS")
        if passed is False and name in EXPECTED_MISSES:
            word = "MISS (expected)"
        self.line(f"    {figure:<52} target {target:<26} {word}")
        self.verdicts.append((name, passed))

    def failures(self) -> list[str]:
        """Return the targets missed or not measured, but for the expected misses."""
        return [name for name, passed in self.verdicts if not passed and name not in EXPECTED_MISSES]
