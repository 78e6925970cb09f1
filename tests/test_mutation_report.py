"""The mutation report's reading of mutmut's names: each survivor meets its recorded equivalent."""

from __future__ import annotations

import json

import pytest

from scripts.mutation import (
    EQUIVALENTS,
    Mutant,
    read_equivalents,
    restore_results,
    save_results,
    split_name,
    to_rerun,
)


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


def write_meta(folder, name, exit_codes):
    meta = folder / "mutants" / name
    meta.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "exit_code_by_key": exit_codes,
        "hash_by_function_name": {"f": "h1"},
        "type_check_error_by_key": {},
        "durations_by_key": {"k": 1.5},
        "estimated_durations_by_key": {"k": 2.0},
    }
    meta.write_text(json.dumps(data), encoding="utf-8")


def test_kept_results_carry_a_run_on_to_a_folder_that_has_none(tmp_path):
    # A run's results kept in the repository, then a fresh clone's empty folder given them.
    ran, fresh, kept = tmp_path / "ran", tmp_path / "fresh", tmp_path / "kept.json"
    write_meta(
        ran, "pkg/a.py.meta", {"pkg.x_f__mutmut_1": 1, "pkg.x_f__mutmut_2": 0, "pkg.x_f__mutmut_3": None}
    )
    write_meta(ran, "pkg/sub/b.py.meta", {"pkg.sub.x_f__mutmut_1": 1})
    save_results(ran, kept)

    assert restore_results(fresh, kept) == 2
    restored = json.loads((fresh / "mutants" / "pkg" / "a.py.meta").read_text(encoding="utf-8"))
    # Exit codes and hashes as they were (mutmut keeps a result only while its function's hash holds);
    # the timings, which belong to the machine that ran, start empty; every key mutmut's reader expects.
    assert restored == {
        "exit_code_by_key": {"pkg.x_f__mutmut_1": 1, "pkg.x_f__mutmut_2": 0, "pkg.x_f__mutmut_3": None},
        "hash_by_function_name": {"f": "h1"},
        "type_check_error_by_key": {},
        "durations_by_key": {},
        "estimated_durations_by_key": {},
    }
    assert json.loads((fresh / "mutants" / "pkg" / "sub" / "b.py.meta").read_text(encoding="utf-8"))[
        "exit_code_by_key"
    ] == {"pkg.sub.x_f__mutmut_1": 1}


def test_kept_results_never_overwrite_the_folders_own(tmp_path):
    ran, kept = tmp_path / "ran", tmp_path / "kept.json"
    write_meta(ran, "pkg/a.py.meta", {"pkg.x_f__mutmut_1": 0})
    save_results(ran, kept)
    write_meta(ran, "pkg/a.py.meta", {"pkg.x_f__mutmut_1": 1})

    assert restore_results(ran, kept) == 0
    own = json.loads((ran / "mutants" / "pkg" / "a.py.meta").read_text(encoding="utf-8"))
    assert own["exit_code_by_key"] == {"pkg.x_f__mutmut_1": 1}
    assert restore_results(ran, tmp_path / "none.json") == 0
