"""The sandbox: where student code runs, away from the grader.

`python -m lora_grader.sandbox OUTDIR` imports torch and the checks, then reads one job (a JSON
line) from stdin: notebooks to run, each with an id, at most `parallel` at a time. Importing first
lets the grader start the sandbox before it knows what to grade. Each notebook runs in a process
forked from here, and each probe in a process forked from the notebook's, so an exit, a crash or
a hang costs only the checks (or notebook) it happens in. Everything comes back as files:
`<id>/<check>.pt` (plain data, read with `torch.load(weights_only=True)`), `<id>/cells.json`
(cells that raised), `<id>/progress.json` (the cell running last) and, written only by this
process, `status.json` (how each notebook's process ended).

Where Linux offers Landlock, a notebook's processes may change files only in its own folder
under OUTDIR, and may signal only the processes they started: student code can neither touch the
student's files nor kill the grader or another notebook.
"""
from __future__ import annotations

import builtins
import ctypes
import json
import linecache
import os
import posix
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from lora_grader.checks import checks_of
from lora_grader.checks.core import collect, count_flops, safe_str

MEMORY_LIMIT_BYTES = 8 * 2**30
FILE_SIZE_LIMIT_BYTES = 64 * 2**20  # per file the student writes: enough for any exercise, not a full disk

# Bound before any student code runs, so that patching `os` cannot disarm the sandbox.
_fork, _exit, _kill, _waitpid = os.fork, os._exit, os.kill, os.waitpid
_monotonic, _sleep = time.monotonic, time.sleep
_signal, _setitimer = signal.signal, signal.setitimer
_save = torch.save


class CellTimeout(BaseException):
    """Raised inside a cell that runs past its time. BaseException: `except Exception` won't eat it."""


def _student_exit(status=0):
    raise SystemExit(status)


def _ignore(*args, **kwargs):
    return None


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _save_outcomes(path: Path, outcomes) -> None:
    tmp = path.with_suffix(".tmp")
    _save(outcomes, tmp)
    tmp.replace(path)


def _reap(pid: int, deadline: float) -> tuple[str, int] | None:
    """How a child ended ('exited'|'signal'|'timeout', code), killing it past the deadline;
    None while it still runs."""
    done, status = _waitpid(pid, os.WNOHANG)
    if done:
        if os.WIFSIGNALED(status):
            return "signal", os.WTERMSIG(status)
        return "exited", os.WEXITSTATUS(status)
    if _monotonic() > deadline:
        _kill(pid, signal.SIGKILL)
        _waitpid(pid, 0)
        return "timeout", 0
    return None


def _wait(pid: int, deadline: float) -> tuple[str, int]:
    while (ended := _reap(pid, deadline)) is None:
        _sleep(0.002)
    return ended


# --- Landlock: the kernel's sandbox for unprivileged processes (Linux 5.13+) -----------------

_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all but alpha
_FS_WRITE_FILE = 1 << 1
_FS_CHANGES = 0x1FF2  # write, remove file/dir, make char/dir/reg/sock/fifo/block/sym (ABI 1)
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_SCOPE_SIGNAL = 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall(*args) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def landlock_abi() -> int:
    """The Landlock version this kernel offers, 0 if none."""
    if not sys.platform.startswith("linux") or os.uname().machine == "alpha":
        return 0
    try:
        return max(0, _syscall(_LANDLOCK_CREATE_RULESET, None, 0, 1))  # 1: ask for the version
    except (OSError, AttributeError):
        return 0


def confine(writable: Path) -> int:
    """From now on this process and its children may create, change or delete files only beneath
    `writable` (and write to /dev/null), and, from ABI 6, signal only processes they started.
    Returns the ABI used; 0 where the kernel has no Landlock and nothing is confined."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    fs = _FS_CHANGES | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, 0, _SCOPE_SIGNAL if abi >= 6 else 0)
    ruleset = _syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        return 0
    try:
        for path, allowed in ((writable, fs), (os.devnull, _FS_WRITE_FILE | (fs & _FS_TRUNCATE))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed, fd)
                if _syscall(_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) < 0:  # 1: path beneath
                    return 0
            finally:
                os.close(fd)
        ctypes.CDLL(None).prctl(38, *map(ctypes.c_ulong, (1, 0, 0, 0)))  # PR_SET_NO_NEW_PRIVS: Landlock needs it
        return abi if _syscall(_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0 else 0
    finally:
        os.close(ruleset)


# --- one notebook --------------------------------------------------------------------------

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
        return {"cell": number, "type": type(error).__name__, "message": safe_str(error)[:300]}


def _isolate(out: Path) -> None:
    """Cut the notebook's process off from the grader and the student's files before any of its
    code runs: its own scratch folder (also for temporary files), no stdin, no output (nobody
    reads it, and a cell that prints forever must not fill the disk), bounded memory and file
    sizes and, where Linux has Landlock, no changes outside `out` and no signals to other processes."""
    scratch = out / "scratch"
    scratch.mkdir()
    os.chdir(scratch)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)  # torch's import already asked for /tmp
    null_in, null_out = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_in, 0)
    os.dup2(null_out, 1)
    os.dup2(null_out, 2)
    for limit, value in ((resource.RLIMIT_AS, MEMORY_LIMIT_BYTES), (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES),
                         (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails, rather than killing
    confine(out)


def _probe_groups(key: str, names) -> list[list]:
    """Checks that share a probe and its cases, in order. Each group's probe runs once, so a
    hang in the student's code costs one check timeout, not one per check that reads it."""
    groups: dict[tuple, list] = {}
    for check in checks_of(key):
        if check.name in names:
            groups.setdefault((check.probe, check.task, repr(check.all_cases)), []).append(check)
    return list(groups.values())


def run_notebook(job: dict, spec: dict, out: Path) -> None:
    groups = _probe_groups(spec["key"], spec["checks"])  # before any student code can patch the checks
    _isolate(out)
    namespace = {"__name__": "__main__", "__builtins__": builtins, "display": _ignore}
    errors = []
    for number, source in spec["cells"]:
        _write_json(out / "progress.json", {"cell": number})  # where it was, should the process die
        if error := run_cell(number, source, namespace, job["cell_timeout"]):
            errors.append(error)
    _write_json(out / "progress.json", {"cell": None})
    _write_json(out / "cells.json", errors)
    for group in groups:
        _run_probe_forked(group, namespace, out, job["check_timeout"])


def _run_probe_forked(group: list, namespace: dict, out: Path, timeout: float) -> None:
    paths = [out / f"{check.name}.pt" for check in group]
    pid = _fork()
    if pid == 0:
        try:
            confine(out)  # a nested domain: a graded function cannot signal the notebook's process
            os._exit = posix._exit = _student_exit  # an exit in a graded function becomes a located error
            outcomes = collect(group[0], namespace, group[0].all_cases)
            for path in paths:
                _save_outcomes(path, outcomes)
        finally:
            _exit(0)
    how, code = _wait(pid, _monotonic() + timeout)
    if how == "timeout":
        message = f"still running after {timeout:g} s: is there an endless loop?"
    elif how == "signal":
        message = f"the process running it was killed by signal {code} (out of memory? a crash?)"
    else:
        message = f"the process running it ended (exit code {code}) before returning a result"
    for path in paths:
        if not path.exists():
            _save_outcomes(path, [{"status": "timeout" if how == "timeout" else "crashed", "message": message}])


# --- the sandbox's own process -------------------------------------------------------------

def main(outdir: str) -> None:
    torch.set_num_threads(1)  # small tensors, and forking after a thread pool exists is unsafe
    count_flops(lambda: torch.ones(1, 1) @ torch.ones(1, 1))  # its first use costs seconds: pay once
    import matplotlib.pyplot  # noqa: F401  the notebooks plot; importing it takes seconds: pay once
    line = sys.stdin.readline()
    if not line.strip():
        return
    job = json.loads(line)
    pending, running, statuses = list(job["notebooks"]), {}, {}
    while pending or running:
        while pending and len(running) < job["parallel"]:
            spec = pending.pop(0)
            out = Path(outdir) / spec["id"]
            out.mkdir(parents=True, exist_ok=True)
            probe_time = len(_probe_groups(spec["key"], spec["checks"])) * (job["check_timeout"] + 1)
            pid = _fork()
            if pid == 0:
                code = 1  # the sandbox's own failure, told apart from a student's os._exit(0)
                try:
                    run_notebook(job, spec, out)
                    code = 0
                finally:
                    _exit(code)
            running[pid] = (spec["id"], out, _monotonic() + job["notebook_timeout"], probe_time)
        for pid, (job_id, out, deadline, probe_time) in list(running.items()):
            # its cells get notebook_timeout; once they are done, each probe gets check_timeout
            if ended := _reap(pid, deadline + (probe_time if (out / "cells.json").exists() else 0)):
                statuses[job_id] = {"how": ended[0], "code": ended[1]}
                _write_json(Path(outdir) / "status.json", statuses)
                del running[pid]
        _sleep(0.002)


if __name__ == "__main__":
    main(sys.argv[1])
    _exit(0)  # skip interpreter finalization: with torch loaded it takes a second
