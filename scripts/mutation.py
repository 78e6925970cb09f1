"""
Mutation testing with mutmut: run it over the package, then report by module.

Each profile stages a copy of the working tree in ``.mutation/<profile>/`` (mutmut reads its
settings from ``pyproject.toml`` and writes ``mutants/`` beside it, so the tree itself stays clean),
runs ``mutmut run`` there, and prints how many mutants each module gave, how many the tests killed,
and every survivor. A survivor is explained when ``tests/mutation_equivalents.txt`` records it as
equivalent (a change no caller can observe) with a reason; the run fails while any survivor is
unexplained.

    python scripts/mutation.py                    # the package (stand-in excluded), whole suite
    python scripts/mutation.py --profile pure     # the pure modules under their own test files
    python scripts/mutation.py --profile core     # the other modules, under the whole suite
    python scripts/mutation.py --profile hook     # the request path under its in-process tests
    python scripts/mutation.py --profile sinks    # the folder sink under its tests
    python scripts/mutation.py --profile operators  # the operators under the DAG-level tests
    python scripts/mutation.py --profile connection  # the connection's reading under its in-process tests
    python scripts/mutation.py --report-only      # the report of the last run, without running
    python scripts/mutation.py --unfinished       # carry on a stopped run: only what it did not reach
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "airflow_capillary_audit"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
# Each profile's results as of its last run, kept in the repository: a run on another machine (a fresh
# clone has no .mutation/) carries on from them instead of starting again.
RESULTS = ROOT / "tests" / "mutation_results"
# The rest of a mutmut .meta file, left empty in a kept result: timings belong to the machine that ran.
UNTIMED: dict[str, dict[str, object]] = {
    "type_check_error_by_key": {},
    "durations_by_key": {},
    "estimated_durations_by_key": {},
}
# What the profile's folder keeps between runs: mutmut's results and the migrated metadata DB.
KEPT = {"mutants", "airflow-metadata"}


@dataclass(frozen=True)
class Profile:
    """What one mutmut run mutates and which tests it may run."""

    modules: tuple[str, ...]
    tests: tuple[str, ...] = ()
    excluded: tuple[str, ...] = (f"{PACKAGE}/sandbox/*",)


PROFILES = {
    # Everything but the stand-in, under the whole suite: mutmut runs, for each mutant, the tests
    # that called the mutated function when the suite ran once under its trampoline.
    "package": Profile(modules=()),
    # The modules the pure profile leaves out (connection, request path, sinks, operator), under the
    # whole suite: the package profile less the pure modules' mutants, which take most of its time.
    "core": Profile(
        modules=(
            "_compat.py",
            "connection.py",
            "exceptions.py",
            "retry.py",
            "responses.py",
            "hooks/capillary.py",
            "sinks.py",
            "commit.py",
            "operators/audit_logs.py",
            "operators/events.py",
            "get_provider_info.py",
        ),
    ),
    # The request path under the tests that drive it in-process: minutes, where the core profile
    # takes hours on two cores because every operator test runs a DAG.
    "hook": Profile(
        modules=("hooks/capillary.py", "retry.py", "responses.py", "pacing.py", "auth.py"),
        tests=(
            "tests/hooks",
            "tests/test_retry.py",
            "tests/test_responses.py",
            "tests/test_pacing.py",
            "tests/test_auth.py",
            "tests/test_rate_budget.py",
            "tests/test_concurrency.py",
            "tests/reliability/test_transport.py",
            "tests/reliability/test_stop.py",
            "tests/reliability/test_secrets.py",
        ),
    ),
    # The folder sink and its commits, under their own tests and the folder's reliability tests.
    "sinks": Profile(
        modules=("sinks.py", "commit.py"),
        tests=(
            "tests/test_sinks.py",
            "tests/reliability/test_folder.py",
            "tests/operators/test_s3_destination.py",
        ),
    ),
    # The operators and the table statements under the DAG-level tests: the slowest profile, since
    # most of its tests run a DAG (hours on two cores; start it first, or on a bigger machine).
    "operators": Profile(
        modules=(
            "operators/base.py",
            "operators/audit_logs.py",
            "operators/sql.py",
            "operators/events.py",
            "tables.py",
            "exceptions.py",
        ),
        tests=(
            "tests/operators",
            "tests/reliability",
            "tests/test_exceptions.py",
            "tests/test_tables.py",
        ),
    ),
    # The connection's reading and its form under the tests that read a connection in-process: the
    # connection and provider tests, the hook's, and the operator's bad-input, secrets and transport
    # tables. Under the operators' DAG-level tests every one of its mutants ran a DAG first.
    "connection": Profile(
        modules=("connection.py",),
        tests=(
            "tests/test_connection.py",
            # The connection form's fields, as the provider info and the hook's classmethods give them.
            "tests/test_provider.py",
            "tests/hooks",
            "tests/reliability/test_bad_input.py",
            "tests/reliability/test_secrets.py",
            "tests/reliability/test_transport.py",
        ),
    ),
    # The modules that import nothing from Airflow, each under its own unit tests only.
    "pure": Profile(
        modules=("records.py", "event_names.py", "changed_on.py", "formats.py", "pacing.py", "auth.py"),
        tests=(
            "tests/test_records.py",
            "tests/test_event_names.py",
            "tests/test_changed_on.py",
            "tests/test_formats.py",
            "tests/test_auth.py",
            "tests/test_pacing.py",
            "tests/hooks/test_oauth.py",
        ),
    ),
}

# Per test: a mutant that makes a test hang (a wait that never ends) is killed by the timeout.
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "--timeout=120"]
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
# Not killed: a survivor ran its tests and passed them; "no tests" had no test to run.
UNKILLED = {"survived", "no tests"}
# Every other status ("not checked", "suspicious", "skipped", ...) means the run is incomplete.


def mutmut_settings(profile: Profile) -> str:
    """Return the ``[tool.mutmut]`` table for a profile."""

    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    lines = [
        "",
        "[tool.mutmut]",
        f'source_paths = ["{PACKAGE}"]',
        f"do_not_mutate = {toml_list(list(profile.excluded))}",
        'also_copy = ["dags_examples", "scripts"]',
        f"pytest_add_cli_args = {toml_list(PYTEST_ARGS)}",
        # Each mutant runs in a child of a server that imported only pytest: the child imports the
        # tests itself, so it gets an Airflow home and metadata DB of its own (tests/conftest.py).
        'process_isolation = "forkserver"',
        'forkserver_warmup = "none"',
    ]
    if profile.modules:
        lines.append(f"only_mutate = {toml_list([f'{PACKAGE}/{m}' for m in profile.modules])}")
    if profile.tests:
        lines.append(f"pytest_add_cli_args_test_selection = {toml_list(list(profile.tests))}")
    return "\n".join(lines) + "\n"


def stage(profile_name: str, profile: Profile, fresh: bool) -> Path:
    """Copy the working tree's files (tracked and new, not ignored) into the profile's folder."""
    folder = ROOT / ".mutation" / profile_name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    wanted = {name for name in listed if name and (ROOT / name).is_file()}
    for name in sorted(wanted):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # A file deleted or renamed in the tree goes from the copy too; mutmut's own files stay.
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in KEPT and str(relative) not in wanted:
            path.unlink()
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    text = text.split("\n[tool.mutmut]")[0]
    pyproject.write_text(text.rstrip("\n") + "\n" + mutmut_settings(profile), encoding="utf-8")
    return folder


def save_results(folder: Path, path: Path) -> None:
    """Write each mutated file's function hashes and mutant exit codes from mutmut's ``.meta`` files."""
    mutants = folder / "mutants"
    kept = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        kept[meta.relative_to(mutants).as_posix()] = {
            "hash_by_function_name": data["hash_by_function_name"],
            "exit_code_by_key": data["exit_code_by_key"],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def restore_results(folder: Path, path: Path) -> int:
    """
    Give mutmut the kept results of every mutated file it has none of; return how many files.

    mutmut keeps a result only while its function's hash is unchanged, so a result kept for code
    that has changed since is dropped by mutmut itself, and that function's mutants run again.
    """
    if not path.exists():
        return 0
    restored = 0
    for name, data in json.loads(path.read_text(encoding="utf-8")).items():
        meta = folder / "mutants" / name
        if meta.exists():
            continue
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({**data, **UNTIMED}), encoding="utf-8")
        restored += 1
    return restored


def mutmut(folder: Path, *arguments: str, capture: bool = True) -> str:
    """Run mutmut of this Python's environment in ``folder``; stop on any failure of its own."""
    command = [str(Path(sys.executable).with_name("mutmut")), *arguments]
    # One migrated metadata DB per Airflow version, copied by each mutant's test session.
    template = folder / "airflow-metadata" / f"airflow-{version('apache-airflow')}.db"
    template.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "TERM": "dumb", "CAPILLARY_TEST_DB_TEMPLATE": str(template)}
    done = subprocess.run(
        command, cwd=folder, check=False, capture_output=capture, text=True, env=environment
    )
    if done.returncode != 0:
        if capture:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"mutmut {' '.join(arguments)} failed with exit status {done.returncode}")
    return done.stdout if capture else ""


@dataclass
class Mutant:
    """One mutant's name, status and, for a survivor, the lines it changed."""

    name: str
    status: str
    module: str = ""
    function: str = ""
    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    reason: str | None = None


def split_name(name: str) -> tuple[str, str]:
    """
    Return ``(module file, function)`` of a mutant name, e.g.
    ``("hooks/capillary.py", "hooks.capillary.CapillaryHook.stop")``.
    """
    dotted, _, function = name.rpartition(".x")
    module = dotted.removeprefix(PACKAGE + ".")
    function = re.sub(r"__mutmut_\d+$", "", function)
    if function.startswith("ǁ"):
        cls, _, method = function[1:].partition("ǁ")
        function = f"{cls}.{method}"
    else:
        function = function.removeprefix("_")
    return module.replace(".", "/") + ".py", f"{module}.{function}"


def diff_lines(diff: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the removed and added lines of a mutant's diff, stripped of indentation."""
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return tuple(removed), tuple(added)


@dataclass
class Equivalent:
    """One recorded equivalent mutant: where, what changed, and why nothing observable changes."""

    function: str
    removed: tuple[str, ...]
    added: tuple[str, ...]
    reason: str
    line: int
    used: bool = field(default=False)

    @property
    def key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """What the entry matches: the function and its mutated lines."""
        return self.function, self.removed, self.added


def read_equivalents(path: Path) -> list[Equivalent]:  # noqa: PLR0912 - one branch per kind of line
    """
    Read the equivalents file: blocks of ``## <module>.<function>``, ``-``/``+`` lines, ``why:``.

    Lines are compared without indentation, so an entry survives code moving but not code changing.
    An entry that repeats another (same function, same lines) is refused: only one of them could match.
    A block whose only line is ``* no test runs this function`` explains that function's "no tests"
    mutants. Lines starting with ``#`` are comments.
    """
    entries: list[Equivalent] = []
    if not path.exists():
        return entries
    function: str | None = None
    removed: list[str] = []
    added: list[str] = []
    untested = False
    start = 0
    # Where each entry starts, by what it matches: a second entry for the same mutant is refused.
    starts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], int] = {}

    def fail(number: int, problem: str) -> SystemExit:
        return SystemExit(f"{path}:{number}: {problem}")

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):
            if removed or added or untested:
                raise fail(number, f"the entry for {function} that starts on line {start} has no 'why:'")
            function, removed, added, untested, start = line[3:].strip(), [], [], False, number
        elif not line.strip() or line.startswith("#"):
            continue
        elif function is None:
            raise fail(number, "expected '## <module>.<function>' first")
        elif line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
        elif line.strip() == "* no test runs this function":
            untested = True
        elif line.startswith("why:"):
            if untested == bool(removed or added):
                raise fail(number, "give either the mutated lines or '* no test runs this function'")
            entry = Equivalent(function, tuple(removed), tuple(added), line[4:].strip(), start)
            if entry.key in starts:
                raise fail(start, f"the entry for {function} repeats the one on line {starts[entry.key]}")
            starts[entry.key] = start
            entries.append(entry)
            removed, added, untested = [], [], False
        else:
            expected = "'## function', '-', '+', '* no test runs this function' or 'why:'"
            raise fail(number, f"expected {expected}, got {line!r}")
    if removed or added or untested:
        raise fail(start, f"the entry for {function} has no 'why:'")
    return entries


def collect(folder: Path, *, diffs: bool = True) -> list[Mutant]:
    """Read every mutant's status from mutmut, and the diff of each survivor."""
    mutants = []
    for line in mutmut(folder, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or not name.startswith(PACKAGE):
            continue
        module, function = split_name(name)
        mutants.append(Mutant(name=name, status=status, module=module, function=function))
    for mutant in mutants:
        if diffs and mutant.status == "survived":
            mutant.removed, mutant.added = diff_lines(mutmut(folder, "show", mutant.name))
    return mutants


def explain(mutants: list[Mutant], equivalents: list[Equivalent]) -> None:
    """
    Attach the recorded reason to every survivor that has one.

    An entry with mutated lines explains that one survivor. An entry with none explains the
    mutants of a function that no test of the profile runs (mutmut's "no tests"), and only those.
    """
    by_key: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Equivalent] = {}
    for entry in equivalents:
        by_key[entry.key] = entry
    for mutant in mutants:
        if mutant.status == "survived":
            entry = by_key.get((mutant.function, mutant.removed, mutant.added))
        elif mutant.status == "no tests":
            entry = by_key.get((mutant.function, (), ()))
        else:
            continue
        if entry is not None:
            entry.used = True
            mutant.reason = entry.reason


def report(mutants: list[Mutant], equivalents: list[Equivalent], profile_name: str) -> tuple[str, int]:
    """Return the report as Markdown and the number of unexplained survivors."""
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for mutant in mutants:
        counts = by_module[mutant.module]
        counts["mutants"] += 1
        if mutant.status in KILLED:
            counts["killed"] += 1
        elif mutant.status in UNKILLED:
            counts["survived"] += 1
            counts["equivalent" if mutant.reason else "unexplained"] += 1
        else:
            counts[mutant.status] += 1
    lines = [
        f"# Mutation testing: profile `{profile_name}`",
        "",
        "| module | mutants | killed | not killed | equivalent | unexplained | other | killed % "
        "| killed or equivalent % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        total.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("**all**", total))
    unexplained = [m for m in mutants if m.status in UNKILLED and not m.reason]
    odd = [m for m in mutants if m.status not in KILLED | UNKILLED]
    lines += ["", f"## Unexplained survivors ({len(unexplained)})", ""]
    lines += _listing(unexplained)
    lines += ["", f"## Equivalent survivors ({total['equivalent']})", ""]
    lines += _listing([m for m in mutants if m.reason], with_reason=True)
    if odd:
        lines += ["", f"## Not run or not decided ({len(odd)})", ""]
        lines += [f"- `{m.name}`: {m.status}" for m in odd]
    stale = [e for e in equivalents if not e.used]
    if stale and any(m.status in UNKILLED for m in mutants):
        lines += ["", f"## Entries of {EQUIVALENTS.name} that matched no survivor ({len(stale)})", ""]
        lines += [f"- line {e.line}: `{e.function}`" for e in stale]
    return "\n".join(lines) + "\n", len(unexplained)


def _row(module: str, counts: Counter[str]) -> str:
    mutants = counts["mutants"] or 1
    other = counts["mutants"] - counts["killed"] - counts["survived"]
    return (
        f"| {module} | {counts['mutants']} | {counts['killed']} | {counts['survived']} | "
        f"{counts['equivalent']} | {counts['unexplained']} | {other} | "
        f"{100 * counts['killed'] / mutants:.1f} | "
        f"{100 * (counts['killed'] + counts['equivalent']) / mutants:.1f} |"
    )


def _listing(mutants: list[Mutant], *, with_reason: bool = False) -> list[str]:
    lines = []
    for mutant in mutants:
        reason = f": {mutant.reason}" if with_reason else ""
        status = " (no tests)" if mutant.status == "no tests" else ""
        lines.append(f"- `{mutant.name}` in `{mutant.function}`{status}{reason}")
        lines += [f"  - `- {text}`" for text in mutant.removed]
        lines += [f"  - `+ {text}`" for text in mutant.added]
    return lines or ["none"]


def to_rerun(mutants: list[Mutant], *, survivors: bool) -> list[str]:
    """Name the mutants a rerun takes: those without a result, and with ``survivors`` the survivors.

    Mutants of functions changed since the last run have no result (mutmut resets them to "not
    checked"), so either choice also takes them.
    """
    done = KILLED if survivors else KILLED | UNKILLED
    return [m.name for m in mutants if m.status not in done]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="package")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--fresh", action="store_true", help="forget earlier results and mutate anew")
    parser.add_argument("--report-only", action="store_true", help="report the last run without running")
    parser.add_argument(
        "--survivors", action="store_true", help="rerun only the mutants the last run did not kill"
    )
    parser.add_argument(
        "--unfinished",
        action="store_true",
        help="run only the mutants the last run did not reach (a stopped run carries on)",
    )
    parser.add_argument(
        "--keep-stats",
        action="store_true",
        help="keep the last run's map of which tests reach each function (only tests were added since)",
    )
    parser.add_argument("mutants", nargs="*", help="rerun only these mutants (mutmut names or globs)")
    options = parser.parse_args()

    profile = PROFILES[options.profile]
    folder = ROOT / ".mutation" / options.profile
    names = list(options.mutants)
    kept = RESULTS / f"{options.profile}.json"
    if not options.report_only:
        folder = stage(options.profile, profile, options.fresh)
        if not options.fresh and (restored := restore_results(folder, kept)):
            print(f"Carrying on from {kept.relative_to(ROOT)}: the results of {restored} file(s)")
    if options.survivors or options.unfinished:
        names += to_rerun(collect(folder, diffs=False), survivors=options.survivors)
        if not names:
            raise SystemExit("no survivors to rerun" if options.survivors else "every mutant has a result")
    if not options.report_only:
        # mutmut keeps which tests call each function from its first run; after the code changed, a
        # function may be called by tests it was not before, and a stale map runs too few of them.
        # (mutmut maps tests added since by itself, so a run that follows new tests may keep it.)
        if not options.keep_stats:
            (folder / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        started = time.monotonic()
        mutmut(folder, "run", "--max-children", str(options.max_children), *names, capture=False)
        print(f"\nmutmut ran for {time.monotonic() - started:.0f} s")
    if not (folder / "mutants").exists():
        raise SystemExit(f"no results in {folder}; run without --report-only first")
    # Kept after a stopped run too: `--report-only` then saves what it reached.
    save_results(folder, kept)
    mutants = collect(folder)
    equivalents = read_equivalents(EQUIVALENTS)
    explain(mutants, equivalents)
    text, unexplained = report(mutants, equivalents, options.profile)
    out = ROOT / "artifacts" / "mutation" / f"{options.profile}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"Report written to {out.relative_to(ROOT)}")
    unfinished = [m for m in mutants if m.status not in KILLED | UNKILLED]
    if unfinished:
        print(f"{len(unfinished)} mutant(s) were not run to a result; the run is incomplete", file=sys.stderr)
    return 1 if unexplained or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
