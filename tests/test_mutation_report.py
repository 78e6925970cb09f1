"""The mutation report's reading of mutmut's names: each survivor meets its recorded equivalent."""

from __future__ import annotations

import pytest

from scripts.mutation import EQUIVALENTS, Mutant, read_equivalents, split_name, to_rerun


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("airflow_capillary_audit.records.x_iter_rows__mutmut_3", ("records.py", "records.iter_rows")),
        (
            "airflow_capillary_audit.hooks.capillary.xǁCapillaryHookǁstop__mutmut_1",
            ("hooks/capillary.py", "hooks.capillary.CapillaryHook.stop"),
        ),
        (
            "airflow_capillary_audit.operators.audit_logs.x__destination_asset__mutmut_12",
            ("operators/audit_logs.py", "operators.audit_logs._destination_asset"),
        ),
    ],
)
def test_a_mutant_is_named_by_its_module_path_and_function(name, expected):
    # The equivalents file names functions by their module's dotted path below the package.
    assert split_name(name) == expected


STATUSES = {
    "a": "killed",
    "b": "timeout",
    "c": "survived",
    "d": "no tests",
    "e": "not checked",
    "f": "suspicious",
}


@pytest.mark.parametrize(
    ("survivors", "expected"),
    [
        # Carrying on a stopped run: only the mutants that have no result yet.
        (False, ["e", "f"]),
        # After a new test: the survivors too, and those that have no result.
        (True, ["c", "d", "e", "f"]),
    ],
)
def test_a_rerun_takes_what_has_no_result_and_with_survivors_the_survivors(survivors, expected):
    mutants = [Mutant(name=name, status=status) for name, status in STATUSES.items()]
    assert to_rerun(mutants, survivors=survivors) == expected


ENTRY = """
## records.iter_rows
- return rows
+ return None
why: {why}
"""


def test_an_entry_that_repeats_another_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "equivalents.txt"
    path.write_text("# comment\n" + ENTRY.format(why="first") + ENTRY.format(why="again"), encoding="utf-8")
    with pytest.raises(
        SystemExit,
        match=r"^\S*equivalents\.txt:8: the entry for records\.iter_rows repeats the one on line 3$",
    ):
        read_equivalents(path)


def test_entries_for_other_lines_of_one_function_are_each_kept(tmp_path):
    path = tmp_path / "equivalents.txt"
    other = ENTRY.replace("return None", "return []").format(why="empty")
    path.write_text(ENTRY.format(why="none") + other, encoding="utf-8")
    entries = read_equivalents(path)
    assert [(e.function, e.removed, e.added, e.reason, e.line) for e in entries] == [
        ("records.iter_rows", ("return rows",), ("return None",), "none", 2),
        ("records.iter_rows", ("return rows",), ("return []",), "empty", 7),
    ]


def test_the_project_equivalents_file_reads_without_a_repeat():
    assert read_equivalents(EQUIVALENTS)
