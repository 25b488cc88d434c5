"""The grader: sends notebooks to the sandbox, then judges what comes back, in this process.

Nothing the student wrote runs here. The sandbox returns plain data; the verdicts compute
every expected value themselves (judging.py).

torch (and the checks, which use it) are imported only when judging: starting a Sandbox then
costs nothing here, and the sandbox's two seconds of importing torch overlap with this process's.

A sandbox that dies (a crash, a signal, a hang past the watchdog) costs only the notebook that
killed it. The sandbox says when it starts each notebook, so the grader knows which were running
when it died; it starts a new sandbox for the notebooks never started, and one for each that was
running, alone. A notebook whose sandbox dies again while it runs alone killed it: it scores 0
for that, and is not run again. Only when the grader itself keeps failing (a sandbox that dies
before it starts any notebook, or one run that needs too many sandboxes) does a notebook get the
grader's failure as its verdict, which lora-grade never keeps.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import NamedTuple

from lora_grader import channel, integrity, timeline
from lora_grader.checks import NOTEBOOKS, checks_of, probe_groups
from lora_grader.judging import CheckResult, Integrity, failed_all, judge_record, printable, printable_name
from lora_grader.notebook import NotebookUnreadable, code_cells
from lora_grader.process_tree import kill_leftovers

__all__ = ["CheckResult", "Integrity", "judge_record", "printable", "printable_name"]  # their home is judging.py

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Timeouts:
    cell: float = 20.0  # one cell of the student's notebook
    check: float = 20.0  # one probe, all its cases (checks that read the same probe share it)
    notebook: float = 120.0  # all cells of one notebook, before its probes (notebooks run side by side)


# The sandbox forks a process per notebook and per probe, and times cells with SIGALRM.
SUPPORTED = hasattr(os, "fork") and hasattr(signal, "setitimer")
UNSUPPORTED_MESSAGE = ("the autograder's sandbox needs Linux or macOS (it forks processes and times "
                       "them with signals); on Windows, run it inside WSL")


MODES = ("fork", "spawn")

# Sandboxes in a row that die before starting any notebook: the grader's own failure, not a notebook's.
START_FAILURES = 3

CULPRIT = ("the grading sandbox died while this notebook ran ({what}), and again when it ran alone: "
           "something in it ends the process that runs the notebooks (a signal sent to it, a limit set on "
           "it?), so none of its checks could run")


class Death(NamedTuple):
    """A notebook that was running when its sandbox died."""
    job: str  # the notebook's job id
    what: str  # how the sandbox ended: "killed by SIGKILL", "exited with code 1", ...
    culprit: bool  # it ran alone, and had been running at an earlier death: it scores 0, and is not run again


def default_mode() -> str:
    """Fork where it is safe (Linux): one import of torch for every notebook. Elsewhere (macOS,
    whose system libraries and torch's thread pools do not survive fork) a fresh worker process
    per notebook. LORA_GRADER_SANDBOX=spawn chooses it anywhere."""
    chosen = os.environ.get("LORA_GRADER_SANDBOX", "")
    return chosen if chosen in MODES else ("fork" if sys.platform.startswith("linux") else "spawn")


class Sandbox:
    """The sandbox process, and those that replace it should it die. Start it early: it imports
    torch while the caller does other work."""

    max_restarts = 20  # sandboxes started again in one run: a class of notebooks that kill it must end too

    def __init__(self, mode: str | None = None) -> None:
        if not SUPPORTED:
            raise RuntimeError(UNSUPPORTED_MESSAGE)
        self.mode = mode or default_mode()
        if self.mode not in MODES:
            raise ValueError(f"the sandbox's mode is one of {', '.join(MODES)}, not {self.mode!r}")
        self.closed = False
        self.outdir = Path(tempfile.mkdtemp(prefix="lora-grading-"))
        self.integrity: dict[str, Integrity] = {}
        # Notebooks the grader failed on (its sandboxes kept dying before starting them, or this run
        # needed too many): their verdicts say the grader failed, not the student, and must not be kept.
        self.unreported: set[str] = set()
        self.deaths: list[Death] = []  # in the order they happened
        self.running: set[str] = set()  # notebooks the current sandbox process started and has not reported on
        self.keep_records, self.records = False, {}  # the sandbox's raw records, for tests/recorded.py
        self.run_id = uuid.uuid4().hex  # in the environment of every process of this run, to find strays
        self._start_process()

    def _start_process(self) -> None:
        if hasattr(self, "process"):  # the one before, done with or dead: it must not outlive the run
            self._kill_group()
            self.process.wait()
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                   LORA_GRADING_RUN=self.run_id)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        with open(self.outdir / "sandbox.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lora_grader.sandbox", self.mode],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.outdir, env=env,
                start_new_session=True,  # one process group: every descendant is killed at the end
            )
        self.running = set()
        self._hung = 0.0  # seconds the watchdog waited before it stopped this process; 0: it did not
        timeline.mark("grader: sandbox started")

    def grade(self, notebook_dir: Path, keys, timeouts: Timeouts = Timeouts()) -> dict[str, list[CheckResult]]:
        """Grade the course notebooks `keys` found in one folder: {"01": [CheckResult, ...]}."""
        return self.grade_jobs(
            {key: (key, Path(notebook_dir) / NOTEBOOKS[key].filename) for key in sorted(keys)}, timeouts
        )

    def grade_jobs(self, jobs: dict[str, tuple[str, Path]], timeouts: Timeouts = Timeouts(),
                   parallel: int | None = None, on_notebook=None, limits: dict | None = None,
                   ) -> dict[str, list[CheckResult]]:
        """Grade many notebooks: jobs maps an id to (notebook key, path). At most `parallel`
        notebooks run at once (default: one per core, at least two). `on_notebook(id, results)` is
        called as each notebook is judged. Integrity flags land in `self.integrity`; the notebooks
        running when a sandbox died, in `self.deaths`. `limits` lowers the sandbox's resource
        bounds (process_tree.LIMITS), for tests."""
        specs, unreadable = [], {}
        self.timeouts = timeouts
        for job_id, (key, path) in jobs.items():
            try:
                cells = code_cells(path)
            except NotebookUnreadable as error:
                unreadable[job_id] = str(error)
                continue
            self.integrity[job_id] = Integrity(flags=[str(flag) for flag in integrity.scan(cells)])
            specs.append({"id": job_id, "key": key, "cells": cells})
        # The notebooks with the most cases first: they take longest, and the short ones then
        # fill the gaps at the end, so the last result arrives sooner.
        specs.sort(key=lambda spec: -_cases(spec["key"]))
        job = {
            "notebooks": specs,
            "parallel": parallel or max(2, os.cpu_count() or 1),
            "cell_timeout": timeouts.cell,
            "check_timeout": timeouts.check,
            "notebook_timeout": timeouts.notebook,
            "grader_pid": os.getpid(),
            "mode": self.mode,
            "limits": limits or {},
        }
        results = {}

        def judged(job_id: str, record, failure: tuple[str, str] | None = None) -> None:
            """`failure`: (message, cause) for every check, when no record can be judged."""
            key = jobs[job_id][0]
            if self.keep_records:
                self.records[job_id] = record
            if job_id in unreadable:
                results[job_id] = failed_all(key, unreadable[job_id], "unreadable")
            elif failure is not None:
                results[job_id] = failed_all(key, *failure)
                if failure[1] == "grader_failed":
                    self.unreported.add(job_id)
            else:
                results[job_id] = judge_record(key, record, self.integrity.setdefault(job_id, Integrity()),
                                               timeouts.check)
            timeline.mark(f"grader: notebook {key} judged")
            if on_notebook is not None:
                on_notebook(job_id, results[job_id])

        try:
            for job_id in unreadable:
                judged(job_id, None)
            self._grade_until_judged(specs, job, judged, results)
        finally:
            self.close()
        return {job_id: results[job_id] for job_id in jobs}

    def _grade_until_judged(self, specs: list[dict], job: dict, judged, done: dict) -> None:
        """Batches of notebooks, each in a sandbox of its own (the first: the one already
        started), until every notebook is judged. A death leaves two kinds of notebook without a
        result: those never started, graded again together, and those that were running, each
        graded again alone."""
        batches = [(specs, job["parallel"])] if specs else []
        deaths_seen = collections.Counter()  # job id: deaths of a sandbox while it ran
        sandboxes = died = failed_starts = 0
        while batches:
            batch, parallel = batches.pop(0)
            if sandboxes:
                self._start_process()
            sandboxes += 1
            started, what = self._run({**job, "notebooks": batch, "parallel": parallel}, judged, done)
            left = [spec for spec in batch if spec["id"] not in done]
            if not left:
                continue
            died += 1
            running = [spec for spec in left if spec["id"] in started]
            failed_starts = 0 if running else failed_starts + 1
            for spec in running:
                deaths_seen[spec["id"]] += 1
                culprit = len(batch) == 1 and deaths_seen[spec["id"]] >= 2
                self.deaths.append(Death(spec["id"], what, culprit))
                if culprit:
                    judged(spec["id"], None, (CULPRIT.format(what=what), "crashed"))
            never_started = [spec for spec in left if spec["id"] not in started]
            batches = ([(never_started, parallel)] if never_started else []) + batches + [
                ([spec], 1) for spec in running if spec["id"] not in done]
            if batches and failed_starts >= START_FAILURES:
                return self._give_up(batches, judged, f"the grader failed: its sandbox ended before it started any "
                                                      f"notebook ({what}), {failed_starts} times in a row")
            if batches and sandboxes > self.max_restarts:
                return self._give_up(batches, judged, f"the grader gave up: its sandbox died {died} times in this "
                                                      f"run ({what} the last time)")

    @staticmethod
    def _give_up(batches: list, judged, why: str) -> None:
        for batch, _ in batches:
            for spec in batch:
                judged(spec["id"], None, (f"{why}; the next run grades this notebook again", "grader_failed"))

    def _run(self, job: dict, judged, done: dict) -> tuple[set[str], str]:
        """One sandbox process grades the job's notebooks: the ids of those it started, and how it
        ended if it died before reporting on every one ("" if it did not)."""
        ids = {spec["id"] for spec in job["notebooks"]}
        started: set[str] = set()
        seconds = self._watchdog_seconds(job)
        watchdog = threading.Timer(seconds, self._hang, (self.process, seconds))
        watchdog.start()
        try:
            try:
                self.process.stdin.write((json.dumps(job) + "\n").encode())
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            for record in self._records():
                job_id = record[0].get("id")
                if job_id not in ids or job_id in done:
                    continue
                if channel.is_started(record[0]):
                    started.add(job_id)
                    self.running.add(job_id)
                    continue
                self.running.discard(job_id)
                judged(job_id, record)
        finally:
            watchdog.cancel()
            watchdog.join()
        if ids.issubset(done):
            return started, ""
        return started, self._end_process()

    def _watchdog_seconds(self, job: dict) -> float:
        """The sandbox bounds each notebook itself; this only guards against the sandbox hanging."""
        waves = -(-len(job["notebooks"]) // job["parallel"])
        most_checks = max((len(checks_of(spec["key"])) for spec in job["notebooks"]), default=0)
        return waves * (self.timeouts.notebook + most_checks * (self.timeouts.check + 1)) + 60

    def _records(self):
        """The sandbox's records as they arrive. A thread reads them, so that the sandbox never
        waits on a full pipe while this process judges: it starts its next notebook at once."""
        arrived: queue.Queue = queue.Queue(maxsize=64)  # bounded: a slow judge holds the sandbox back, not memory
        stdout = self.process.stdout

        def read() -> None:
            try:
                while (record := channel.read_record(stdout)) is not None:
                    arrived.put(record)
            finally:
                arrived.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (record := arrived.get()) is not None:
            yield record

    def _hang(self, process: subprocess.Popen, seconds: float) -> None:
        """The watchdog: the sandbox has not finished in any time its notebooks could take."""
        self._hung = seconds
        try:
            os.killpg(process.pid, signal.SIGKILL)  # not reaped before the watchdog is joined: still its group
        except (ProcessLookupError, PermissionError):
            pass

    def _end_process(self) -> str:
        """After the sandbox died: end what it left running, reap it, and say how it ended."""
        self._kill_group()
        if hasattr(os, "waitid"):
            try:  # dead, not yet reaped: its session's number cannot have been reused
                os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            kill_leftovers(self.process.pid, f"LORA_GRADING_RUN={self.run_id}".encode())
        code = self.process.wait()
        self.running = set()
        if self._hung:
            return f"no answer for {self._hung:.0f} s: stopped by the grader"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def _kill_group(self) -> None:
        """The sandbox and every process it started, while it is not reaped: later, its group id
        may be reused."""
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._kill_group()
            self.process.wait()
        shutil.rmtree(self.outdir, ignore_errors=True)  # with it, whatever student code wrote there


def _cases(key: str) -> int:
    return sum(len(group[0].all_cases) for group in probe_groups(key))


def grade(notebook_dir: Path, keys=None, timeouts: Timeouts = Timeouts()) -> dict[str, list[CheckResult]]:
    """Grade the notebooks in a folder: {"01": [CheckResult, ...], ...}."""
    sandbox = Sandbox()
    try:
        return sandbox.grade(notebook_dir, keys or NOTEBOOKS, timeouts)
    finally:
        sandbox.close()
