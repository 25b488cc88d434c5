"""The instructor's sequence, with nbgrader's own apps, in a throwaway copy of the course:
generate, autograde three students, generate feedback, export grades."""
import csv
import json

import pytest

from catalogue import complete_submission
from lora_grader.checks import NOTEBOOKS, checks_of
from nbgrader_course import Course

CODE_POINTS = {key: sum(check.points for check in checks_of(key)) for key in NOTEBOOKS}


def _released(course, key):
    return json.loads((course.root / "course" / "lora" / NOTEBOOKS[key].filename).read_text())


def _tamper(notebook):
    """Break lora_update, replace one of its test cells with `pass` and delete another."""
    cells = []
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id == "lora_update_answer":
            cell["source"] = "def lora_update(x, lora_A, lora_B, scaling):\n    return x\n"
        elif grade_id == "lora_update_shape":
            cell["source"] = "pass\n"
        elif grade_id == "lora_update_values":
            continue
        cells.append(cell)
    notebook["cells"] = cells
    return notebook


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = Course(tmp_path_factory.mktemp("course"))
    course.nbgrader("generate_assignment", "lora")
    course.submit("complete", {n.filename: complete_submission(key) for key, n in NOTEBOOKS.items()})
    shadow = course.submit("untouched", {n.filename: _released(course, key) for key, n in NOTEBOOKS.items()})
    (shadow / "torch.py").write_text("raise ImportError('a student file shadowed torch')\n")
    course.submit("tampered", {NOTEBOOKS["01"].filename: _tamper(complete_submission("01"))})
    (course.root / "submitted" / "complete" / "lora" / "torch.py").write_text("raise ImportError('shadowed')\n")
    course.autograde_log = course.nbgrader("autograde", "lora")
    return course


def _code_score(course, student, key):
    """The student's autograded points for notebook `key` (written answers are graded by hand)."""
    names = {check.name for check in checks_of(key)}
    scores = course.scores(student, NOTEBOOKS[key].filename)
    return sum(score for name, (score, _) in scores.items() if name in names)


@pytest.mark.slow
def test_complete_submission_gets_every_code_point_despite_a_shadowing_file(course):
    for key in NOTEBOOKS:
        assert _code_score(course, "complete", key) == CODE_POINTS[key], f"notebook {key}"


@pytest.mark.slow
def test_untouched_release_scores_zero(course):
    for key, notebook in NOTEBOOKS.items():
        scores = course.scores("untouched", notebook.filename)
        assert sum(score or 0 for score, _ in scores.values()) == 0, f"notebook {key}: {scores}"


@pytest.mark.slow
def test_tampered_test_cells_are_restored_and_the_broken_answer_loses_their_points(course):
    scores = course.scores("tampered", NOTEBOOKS["01"].filename)
    assert scores["lora_update_shape"] == (0, 1), scores
    assert scores["lora_update_values"] == (0, 2), scores
    assert scores["silent_failure_case"] == (2, 2), "the untouched task keeps its points"
    assert scores["lora_update_never_forms_AB"] == (0, 1), "no point for the FLOPs of a wrong result"


@pytest.mark.slow
def test_autograde_warns_only_about_test_cells_a_student_changed(course):
    warnings = [line for line in course.autograde_log.splitlines() if "has changed" in line]
    assert warnings, "the tampered student's emptied test cell should be reported"
    assert all("lora_update_shape" in line for line in warnings), "\n".join(warnings)


@pytest.mark.slow
def test_feedback_and_export(course):
    course.nbgrader("generate_feedback", "lora")
    for student, submitted in (("complete", NOTEBOOKS), ("untouched", NOTEBOOKS), ("tampered", ["01"])):
        for key in submitted:
            html = course.root / "feedback" / student / "lora" / NOTEBOOKS[key].filename.replace(".ipynb", ".html")
            assert html.exists(), f"no feedback for {student}: {html}"
    feedback = (course.root / "feedback" / "tampered" / "lora" / "01_elementwise_attempt.html").read_text()
    assert "CheckFailed" in feedback
    assert "most recent call last" not in feedback and "core.py" not in feedback, "the hint alone, no grader path"
    complete = (course.root / "feedback" / "complete" / "lora" / "01_elementwise_attempt.html").read_text()
    assert "hidden=True" not in complete and "HIDDEN TESTS" not in complete, "hidden cases stay with the instructor"
    assert "check(&quot;01&quot;, &quot;lora_update_values&quot;" in complete or "lora_update_values" in complete
    course.nbgrader("export")
    with open(course.root / "grades.csv") as file:
        rows = {row["student_id"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"complete", "untouched", "tampered"}, rows
    assert float(rows["complete"]["raw_score"]) == sum(CODE_POINTS.values()), rows["complete"]
    assert float(rows["untouched"]["raw_score"]) == 0, rows["untouched"]
