"""Fixtures shared by the project's tests, and how `pytest tests -n 2` shares the tests out."""
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


# --- two workers (pytest-xdist's `-n 2`) ---------------------------------------------------------
# The files whose tests share the catalogue's session fixtures run on one worker, and each other
# file on one worker, so that no fixture is built twice; the longest groups start first, so that
# neither worker is left with one of them at the end while the other is idle (README, Maintainers).
CATALOGUE_FIXTURES = {"catalogue_grades", "recorded_catalogue"}
CATALOGUE_FILES = {"test_agreement.py", "test_catalogue.py"}
LONGEST_FIRST = ("catalogue", "tests/test_jupyterhub.py", "tests/test_hostile.py", "tests/test_check_integrity.py",
                 "tests/test_bundle.py", "tests/test_nbgrader_end_to_end.py", "tests/test_jupyterlab_browser.py",
                 "tests/test_hostile_nb05.py")


def _group(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return "catalogue" if path.rsplit("/", 1)[-1] in CATALOGUE_FILES else path


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: `pytest tests` runs without it too
def pytest_xdist_make_scheduler(config, log):
    """`-n` without `--dist`: one work unit per group above, in the order the workers collected them."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    config.option.loadscopereorder = False
    return ByGroup(config, log)


def pytest_collection_modifyitems(config, items):
    if getattr(config, "workerinput", None) is None:
        return
    strays = [item.nodeid for item in items
              if CATALOGUE_FIXTURES & set(item.fixturenames) and _group(item.nodeid) != "catalogue"]
    if strays:
        raise pytest.UsageError(f"add their files to CATALOGUE_FILES in tests/conftest.py: {strays[:3]}")
    rank = {group: place for place, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))  # stable: the rest keep their order
