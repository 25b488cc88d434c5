"""One notebook, in a process of its own: cut off from the grader before any of its code runs,
its cells run in a fresh `__main__`, then each of its probes, in a forked process (fork mode) or
one after the other (spawn mode). Only token-checked frames on its results pipe leave it.
"""
from __future__ import annotations

import builtins
import linecache
import os
import resource
import signal
import tempfile
import time
import types
from pathlib import Path

import torch

from lora_grader import channel, timeline
from lora_grader.channel import CELLS, OUTCOMES, PROBE_ENDED, PROBE_STARTED, PROGRESS
from lora_grader.checks import probe_groups
from lora_grader.checks.core import collect, safe_str
from lora_grader.confinement import landlock, readable_roots, seccomp
from lora_grader.guard import GRADER_DIR, Guards
from lora_grader.process_tree import LIMITS, status

# Bound before any student code runs, so that patching `os` cannot disarm the sandbox.
_fork, _exit = os.fork, os._exit
_monotonic, _sleep = time.monotonic, time.sleep
_signal, _setitimer = signal.signal, signal.setitimer
_save = torch.save


class CellTimeout(BaseException):
    """Raised inside a cell that runs past its time. BaseException: `except Exception` won't eat it."""


def _student_exit(status=0):
    raise SystemExit(status)


def _on_alarm(signum, frame):
    raise CellTimeout()


def run_cell(number: int, source: str, namespace: dict, timeout: float) -> dict | None:
    """Execute one cell; a description of the error it raised, or None."""
    filename = f"<cell {number}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    _signal(signal.SIGALRM, _on_alarm)
    _setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            exec(compile(source, filename, "exec"), namespace)
        finally:
            _setitimer(signal.ITIMER_REAL, 0)
        return None
    except CellTimeout:  # also when the alarm lands just after the cell, before the timer is off
        return {"cell": number, "type": "Timeout", "message": f"still running after {timeout:g} s"}
    except SyntaxError as error:
        return {"cell": number, "type": "SyntaxError", "message": f"{error.msg} (line {error.lineno})"}
    except BaseException as error:
        return {"cell": number, "type": type(error).__name__[:100], "message": safe_str(error)[:300]}


def _isolate(out: Path, keep_fd: int, limits: dict) -> None:
    """Cut the notebook's process off from the grader and the student's files before any of its
    code runs: its own process group and scratch folder (also for temporary files), no stdin, no
    output (nobody reads it, and a cell that prints forever must not fill the disk), no file
    descriptor of the sandbox but its own results pipe, bounded memory and file sizes, and what
    the kernel enforces (confinement.py)."""
    os.setpgid(0, 0)
    os.environ.pop(timeline.VARIABLE, None)
    # Unreadable from here: the sandbox's folder (its log; on sys.path, as `python -m` puts it
    # there) and the other notebooks' folders beside this one.
    hidden = [Path(GRADER_DIR), Path.cwd(), out.parent]
    scratch = out / "scratch"
    scratch.mkdir(exist_ok=True)  # spawn mode: a later worker of the same notebook finds it
    os.chdir(scratch)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)  # torch's import already asked for /tmp
    null_in, null_out = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_in, 0)
    os.dup2(null_out, 1)
    os.dup2(null_out, 2)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)
    for limit, value in ((resource.RLIMIT_AS, limits["address_space"]), (resource.RLIMIT_FSIZE, limits["file_size"]),
                         (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails, rather than killing
    landlock(out, readable_roots(*hidden))
    seccomp()


def _student_namespace() -> types.ModuleType:
    """A fresh `__main__`, as in a Jupyter kernel; `display` does nothing (nobody sees output)."""
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    exec("def display(*objects, **options):\n    pass\n", vars(main))
    return main


def run_notebook(job: dict, spec: dict, out: Path, fd: int, token: bytes, first_group: int = 0) -> None:
    """Run the notebook's cells, then its probes from `first_group` on: each in a forked process
    (fork mode), or one after the other in this process (spawn mode: the sandbox starts a fresh
    worker to go on after a probe that crashed or hung)."""
    groups = probe_groups(spec["key"])  # before any student code can patch the checks

    def send(kind, data):
        channel.send(fd, token, kind, data, _save)

    limits = {**LIMITS, **job.get("limits", {})}
    _isolate(out, fd, limits)
    guards = Guards(limits["forks"], {os.getppid(), int(job.get("grader_pid", 0))} - {0})
    main = _student_namespace()
    guards.install(main)
    namespace = vars(main)
    errors = []
    me = os.getpid()
    for number, source in spec["cells"]:
        channel.send_raw(fd, token, PROGRESS, channel.pack_int(number))  # where it was, should it die
        error = run_cell(number, source, namespace, job["cell_timeout"])
        if os.getpid() != me:
            _exit(0)  # a process the student forked, returning from the cell: it is not the notebook
        if error:
            errors.append(error)
    undone = guards.restore()
    guards.note_refused_forks()
    send(CELLS, {"errors": errors[:20], "attempts": list(guards.attempts), "undone": undone[:50]})
    for index, group in enumerate(groups):
        if index < first_group:
            continue
        if job["mode"] == "spawn":
            channel.send_raw(fd, token, PROBE_STARTED, channel.pack_int(index))
            os._exit = _student_exit
            _probe(index, group, namespace, send, guards)
        else:
            _run_probe_forked(index, group, namespace, job["check_timeout"], send, guards)


def _probe(index: int, group: list, namespace: dict, send, guards: Guards) -> None:
    # Student code ran before this probe (an earlier probe, in spawn mode) and runs inside it:
    # whatever it patched in the grader's modules or torch is put back before the probe starts
    # and again before its outcomes are sent, and reported.
    undone = guards.restore()
    outcomes = collect(group[0], namespace, group[0].all_cases)
    undone += guards.restore()
    report = {"attempts": list(guards.attempts), "undone": undone[:50]}
    try:
        send(OUTCOMES, {"group": index, "outcomes": outcomes, **report})
    except channel.TooLarge as error:
        send(OUTCOMES, {"group": index, "outcomes": [{"status": "probe", "message": str(error)}], **report})


def _run_probe_forked(index: int, group: list, namespace: dict, timeout: float, send, guards: Guards) -> None:
    pid = _fork()
    if pid == 0:
        try:
            os._exit = _student_exit  # an exit in a graded function becomes a located error
            _probe(index, group, namespace, send, guards)
        finally:
            _exit(0)
    deadline = _monotonic() + timeout
    while (ended := status(pid, deadline)) is None:
        _sleep(0.002)
    send(PROBE_ENDED, {"group": index, "how": ended[0], "code": ended[1]})
