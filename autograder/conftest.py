"""`pytest autograder`: the students' self-check.

Student code never runs in this process. At start-up a sandbox process begins importing torch;
once pytest knows which checks were selected, it is sent those notebooks, runs them, and hands
back plain data that the verdicts judge here. A table of points closes the run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lora_grader.checks import NOTEBOOKS
from lora_grader import confinement, timeline
from lora_grader.grading import MODES, SUPPORTED, UNSUPPORTED_MESSAGE, Sandbox
from lora_grader.report import integrity_report, points_table, sandbox_deaths

SANDBOX = pytest.StashKey[Sandbox]()
RESULTS = pytest.StashKey[dict]()
INTEGRITY = pytest.StashKey[dict]()
DEATHS = pytest.StashKey[tuple]()  # (the notebooks running when the sandbox died, those the grader gave up on)
EXIT_STATUS = pytest.StashKey[int]()


def pytest_addoption(parser):
    parser.addoption("--notebooks", metavar="DIR", default=None,
                     help="folder of the course notebooks to grade (default: course/lora)")
    parser.addoption("--sandbox", choices=MODES, default=None,
                     help="fork: notebooks forked from one process that imported torch (default on Linux); "
                          "spawn: a fresh process per notebook (default elsewhere)")


def pytest_sessionstart(session):
    if not SUPPORTED:
        raise pytest.UsageError(UNSUPPORTED_MESSAGE)
    session.config.stash[SANDBOX] = Sandbox(session.config.getoption("--sandbox"))  # imports torch while pytest collects


def pytest_sessionfinish(session, exitstatus):
    if SANDBOX in session.config.stash:
        session.config.stash[SANDBOX].close()
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """Everything is reported (pytest_sessionfinish printed the last line): end the process now.
    Python's shutdown with torch loaded, and pytest's own search for unraisable exceptions (two
    full garbage collections), take most of a second, paid on every self-check. Only when pytest is the program (not when
    pytest.main() was called from another program, which must go on)."""
    main = sys.modules.get("__main__")
    is_pytest = (getattr(getattr(main, "__spec__", None), "name", "") == "pytest.__main__"
                 or Path(getattr(main, "__file__", "") or "").name in {"pytest", "py.test"})
    if is_pytest and EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


def _notebook_dir(config) -> Path:
    option = config.getoption("--notebooks")
    return Path(option).resolve() if option else config.rootpath / "course" / "lora"


@pytest.fixture
def graded(request):
    """Judge one check of the notebook this test module is about; fails with the feedback."""
    config = request.config
    if RESULTS not in config.stash:
        timeline.mark("grader: tests collected")
        keys = {item.module.NOTEBOOK for item in request.session.items if hasattr(item.module, "NOTEBOOK")}
        sandbox = config.stash[SANDBOX]
        results = sandbox.grade(_notebook_dir(config), keys)
        config.stash[RESULTS] = {(r.notebook, r.check.name): r for rs in results.values() for r in rs}
        config.stash[INTEGRITY] = sandbox.integrity
        config.stash[DEATHS] = (sandbox.deaths, sandbox.unreported)

    def judge(notebook: str, check) -> None:
        result = config.stash[RESULTS][(notebook, check.name)]
        if not result.passed:
            pytest.fail(result.message, pytrace=False)

    return judge


def pytest_terminal_summary(terminalreporter, config):
    if RESULTS in config.stash:
        results = list(config.stash[RESULTS].values())
        terminalreporter.write_sep("=", "LoRA course: points")
        terminalreporter.write_line(points_table(results, _notebook_dir(config), config.getoption("--notebooks")))
        deaths, failed = config.stash.get(DEATHS, ([], set()))
        for line in sandbox_deaths(deaths, lambda job: f"notebook {job}", failed):
            terminalreporter.write_line(line)
        terminalreporter.write_line(confinement.describe())
        if report := integrity_report(config.stash[INTEGRITY]):
            terminalreporter.write_sep("=", "Integrity: for a person to read, not a verdict")
            terminalreporter.write_line(report)
