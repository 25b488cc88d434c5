"""The grader: sends notebooks to the sandbox, then judges what comes back, in this process.

Nothing the student wrote runs here. The sandbox returns plain data; the verdicts compute
every expected value themselves.

torch (and the checks, which use it) are imported only when judging: starting a Sandbox then
costs nothing here, and the sandbox's two seconds of importing torch overlap with this process's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.notebook import NotebookUnreadable, code_cells

if TYPE_CHECKING:
    from lora_grader.checks.core import Check

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Timeouts:
    cell: float = 20.0  # one cell of the student's notebook
    check: float = 20.0  # one probe, all its cases (checks that read the same probe share it)
    notebook: float = 120.0  # all cells of one notebook, before its probes (notebooks run side by side)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    notebook: str
    check: Check
    message: str  # empty when passed

    @property
    def passed(self) -> bool:
        return not self.message

    @property
    def points(self) -> int:
        return self.check.points if self.passed else 0


# The sandbox forks a process per notebook and per probe, and times cells with SIGALRM.
SUPPORTED = hasattr(os, "fork") and hasattr(signal, "setitimer")
UNSUPPORTED_MESSAGE = ("the autograder's sandbox needs Linux or macOS (it forks processes and times "
                       "them with signals); on Windows, run it inside WSL")


class Sandbox:
    """One sandbox process. Start it early: it imports torch while the caller does other work."""

    def __init__(self) -> None:
        if not SUPPORTED:
            raise RuntimeError(UNSUPPORTED_MESSAGE)
        self.closed = False
        self.outdir = Path(tempfile.mkdtemp(prefix="lora-grading-"))
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        with open(self.outdir / "sandbox.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lora_grader.sandbox", str(self.outdir)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=self.outdir, env=env,
                start_new_session=True,  # one process group: every descendant is killed at the end
            )

    def grade(self, notebook_dir: Path, keys, timeouts: Timeouts = Timeouts()) -> dict[str, list[CheckResult]]:
        """Grade the course notebooks `keys` found in one folder: {"01": [CheckResult, ...]}."""
        return self.grade_jobs(
            {key: (key, Path(notebook_dir) / NOTEBOOKS[key].filename) for key in sorted(keys)}, timeouts
        )

    def grade_jobs(self, jobs: dict[str, tuple[str, Path]], timeouts: Timeouts = Timeouts(),
                   parallel: int | None = None, progress=None) -> dict[str, list[CheckResult]]:
        """Grade many notebooks in one sandbox: jobs maps an id to (notebook key, path). At most
        `parallel` notebooks run at once (default: one per core, at least two). `progress(job_id,
        results)`, if given, hears of each notebook done in the sandbox (results None), then judged."""
        specs, unreadable = [], {}
        for job_id, (key, path) in jobs.items():
            try:
                cells = code_cells(path)
            except NotebookUnreadable as error:
                unreadable[job_id] = str(error)
                continue
            specs.append({"id": job_id, "key": key, "cells": cells, "checks": [c.name for c in checks_of(key)]})
        job = {
            "notebooks": specs,
            "parallel": parallel or max(2, os.cpu_count() or 1),
            "cell_timeout": timeouts.cell,
            "check_timeout": timeouts.check,
            "notebook_timeout": timeouts.notebook,
        }
        # The sandbox bounds each notebook itself; this only guards against the sandbox hanging.
        waves = -(-len(specs) // job["parallel"])
        most_checks = max((len(spec["checks"]) for spec in specs), default=0)
        try:
            self.process.stdin.write((json.dumps(job) + "\n").encode())
            self.process.stdin.close()
            limit = waves * (timeouts.notebook + most_checks * (timeouts.check + 1)) + 60
            if progress:
                _report_until_done(self.process, self.outdir / "status.json", [*unreadable], progress, limit)
            else:
                self.process.wait(timeout=limit)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            pass
        self._stop()
        try:
            statuses = _read_json(self.outdir / "status.json", dict)
            results = {}
            for job_id, (key, _) in jobs.items():
                results[job_id] = self._judge(key, self.outdir / job_id, unreadable.get(job_id), statuses.get(job_id))
                if progress:
                    progress(job_id, results[job_id])
            return results
        finally:
            self.close()

    def _judge(self, key: str, out: Path, unreadable: str | None, status) -> list[CheckResult]:
        from lora_grader.checks.core import CheckFailed, judge

        notes = "" if unreadable else _cell_error_notes(out / "cells.json")
        ended = unreadable or _how_notebook_ended(status, _read_json(out / "progress.json", dict).get("cell"))
        results = []
        for check in checks_of(key):
            outcomes = _read_outcomes(out / f"{check.name}.pt", ended)
            try:
                judge(check, check.all_cases, outcomes, notes)
                message = ""
            except CheckFailed as failure:
                message = str(failure)
            results.append(CheckResult(key, check, message))
        return results

    def _stop(self) -> None:
        """Kill the sandbox and every process it started, once: later, its group id may be reused."""
        if not self.closed:
            self.closed = True
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self.outdir, ignore_errors=True)  # with it, whatever student code wrote there


def grade(notebook_dir: Path, keys=None, timeouts: Timeouts = Timeouts()) -> dict[str, list[CheckResult]]:
    """Grade the notebooks in a folder: {"01": [CheckResult, ...], ...}."""
    sandbox = Sandbox()
    try:
        return sandbox.grade(notebook_dir, keys or NOTEBOOKS, timeouts)
    finally:
        sandbox.close()


def _report_until_done(process, status_file: Path, done: list, progress, limit: float) -> None:
    """process.wait(limit), telling `progress` meanwhile of each notebook the sandbox has finished."""
    told, deadline = set(), time.monotonic() + limit
    while True:
        ended = process.poll() is not None or time.monotonic() > deadline
        for job_id in [*done, *_read_json(status_file, dict)]:
            if job_id not in told:
                told.add(job_id)
                progress(job_id, None)
        if ended:
            return
        time.sleep(0.25)


def _read_outcomes(path: Path, ended: str) -> list[dict]:
    if not path.exists():
        return [{"status": "crashed", "message": ended}]
    import torch

    try:
        outcomes = torch.load(path, weights_only=True)  # plain data only: no code can ride along
    except Exception as error:
        return [{"status": "crashed", "message": f"its result could not be read ({type(error).__name__})"}]
    return outcomes if isinstance(outcomes, list) else []


def _read_json(path: Path, kind: type):
    """A file the sandbox wrote, or an empty `kind`: student code can reach some of them."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return kind()
    return data if isinstance(data, kind) else kind()


def _how_notebook_ended(status, cell) -> str:
    """Why a check may have no result, from how the notebook's process ended and where it was."""
    status = status if isinstance(status, dict) else {}
    how, code = status.get("how"), status.get("code")
    where = f" while running code cell {cell}" if isinstance(cell, int) else ""
    if how == "timeout":
        return (f"the notebook did not finish in time{where}, even when interrupted: is there an "
                "endless loop that catches the interrupt (`except BaseException:` or a bare `except:`)?")
    if how == "signal":
        return f"the notebook's process was killed by signal {code}{where}: a crash, or out of memory?"
    if how == "exited" and where:
        return (f"the notebook's process ended{where} (exit code {code}) before its checks ran: "
                "os._exit() ends it, as it would stop a Jupyter kernel")
    if how == "exited":
        return f"no result came back from the sandbox (the notebook's process ended with exit code {code})"
    return "the notebook was still running when the grader's time ran out"


def _cell_error_notes(path: Path) -> str:
    errors = [error for error in _read_json(path, list) if isinstance(error, dict)]
    return "".join(
        f"\n  Note: code cell {error.get('cell')} of the notebook raised {error.get('type')}: {error.get('message')}"
        for error in errors[:3]
    )
