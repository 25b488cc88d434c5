"""course/ is exactly what nbgrader makes from solutions/, and the two agree with the checks."""
import json
from pathlib import Path

import pytest

from lora_grader.checks import NOTEBOOKS, checks_of
from nbgrader_course import Course

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions" / "lora").glob("*.ipynb"))
RELEASED = sorted((ROOT / "course" / "lora").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _nbgrader(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def _source(cell):
    return "".join(cell["source"])


def test_every_registered_notebook_has_a_solution_and_a_release():
    names = {notebook.filename for notebook in NOTEBOOKS.values()}
    assert {path.name for path in SOLUTIONS} == names, "solutions/lora and the NOTEBOOKS registry differ"
    assert {path.name for path in RELEASED} == names, "course/lora and the NOTEBOOKS registry differ"


@pytest.mark.slow
def test_release_is_what_nbgrader_generates_from_the_solutions(tmp_path):
    course = Course(tmp_path)
    course.nbgrader("generate_assignment", "lora")
    for path in RELEASED:
        regenerated = json.loads((tmp_path / "course" / "lora" / path.name).read_text())
        assert json.loads(path.read_text()) == regenerated, (
            f"course/lora/{path.name} is out of date: run `nbgrader generate_assignment lora --force`"
        )


@pytest.mark.parametrize("path", RELEASED + SOLUTIONS, ids=lambda path: f"{path.parent.parent.name}/{path.name}")
def test_notebook_is_committed_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, (
                f"{path.name}: a code cell has outputs or an execution count; clear them before committing"
            )


@pytest.mark.parametrize("path", RELEASED, ids=lambda path: path.name)
def test_release_holds_no_solutions_and_no_hidden_tests(path):
    for cell in _cells(path):
        text = _source(cell)
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            assert marker not in text, f"{path.name} still holds {marker!r}"


@pytest.mark.parametrize("key", sorted(NOTEBOOKS))
def test_test_cells_are_the_checks_with_the_same_points(key):
    """One source of truth: each nbgrader test cell runs exactly one check, worth the same points."""
    path = ROOT / "solutions" / "lora" / NOTEBOOKS[key].filename
    test_cells = {
        _nbgrader(cell)["grade_id"]: cell for cell in _cells(path)
        if _nbgrader(cell).get("grade") and not _nbgrader(cell).get("solution")
    }
    checks = {check.name: check for check in checks_of(key)}
    assert set(test_cells) == set(checks), f"{path.name}: test cells {sorted(test_cells)} vs checks {sorted(checks)}"
    for name, cell in test_cells.items():
        assert _nbgrader(cell)["points"] == checks[name].points, f"{name}: cell and check disagree on points"
        assert f'check("{key}", "{name}", globals())' in _source(cell), f"{name}: the cell does not run its check"
        assert f'check("{key}", "{name}", globals(), hidden=True)' in _source(cell), f"{name}: no hidden cases"


@pytest.mark.parametrize("key", sorted(NOTEBOOKS))
def test_written_answers_match_the_reported_points(key):
    path = ROOT / "solutions" / "lora" / NOTEBOOKS[key].filename
    written = {
        _nbgrader(cell)["grade_id"]: _nbgrader(cell)["points"] for cell in _cells(path)
        if _nbgrader(cell).get("grade") and _nbgrader(cell).get("solution")
    }
    assert written == NOTEBOOKS[key].module.MANUAL_POINTS


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda path: path.name)
def test_every_test_cell_can_be_put_back_by_nbgrader(path):
    """nbgrader re-inserts a deleted test cell after the previous graded or solution cell, so
    that cell must not be a locked cell (nbgrader would fail to autograde the notebook)."""
    previous = None
    for cell in _cells(path):
        meta = _nbgrader(cell)
        if not meta:
            continue
        if meta.get("grade") and not meta.get("solution"):
            assert previous is not None and (previous.get("grade") or previous.get("solution")), (
                f"{path.name}: test cell {meta['grade_id']} follows a locked cell"
            )
        previous = meta
