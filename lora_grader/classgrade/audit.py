"""nbgrader's automatic scores against the isolated grader's, per student and per task.

nbgrader runs the test cells inside the student's own kernel, where the student's code can
patch them; the isolated grader runs none of the student's code in its own process. Points
nbgrader gave that the isolated grader did not point at a cheat (or at a defect of ours, which
the reverse direction would show too).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.grade import ASSIGNMENT
from lora_grader.classgrade.outputs import task_points, tasks


@dataclasses.dataclass(frozen=True)
class Disagreement:
    student: str
    notebook: str
    task: str
    nbgrader: float
    ours: int
    max: int
    message: str  # the isolated grader's, for the task's first failed check ("" if all passed)


def audit(students: dict, gradebook: Path) -> tuple[list[Disagreement], list[str]]:
    """Every task on which the two disagree, and the students nbgrader has not graded."""
    from nbgrader.api import Gradebook, MissingEntry

    if not Path(gradebook).is_file():  # Gradebook() would create an empty one
        raise FileNotFoundError(f"no gradebook at {gradebook}: run `nbgrader autograde {ASSIGNMENT}` first")
    disagreements, absent = [], []
    with Gradebook(f"sqlite:///{Path(gradebook).resolve()}") as book:
        for name, student in students.items():
            try:
                book.find_submission(ASSIGNMENT, name)
            except MissingEntry:
                absent.append(name)
                continue
            for key, task in tasks():
                notebook = student["notebooks"][key]
                ours, out_of = task_points(notebook, task)
                scores = _auto_scores(book, name, key, MissingEntry)
                theirs = sum(scores.get(check["name"]) or 0 for check in notebook["checks"] if check["task"] == task)
                if theirs != ours:
                    failed = [c["message"] for c in notebook["checks"] if c["task"] == task and not c["passed"]]
                    disagreements.append(Disagreement(name, key, task, theirs, ours, out_of, (failed or [""])[0]))
    return disagreements, absent


def _auto_scores(book, student: str, key: str, missing) -> dict[str, float | None]:
    """{grade id: nbgrader's automatic score}; empty when nbgrader has no such notebook (0 points)."""
    try:
        submitted = book.find_submission_notebook(Path(NOTEBOOKS[key].filename).stem, ASSIGNMENT, student)
    except missing:
        return {}
    return {grade.name: grade.auto_score for grade in submitted.grades}
