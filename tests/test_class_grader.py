"""`lora-grade`: a class graded with the isolated grader, its outputs, re-runs, shards, and the
audit of nbgrader's scores (the audit with nbgrader's real apps, in the slow tests)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from catalogue import ENTRIES, code_cell, complete_submission, write_submission
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.classgrade.outputs import check_results, feedback_path
from lora_grader.grading import grade
from lora_grader.report import points_table
from nbgrader_course import Course

pytestmark = pytest.mark.slow  # each test runs lora-grade on a class, in sandboxes

FULL = sum(check.points for key in NOTEBOOKS for check in checks_of(key))
BUG = next(entry for entry in ENTRIES if entry.name == "02-alpha-not-divided-by-rank")
UNICODE, DOTTED = "Zoë O'Brien", "j.doe 2"  # nbgrader's layout, and a plain folder of notebooks
HANDED_IN = len(NOTEBOOKS) + 6  # the notebooks make_class writes


def lora_grade(*args: str, cwd: Path) -> str:
    """Run the command as an instructor would; its summary."""
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", *args], cwd=cwd, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"lora-grade {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _write(folder: Path, key: str, notebook) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = notebook if isinstance(notebook, str) else json.dumps(notebook)
    (folder / NOTEBOOKS[key].filename).write_text(text, encoding="utf-8")


def _with_cell(key: str, source: str, output_bytes: int = 0) -> dict:
    """A complete notebook with one more code cell after the first (and its output, if any)."""
    notebook = complete_submission(key)
    outputs = [{"output_type": "stream", "name": "stdout", "text": "x" * output_bytes}] if output_bytes else []
    notebook["cells"].insert(1, code_cell(source, "extra", outputs))
    return notebook


def make_class(root: Path) -> Path:
    """Five students: complete, buggy with two notebooks missing, hostile, enormous, broken."""
    submitted = root / "submitted"
    for key in NOTEBOOKS:
        _write(submitted / UNICODE / "lora", key, complete_submission(key))
    _write(submitted / DOTTED, "01", complete_submission("01"))
    write_submission(BUG, submitted / DOTTED)
    _write(submitted / "exits" / "lora", "01", _with_cell("01", "import os\nos._exit(3)\n"))
    _write(submitted / "exits" / "lora", "02", complete_submission("02"))
    _write(submitted / "enormous" / "lora", "03", _with_cell("03", "pass\n", output_bytes=20 * 2**20))
    _write(submitted / "broken" / "lora", "04", '{"cells": [')
    return submitted


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("class")
    make_class(root)
    lora_grade("autograde", cwd=root)
    return root


def _rows(root: Path, out: str = "lora_grading") -> dict[str, dict]:
    with open(root / out / "grades.csv", encoding="utf-8", newline="") as file:
        return {row["student"]: row for row in csv.DictReader(file)}


def _results(root: Path, out: str = "lora_grading") -> dict:
    return json.loads((root / out / "results.json").read_text(encoding="utf-8"))["students"]


def test_csv_has_a_row_per_student_with_each_tasks_points_the_total_and_the_maximum(course):
    rows = _rows(course)
    assert set(rows) == {UNICODE, DOTTED, "exits", "enormous", "broken"}
    assert rows[UNICODE]["total"] == rows[UNICODE]["max"] == str(FULL)
    dotted = rows[DOTTED]
    assert dotted["01 lora_update"] == "4" and dotted["01 silent_failure_case"] == "2"
    assert dotted["02 lora_flops"] == "3" and int(dotted["02 LoRALinear"]) < 10, dotted
    assert dotted["03 LoRALinear"] == dotted["04 export_merged"] == "0"
    tasks = [column for column in dotted if column not in ("student", "total", "max")]
    assert int(dotted["total"]) == sum(int(dotted[column]) for column in tasks)


def test_missing_notebooks_score_zero_and_are_said_so(course):
    missing = _results(course)[DOTTED]["notebooks"]["03"]
    assert missing["sha256"] is None and all(not c["passed"] and c["points"] == 0 for c in missing["checks"])
    assert "not handed in" in missing["checks"][0]["message"]
    assert "Not handed in: notebook 03 scores 0." in feedback_path(course / "lora_grading", DOTTED).read_text()


def test_a_broken_or_hostile_notebook_costs_only_its_own_points_and_its_student_needs_a_look(course):
    students = _results(course)
    exits = students["exits"]["notebooks"]
    assert all(c["points"] == 0 for c in exits["01"]["checks"]), "os._exit in a cell ends the notebook"
    assert all(c["passed"] for c in exits["02"]["checks"]), "the next notebook keeps its points"
    assert all(c["passed"] for c in students["enormous"]["notebooks"]["03"]["checks"]), "20 MB of output cost nothing"
    assert any(r.startswith("01 earned nothing") for r in students["exits"]["needs_a_look"])
    assert any("04 earned nothing" in r and "not valid JSON" in r for r in students["broken"]["needs_a_look"])
    assert students[UNICODE]["needs_a_look"] == []


def test_feedback_has_the_messages_and_the_points_table_of_pytest_autograder(course):
    ours = grade(course / "submitted" / DOTTED, ["01", "02"])  # what `pytest autograder` sees for these two
    text = feedback_path(course / "lora_grading", DOTTED).read_text(encoding="utf-8")
    failed = [r for results in ours.values() for r in results if not r.passed]
    assert failed and all(r.message in text for r in failed)
    stored = _results(course)[DOTTED]
    assert [(r.check.name, r.message) for rs in ours.values() for r in rs] == [
        (r.check.name, r.message) for r in check_results(stored) if r.notebook in ("01", "02")]
    assert points_table(check_results(stored)) in text


def test_a_second_run_grades_only_the_notebooks_whose_content_changed(course, tmp_path):
    shutil.copytree(course, tmp_path, dirs_exist_ok=True)
    assert f"0 notebooks graded, {HANDED_IN} unchanged" in lora_grade("autograde", cwd=tmp_path)
    _write(tmp_path / "submitted" / DOTTED, "02", complete_submission("02"))  # the bug fixed
    assert f"1 notebooks graded, {HANDED_IN - 1} unchanged" in lora_grade("autograde", cwd=tmp_path)
    assert _rows(tmp_path)[DOTTED]["02 LoRALinear"] == "10"
    others = {name: row for name, row in _rows(tmp_path).items() if name != DOTTED}
    assert others == {name: row for name, row in _rows(course).items() if name != DOTTED}
    assert f"{HANDED_IN} notebooks graded, 0 unchanged" in lora_grade("autograde", "--force", cwd=tmp_path)


def test_merging_the_shards_gives_exactly_the_output_of_a_single_run(course, tmp_path):
    shutil.copytree(course / "submitted", tmp_path / "submitted")
    shards = [lora_grade("autograde", "--shard", f"{k}/2", cwd=tmp_path) for k in (1, 2)]
    assert all(" 0 notebooks graded" not in summary for summary in shards), "both shards have work"
    lora_grade("merge", "lora_grading/shard-1-of-2", "lora_grading/shard-2-of-2", cwd=tmp_path)
    single, merged = course / "lora_grading", tmp_path / "lora_grading"
    for name in ("results.json", "grades.csv"):
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
    feedback = sorted(path.relative_to(single) for path in (single / "feedback").rglob("*.md"))
    assert feedback == sorted(path.relative_to(merged) for path in (merged / "feedback").rglob("*.md"))
    assert all((merged / path).read_bytes() == (single / path).read_bytes() for path in feedback)


def test_merge_refuses_an_incomplete_set_of_shards(course, tmp_path):
    shutil.copytree(course / "lora_grading", tmp_path / "whole")
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "merge", "whole"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a shard's" in done.stderr, done.stderr


# --- the audit, with nbgrader's own apps --------------------------------------------------------

HONEST = ["01-einsum-update", "01-no-scaling", "02-alpha-not-divided-by-rank", "02-flops-as-float"]  # variants, bugs


def _patching_the_grader() -> dict:
    """The untouched release, with a cell that replaces the grader before the test cells run."""
    notebook = json.loads((Path(__file__).resolve().parents[1] / "course" / "lora" / NOTEBOOKS["01"].filename).read_text())
    notebook["cells"].insert(1, code_cell("import lora_grader\nlora_grader.check = lambda *a, **k: None\n", "patch"))
    return notebook


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    course = Course(tmp_path_factory.mktemp("audited"))
    course.nbgrader("generate_assignment", "lora")
    entries = {entry.name: entry for entry in ENTRIES}
    for name in HONEST:
        write_submission(entries[name], course.root / "submitted" / name / "lora", keep_demos=False)
    course.submit("patches the grader", {NOTEBOOKS["01"].filename: _patching_the_grader()})
    course.nbgrader("autograde", "lora")
    summary = lora_grade("audit", cwd=course.root)
    with open(course.root / "lora_grading" / "audit.csv", encoding="utf-8", newline="") as file:
        return summary, list(csv.DictReader(file)), course


@pytest.mark.slow
def test_audit_lists_the_points_nbgrader_gave_to_a_student_who_patched_the_grader(audited):
    summary, rows, _ = audited
    cheat = {row["task"]: row for row in rows if row["student"] == "patches the grader"}
    assert set(cheat) == {"silent_failure_case", "lora_update"}, rows
    assert cheat["lora_update"]["nbgrader"] == "4" and cheat["lora_update"]["lora-grade"] == "0"
    assert "not implemented" in cheat["lora_update"]["lora-grade's message"]
    assert "patches the grader  01 lora_update: nbgrader 4/4, lora-grade 0/4" in summary
    assert "patches the grader  01: flag: code cell 1, line 1: imports the grader's own package" in summary


@pytest.mark.slow
def test_audit_finds_no_disagreement_for_honest_students(audited):
    _, rows, _ = audited
    assert [row for row in rows if row["student"] != "patches the grader"] == []


@pytest.mark.slow
def test_status_says_what_waits_for_a_person_until_every_written_answer_is_graded(audited, tmp_path):
    from nbgrader.api import Gradebook

    _, _, course = audited
    shutil.copytree(course.root, tmp_path / "course")
    root = tmp_path / "course"
    waiting = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "status", "--no-progress"], cwd=root,
                             capture_output=True, text=True)
    assert waiting.returncode == 1, waiting.stdout + waiting.stderr
    assert "written answers to grade in the Formgrader" in waiting.stdout
    assert "why_zero_init_hides_the_bug" in waiting.stdout and "yes: lora-grade audit" in waiting.stdout
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        for submission in gradebook.assignment_submissions("lora"):
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    if grade.needs_manual_grade:
                        grade.manual_score = grade.max_score
        gradebook.db.commit()
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "status", "--no-progress"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing waits for a person" in done.stdout


@pytest.mark.slow
def test_report_lists_the_cheat_nbgrader_scored_and_the_written_answers_waiting(audited, tmp_path):
    _, _, course = audited
    shutil.copytree(course.root, tmp_path / "course")
    lora_grade("report", cwd=tmp_path / "course")
    page = (tmp_path / "course" / "lora_grading" / "report.html").read_text(encoding="utf-8")
    looks = page[page.index('id=looks'):page.index('id=causes')]
    assert "patches the grader" in looks and "nbgrader differs" in looks and "01 lora_update: nbgrader 4/4, lora-grade 0/4" in looks
    assert "as of the last `lora-grade audit` (2 tasks differ)." in looks
    written = page[page.index('id=written'):]
    assert "2 answers of 2 students wait in nbgrader's formgrader" in written, written
    assert "<code>why_zero_init_hides_the_bug</code></td><td class=n>2</td>" in written
    assert "01-einsum-update, 01-no-scaling" in written
