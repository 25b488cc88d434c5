"""Fixtures shared by the project's tests."""
import pytest

from catalogue import selected, write_submission
from lora_grader.grading import Sandbox


@pytest.fixture(scope="session")
def catalogue_grades(request, tmp_path_factory):
    """grades(mode) -> {entry name: [CheckResult]}: the catalogue entries this run selected,
    graded once per sandbox mode and shared by the catalogue and agreement tests. Demo cells are
    left out: they are tagged skip-autograder, so the sandbox would not run them either."""
    folder = tmp_path_factory.mktemp("catalogue")
    jobs = {entry.name: (entry.notebook, write_submission(entry, folder / entry.name, keep_demos=False))
            for entry in selected(request.session)}
    cache = {}

    def grades(mode: str) -> dict:
        if mode not in cache:
            cache[mode] = Sandbox(mode).grade_jobs(jobs)
        return cache[mode]

    return grades
