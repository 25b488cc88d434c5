"""nbgrader and `pytest autograder` give every catalogue entry the same verdict on every check.

The submissions leave out the demo cells (plots, timings, the fit in 03): they define nothing
graded, and nbgrader, which runs every cell, would take several times longer with them.
tests/test_nbgrader_end_to_end.py runs complete notebooks, demos included."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from catalogue import ENTRIES, selected, write_submission
from lora_grader.checks import NOTEBOOKS
from lora_grader.grading import MODES
from nbgrader_course import Course

SHARDS = 2  # nbgrader grades one notebook at a time: two courses side by side use both cores


def _autograde_shard(course: Course) -> Course:
    course.nbgrader("autograde", "lora")
    return course


@pytest.fixture(scope="module")
def verdicts(request, tmp_path_factory, catalogue_grades):
    """{entry name: {(sandbox mode, check name): (passed by pytest autograder, passed by nbgrader)}},
    for the entries this run selected (all of them, or `-k`'s)."""
    entries = selected(request.session)
    courses = [Course(tmp_path_factory.mktemp(f"course{shard}")) for shard in range(SHARDS)]
    course_of = {}
    for number, entry in enumerate(entries):
        course = course_of[entry.name] = courses[number % SHARDS]
        write_submission(entry, course.root / "submitted" / entry.name / "lora", keep_demos=False)
    ours = {mode: catalogue_grades(mode) for mode in MODES}
    for course in courses:
        course.nbgrader("generate_assignment", "lora")
    with ThreadPoolExecutor(SHARDS) as pool:
        list(pool.map(_autograde_shard, courses))
    found = {}
    for entry in entries:
        scores = course_of[entry.name].scores(entry.name, NOTEBOOKS[entry.notebook].filename)
        found[entry.name] = {
            (mode, result.check.name): (result.passed, scores[result.check.name][0] == scores[result.check.name][1])
            for mode in MODES for result in ours[mode][entry.name]
        }
    return found


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first entry's setup grades the whole catalogue three times over
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_nbgrader_and_pytest_autograder_agree(entry, verdicts):
    disagreements = {check: pair for check, pair in verdicts[entry.name].items() if pair[0] != pair[1]}
    assert not disagreements, (
        f"{entry.name}: (pytest autograder passed, nbgrader passed) differ on {disagreements}"
    )
