"""A sandbox that dies costs only the notebook that killed it: the run starts another, grades every
notebook not yet judged, and names the notebook during which it died. Only a grader that keeps
failing (a sandbox that cannot start) gives the grader's failure as a verdict, never kept."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from catalogue import code_cell, complete_submission
from machine import processes_of_run
from lora_grader import channel
from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.cli import _summary
from lora_grader.classgrade.grade import Run, find_students, grade_class, grader_fingerprint
from lora_grader.classgrade.outputs import read_results, write_outputs
from lora_grader.grading import MODES, Death, Sandbox, Timeouts
from lora_grader.report import sandbox_deaths

# Without the kernel's confinement (LORA_GRADER_CONFINEMENT=off, as on a kernel without seccomp),
# a cell can lower its parent's CPU limit below what it has used: the kernel kills the sandbox.
# The kernel ends the sandbox at a clock tick that finds it running: it may be idle for a while,
# so the cell waits for that, and the sandbox dies while this notebook runs, not after.
KILLS_ITS_SANDBOX = """import os, resource, time
parent = os.getppid()
resource.prlimit(parent, resource.RLIMIT_CPU, (0, 0))
while os.getppid() == parent:
    time.sleep(0.01)
"""
TIMEOUTS = Timeouts(cell=10.0, check=10.0, notebook=30.0)  # room for a busy 2-core machine


def _write(folder: Path, key: str, notebook: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTEBOOKS[key].filename
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def _with_first_cell(key: str, cell_id: str, source: str) -> dict:
    """The complete submission, with a code cell of `source` run right after its first."""
    notebook = complete_submission(key)
    notebook["cells"].insert(1, code_cell(source, cell_id))
    return notebook


def _killer(key: str) -> dict:
    return _with_first_cell(key, "kill", KILLS_ITS_SANDBOX)


def _full_marks(results) -> bool:
    return all(result.passed for result in results)


# --- quick: the record that says a notebook started, and the summary's lines ----------------

def test_a_started_record_is_told_apart_from_a_result():
    stream = io.BytesIO()
    channel.write_started(stream, "alice-01")
    channel.write_record(stream, {"id": "alice-01", "how": "exited", "code": 0}, [(channel.PROGRESS, b"12345678")])
    stream.seek(0)
    started, result = channel.read_record(stream), channel.read_record(stream)
    assert started == ({"id": "alice-01", "started": True, "frames": []}, [])
    assert channel.is_started(started[0]) and not channel.is_started(result[0])
    assert result[1] == [(channel.PROGRESS, b"12345678")]


def test_the_summary_names_the_notebook_the_sandbox_died_in_with_the_student_escaped():
    name = "mal\x1b[2J\nlory"
    deaths = [Death("0-02", "killed by SIGKILL", False), Death("1-01", "killed by SIGKILL", False),
              Death("0-02", "killed by SIGKILL", True)]
    entry = {"file": "x", "sha256": "0" * 64, "checks": [{"name": "c", "task": "t", "passed": True, "points": 1,
                                                         "max": 1, "message": "", "cause": ""}]}
    students = {name: {"notebooks": {"02": entry}, "needs_a_look": []},
                "bob": {"notebooks": {"01": entry}, "needs_a_look": []}}
    run = Run(students, graded=2, reused=0, missing=0,
              deaths=[(name, "02", deaths[0]), ("bob", "01", deaths[1]), (name, "02", deaths[2])])
    summary = _summary(run, 1.0, Path("out"))
    assert "\x1b" not in summary and "\nlory" not in summary
    assert ("the sandbox died while grading mal\\x1b[2J\\nlory's 02 (killed by SIGKILL) and was restarted; "
            "graded alone, mal\\x1b[2J\\nlory's 02 killed it again (killed by SIGKILL): it scores 0 and needs a look"
            ) in summary.splitlines()
    assert ("the sandbox died while grading bob's 01 (killed by SIGKILL) and was restarted; graded again alone, "
            "its result stands") in summary.splitlines()
    assert sandbox_deaths(deaths[1:2], lambda job: "notebook 01", failed={"1-01"}) == [
        "the sandbox died while grading notebook 01 (killed by SIGKILL) and was restarted; notebook 01 could not "
        "be graded again in this run (the next run grades it)"]


# --- slow: sandboxes that die ----------------------------------------------------------------

@contextlib.contextmanager
def _once(condition, action):
    """While the body runs, a thread looks at `condition()` every 10 ms and, the first time it is
    true, calls `action` with its value."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            if value := condition():
                action(value)
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sandbox_killed_from_outside_costs_no_notebook_its_points(tmp_path):
    jobs = {key: (key, _write(tmp_path / key, key, complete_submission(key))) for key in NOTEBOOKS}
    victim = "02"
    # Seconds in its cells, so that the thread below finds it running: a busy grader may read the
    # record that it started and the one with its result back to back.
    slow = _with_first_cell(victim, "wait", "import time\ntime.sleep(3)\n")
    jobs[victim] = (victim, _write(tmp_path / victim, victim, slow))
    sandbox = Sandbox("fork")
    with _once(lambda: victim in sandbox.running, lambda _: os.kill(sandbox.process.pid, signal.SIGKILL)):
        results = sandbox.grade_jobs(jobs, TIMEOUTS, parallel=2)
    assert {job: _full_marks(found) for job, found in results.items()} == {key: True for key in NOTEBOOKS}
    assert victim in [death.job for death in sandbox.deaths], sandbox.deaths
    assert {death.what for death in sandbox.deaths} == {"killed by SIGKILL"}
    assert not any(death.culprit for death in sandbox.deaths) and not sandbox.unreported
    assert f"the sandbox died while grading notebook {victim} (killed by SIGKILL) and was restarted; graded " \
           f"again alone, its result stands" in sandbox_deaths(sandbox.deaths, lambda job: f"notebook {job}")
    assert not processes_of_run(sandbox.run_id), "the dead sandbox's notebooks outlived it"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sandbox_that_stops_answering_is_replaced_when_the_watchdog_ends_it(tmp_path, monkeypatch):
    jobs = {key: (key, _write(tmp_path / key, key, complete_submission(key))) for key in ("01", "02", "04")}
    sandbox = Sandbox("fork")
    usual, calls = Sandbox._watchdog_seconds, []

    def short_for_the_first(self, job) -> float:  # the first sandbox's notebooks take seconds, not minutes
        calls.append(job)
        return 20.0 if len(calls) == 1 else usual(self, job)

    monkeypatch.setattr(Sandbox, "_watchdog_seconds", short_for_the_first)
    victim = []

    def stop(running: set) -> None:
        victim.extend(running)
        os.kill(sandbox.process.pid, signal.SIGSTOP)  # as a machine throttled past any bound

    with _once(lambda: set(sandbox.running), stop):
        results = sandbox.grade_jobs(jobs, TIMEOUTS, parallel=1)
    assert {job: _full_marks(found) for job, found in results.items()} == {"01": True, "02": True, "04": True}
    assert len(victim) == 1 and sandbox.deaths == [Death(victim[0], "no answer for 20 s: stopped by the grader", False)]
    assert not sandbox.unreported and not processes_of_run(sandbox.run_id)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", MODES)
def test_a_notebook_that_kills_its_sandbox_loses_only_its_own_points(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("LORA_GRADER_CONFINEMENT", "off")  # read by the sandbox it starts, not by this process
    jobs = {"killer": ("01", _write(tmp_path / "killer", "01", _killer("01")))}
    jobs.update({key: (key, _write(tmp_path / key, key, complete_submission(key))) for key in ("01", "02", "03")})
    sandbox = Sandbox(mode)
    results = sandbox.grade_jobs(jobs, TIMEOUTS, parallel=2)
    assert {job: _full_marks(found) for job, found in results.items() if job != "killer"} == {
        "01": True, "02": True, "03": True}
    assert all(not result.passed and result.cause == "crashed" for result in results["killer"])
    assert results["killer"][0].message.startswith(
        "the grading sandbox died while this notebook ran (killed by SIGKILL), and again when it ran alone")
    assert [death.job for death in sandbox.deaths if death.culprit] == ["killer"], sandbox.deaths
    assert [death.job for death in sandbox.deaths].count("killer") == 2, "convicted after its second death, not run again"
    assert not sandbox.unreported
    assert not processes_of_run(sandbox.run_id), "the dead sandbox's notebooks outlived it"


def _class(root: Path, killer: str, kills: bool = True) -> list:
    """Three students who hand in notebooks 01 and 02; `killer`'s 01 kills its sandbox if `kills`."""
    _write(root / killer / "lora", "01", _killer("01") if kills else complete_submission("01"))
    _write(root / killer / "lora", "02", complete_submission("02"))
    for name in ("alice", "bob"):
        for key in ("01", "02"):
            _write(root / name / "lora", key, complete_submission(key))
    return find_students(root)


def _notebooks(run) -> dict:
    return {(name, key): notebook for name, student in run.students.items()
            for key, notebook in student["notebooks"].items() if notebook["sha256"] is not None}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lora_grade_keeps_the_honest_grades_and_the_killers_zero_and_regrades_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GRADER_CONFINEMENT", "off")
    monkeypatch.setenv("LORA_GRADER_SANDBOX", "fork")
    killer = "mal\x1b[31mlory"
    students = _class(tmp_path / "submitted", killer)
    grader, out = grader_fingerprint(TIMEOUTS), tmp_path / "lora_grading"
    run = grade_class(students, None, grader, 2, TIMEOUTS, progress=False)
    write_outputs(out, grader, run.students)
    notebooks = _notebooks(run)
    assert len(notebooks) == 6 and not any(entry.get("grader_failed") for entry in notebooks.values())
    assert all(check["passed"] for (name, _), entry in notebooks.items() if name != killer for check in entry["checks"])
    assert all(check["passed"] for check in notebooks[(killer, "02")]["checks"]), "the killer's other notebook"
    assert all(check["cause"] == "crashed" and check["points"] == 0 for check in notebooks[(killer, "01")]["checks"])
    assert [(name, key) for name, key, death in run.deaths if death.culprit] == [(killer, "01")]
    assert any(reason.startswith("01 earned nothing: the grading sandbox died")
               for reason in run.students[killer]["needs_a_look"])
    summary = _summary(run, 1.0, out)
    assert "\x1b" not in summary
    assert "graded alone, mal\\x1b[31mlory's 01 killed it again (killed by SIGKILL): it scores 0 and needs a look" \
           in summary

    again = grade_class(students, read_results(out), grader, 2, TIMEOUTS, progress=False)
    assert (again.graded, again.reused, again.deaths) == (0, 6, [])
    assert _notebooks(again) == notebooks


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sandbox_that_cannot_start_gives_the_graders_failure_which_the_next_run_grades_again(tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "torch.py").write_text("raise ImportError('a broken install')\n")
    students = _class(tmp_path / "submitted", "carol", kills=False)
    grader, out = grader_fingerprint(TIMEOUTS), tmp_path / "lora_grading"
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", str(broken))  # the sandbox's, ahead of the real torch
        run = grade_class(students, None, grader, 2, TIMEOUTS, progress=False)
    write_outputs(out, grader, run.students)
    assert run.deaths == [], "no notebook started: none is to blame"
    for entry in _notebooks(run).values():
        assert entry.get("grader_failed") is True
        assert all(check["cause"] == "grader_failed" for check in entry["checks"])
        assert entry["checks"][0]["message"].startswith(
            "the grader failed: its sandbox ended before it started any notebook (exited with code 1), 3 times in a row; "
            "the next run grades this notebook again")

    again = grade_class(students, read_results(out), grader, 2, TIMEOUTS, progress=False)
    assert (again.graded, again.reused, again.deaths) == (6, 0, [])
    notebooks = _notebooks(again)
    assert not any(entry.get("grader_failed") for entry in notebooks.values())
    assert all(check["passed"] for entry in notebooks.values() for check in entry["checks"])
