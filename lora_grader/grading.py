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
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from lora_grader import channel, integrity, timeline
from lora_grader.checks import NOTEBOOKS, checks_of, probe_groups
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
    cause: str = ""  # the failure's cause key (CheckFailed.cause), empty when passed

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


MODES = ("fork", "spawn")


def default_mode() -> str:
    """Fork where it is safe (Linux): one import of torch for every notebook. Elsewhere (macOS,
    whose system libraries and torch's thread pools do not survive fork) a fresh worker process
    per notebook. LORA_GRADER_SANDBOX=spawn chooses it anywhere."""
    chosen = os.environ.get("LORA_GRADER_SANDBOX", "")
    return chosen if chosen in MODES else ("fork" if sys.platform.startswith("linux") else "spawn")


class Sandbox:
    """One sandbox process. Start it early: it imports torch while the caller does other work."""

    def __init__(self, mode: str | None = None) -> None:
        if not SUPPORTED:
            raise RuntimeError(UNSUPPORTED_MESSAGE)
        self.mode = mode or default_mode()
        if self.mode not in MODES:
            raise ValueError(f"the sandbox's mode is one of {', '.join(MODES)}, not {self.mode!r}")
        self.closed = False
        self.outdir = Path(tempfile.mkdtemp(prefix="lora-grading-"))
        self.integrity: dict[str, Integrity] = {}
        # Notebooks the sandbox never reported on (it died, or hung past the watchdog): their
        # verdicts say the grader failed, not the student, and must not be kept as grades.
        self.unreported: set[str] = set()
        self.keep_records, self.records = False, {}  # the sandbox's raw records, for tests/recorded.py
        self.run_id = uuid.uuid4().hex  # in the environment of every process of this run, to find strays
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                   LORA_GRADING_RUN=self.run_id)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        with open(self.outdir / "sandbox.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lora_grader.sandbox", self.mode],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.outdir, env=env,
                start_new_session=True,  # one process group: every descendant is killed at the end
            )
        timeline.mark("grader: sandbox started")

    def grade(self, notebook_dir: Path, keys, timeouts: Timeouts = Timeouts()) -> dict[str, list[CheckResult]]:
        """Grade the course notebooks `keys` found in one folder: {"01": [CheckResult, ...]}."""
        return self.grade_jobs(
            {key: (key, Path(notebook_dir) / NOTEBOOKS[key].filename) for key in sorted(keys)}, timeouts
        )

    def grade_jobs(self, jobs: dict[str, tuple[str, Path]], timeouts: Timeouts = Timeouts(),
                   parallel: int | None = None, on_notebook=None, limits: dict | None = None,
                   ) -> dict[str, list[CheckResult]]:
        """Grade many notebooks in one sandbox: jobs maps an id to (notebook key, path). At most
        `parallel` notebooks run at once (default: one per core, at least two). `on_notebook(id,
        results)` is called as each notebook is judged. Integrity flags land in `self.integrity`.
        `limits` lowers the sandbox's resource bounds (process_tree.LIMITS), for tests."""
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
        # The sandbox bounds each notebook itself; this only guards against the sandbox hanging.
        waves = -(-len(specs) // job["parallel"])
        most_checks = max((len(checks_of(spec["key"])) for spec in specs), default=0)
        watchdog = threading.Timer(waves * (timeouts.notebook + most_checks * (timeouts.check + 1)) + 60, self._stop)
        watchdog.start()
        results = {}

        def judged(job_id: str, record) -> None:
            key = jobs[job_id][0]
            if record is None and job_id not in unreadable:
                self.unreported.add(job_id)
            results[job_id] = self._judge(job_id, key, record, unreadable.get(job_id))
            timeline.mark(f"grader: notebook {key} judged")
            if on_notebook is not None:
                on_notebook(job_id, results[job_id])

        try:
            for job_id in unreadable:
                judged(job_id, None)
            try:
                self.process.stdin.write((json.dumps(job) + "\n").encode())
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            for record in self._records():
                job_id = record[0].get("id")
                if job_id in jobs and job_id not in results:
                    judged(job_id, record)
            for job_id in jobs:
                if job_id not in results:
                    judged(job_id, None)
        finally:
            watchdog.cancel()
            self.close()
        return {job_id: results[job_id] for job_id in jobs}

    def _records(self):
        """The sandbox's records as they arrive. A thread reads them, so that the sandbox never
        waits on a full pipe while this process judges: it starts its next notebook at once."""
        arrived: queue.Queue = queue.Queue(maxsize=64)  # bounded: a slow judge holds the sandbox back, not memory

        def read() -> None:
            try:
                while (record := channel.read_record(self.process.stdout)) is not None:
                    arrived.put(record)
            finally:
                arrived.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (record := arrived.get()) is not None:
            yield record

    def _judge(self, job_id: str, key: str, record, unreadable: str | None) -> list[CheckResult]:
        if self.keep_records:
            self.records[job_id] = record
        if unreadable:
            return [CheckResult(key, check, printable(unreadable), "unreadable") for check in checks_of(key)]
        return judge_record(key, record, self.integrity.setdefault(job_id, Integrity()), self.timeouts.check)

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


def judge_record(key: str, record, integrity_of: Integrity, check_timeout: float) -> list[CheckResult]:
    """Judge what the sandbox sent for one notebook (None: nothing came back), in this process.
    A pure function of the record: a recorded one is judged as a fresh one (tests/recorded.py)."""
    from lora_grader.verdicts.core import CheckFailed, judge

    header, frames = record if record is not None else ({}, [])
    sent = _Sent(frames)
    integrity_of.attempts = sent.attempts
    integrity_of.undone = sent.undone
    if header.get("tampered") or sent.tampered:
        integrity_of.tampered = printable(str(header.get("tampered") or sent.tampered))[:300]
    notes = _cell_error_notes(sent.cell_errors)
    ended = _how_notebook_ended(header, sent.progress) if record is not None else (
        "the notebook was still running when the grader's time ran out")
    by_check = {}
    for index, group in enumerate(probe_groups(key)):
        lost = header.get("lost", {}).get(str(index)) if isinstance(header.get("lost"), dict) else None
        if isinstance(lost, list) and len(lost) == 2:
            lost = {"how": lost[0], "code": lost[1]}
        outcomes = sent.outcomes.get(index) or _probe_failure(
            sent.probe_ended.get(index) or lost, ended, check_timeout)
        for check in group:
            try:
                if integrity_of.tampered:
                    raise CheckFailed(f"this notebook is marked as tampered ({integrity_of.tampered}): "
                                      "it scores 0 until a person has looked at it", cause="tampered")
                judge(check, check.all_cases, outcomes, notes)
                message, cause = "", ""
            except CheckFailed as failure:
                message, cause = str(failure), failure.cause or "wrong"
            except Exception as error:  # a verdict that could not read what came back
                message = (f"the grader could not judge what `{check.task}` produced "
                           f"({type(error).__name__}): was it changed on its way back?")
                cause = "unreadable"
            by_check[check.name] = CheckResult(key, check, printable(message), cause)
    return [by_check[check.name] for check in checks_of(key)]


def _cases(key: str) -> int:
    return sum(len(group[0].all_cases) for group in probe_groups(key))


def grade(notebook_dir: Path, keys=None, timeouts: Timeouts = Timeouts()) -> dict[str, list[CheckResult]]:
    """Grade the notebooks in a folder: {"01": [CheckResult, ...], ...}."""
    sandbox = Sandbox()
    try:
        return sandbox.grade(notebook_dir, keys or NOTEBOOKS, timeouts)
    finally:
        sandbox.close()


@dataclasses.dataclass
class Integrity:
    """What a person should look at in one notebook; none of it changes the points by itself,
    except `tampered` (a forged result), which scores the notebook 0."""
    flags: list[str] = dataclasses.field(default_factory=list)  # code that reaches for the grader
    attempts: list[str] = dataclasses.field(default_factory=list)  # what the sandbox refused
    undone: list[str] = dataclasses.field(default_factory=list)  # patches put back before checking
    tampered: str = ""

    def lines(self) -> list[str]:
        lines = [f"tampered: {self.tampered}"] * bool(self.tampered)
        lines += [f"refused: {what}" for what in self.attempts]
        lines += [f"patched (put back before checking): {what}" for what in self.undone]
        return lines + [f"flag: {flag}" for flag in self.flags]


class _Sent:
    """What a notebook's processes sent, decoded without trusting any of it."""

    def __init__(self, frames) -> None:
        self.progress = None
        self.tampered = ""
        self.cell_errors, self.attempts, self.undone = [], [], []
        self.outcomes, self.probe_ended = {}, {}
        for kind, payload in frames:
            if kind == channel.PROGRESS:
                self.progress = channel.unpack_int(payload)
                continue
            data = channel.load(payload)
            if not isinstance(data, dict):
                continue
            if kind == channel.CELLS:
                self.cell_errors = _strings_of(data.get("errors"), dict)
                self.attempts += _strings_of(data.get("attempts"), str)
                self.undone += [u for u in _strings_of(data.get("undone"), str) if u not in self.undone]
            elif kind == channel.OUTCOMES and isinstance(data.get("group"), int):
                outcomes = data.get("outcomes")
                if data["group"] in self.outcomes:
                    self.tampered = "two results for one probe: only one process of the grader sends it"
                self.outcomes.setdefault(data["group"], outcomes if isinstance(outcomes, list) else [])
                self.attempts += [a for a in _strings_of(data.get("attempts"), str) if a not in self.attempts]
                self.undone += [u for u in _strings_of(data.get("undone"), str) if u not in self.undone]
            elif kind == channel.PROBE_ENDED and isinstance(data.get("group"), int):
                self.probe_ended.setdefault(data["group"], data)
        self.attempts = [printable(a)[:200] for a in self.attempts[:20]]
        self.undone = [printable(u)[:200] for u in self.undone[:20]]


def _strings_of(value, kind) -> list:
    return [item for item in value if isinstance(item, kind)][:50] if isinstance(value, list) else []


def _probe_failure(ended: dict | None, notebook_ended: str, timeout: float) -> list[dict]:
    """The outcome of a probe that sent no result, from how its process ended."""
    if not isinstance(ended, dict):
        return [{"status": "crashed", "message": notebook_ended}]
    how, code = ended.get("how"), ended.get("code")
    if how == "timeout":
        return [{"status": "timeout", "message": f"still running after {timeout:g} s: is there an endless loop?"}]
    if how == "signal":
        message = f"the process running it was killed by signal {code} (out of memory? a crash?)"
    else:
        message = f"the process running it ended (exit code {code}) before returning a result"
    return [{"status": "crashed", "message": message}]


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text from student code, safe for a terminal: control characters and escape codes escaped."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def printable_name(text: str) -> str:
    """A name a student chose (a folder, a file), on one line: newlines and tabs escaped too, so
    that it cannot start a line of its own in a summary."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def _how_notebook_ended(header: dict, cell) -> str:
    """Why a check may have no result, from how the notebook's process ended and where it was."""
    how, code = header.get("how"), header.get("code")
    where = f" while running code cell {cell}" if isinstance(cell, int) else ""
    if header.get("limit"):
        return f"the notebook was stopped{where}: {header['limit']}"
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


def _cell_error_notes(errors: list[dict]) -> str:
    return "".join(
        f"\n  Note: code cell {error.get('cell')} of the notebook raised {error.get('type')}: {error.get('message')}"
        for error in errors[:3]
    )
