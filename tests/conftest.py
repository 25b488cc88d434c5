"""Fixtures shared by the project's tests."""
import pytest

from catalogue import selected, write_submission
from lora_grader.grading import Sandbox
from recorded import catalogue_records, judged


@pytest.fixture(scope="session")
def recorded_catalogue():
    """({entry name: the sandbox's record}, recorded just now?): the whole catalogue graded once in
    a fork-mode sandbox, or its cached records when nothing on the probe side changed since."""
    return catalogue_records()


@pytest.fixture(scope="session")
def catalogue_grades(request, tmp_path_factory, recorded_catalogue):
    """grades(mode) -> {entry name: [CheckResult]}: the catalogue entries this run selected, shared
    by the catalogue and agreement tests. Fork mode is judged from the recorded catalogue; spawn
    mode is graded here, in a sandbox. Demo cells are left out: they are tagged skip-autograder,
    so the sandbox would not run them either."""
    entries = selected(request.session)
    cache = {}

    def grades(mode: str) -> dict:
        if mode not in cache and mode == "fork":
            records = recorded_catalogue[0]
            cache[mode] = {entry.name: judged(entry, records[entry.name]) for entry in entries}
        elif mode not in cache:
            folder = tmp_path_factory.mktemp(f"catalogue-{mode}")
            jobs = {entry.name: (entry.notebook, write_submission(entry, folder / entry.name, keep_demos=False))
                    for entry in entries}
            cache[mode] = Sandbox(mode).grade_jobs(jobs)
        return cache[mode]

    return grades
