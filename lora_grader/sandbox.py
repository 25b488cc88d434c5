"""The sandbox: where student code runs, away from the grader.

`python -m lora_grader.sandbox OUTDIR` imports torch and the checks, then reads one job (a JSON
line) from stdin: notebooks to run, each with an id, at most `parallel` at a time. Importing first lets the grader start the sandbox before it knows what to
grade. Each notebook runs in a process forked from here, and each check's probe in a process
forked from the notebook's, so an exit, a crash or a hang costs only the check (or notebook)
it happens in. Everything comes back as files in OUTDIR: `<id>/<check>.pt` (plain data, read
with `torch.load(weights_only=True)`), `<id>/cells.json` (cells that raised) and
`<id>/status.json` (how the notebook's process ended).
"""
from __future__ import annotations

import builtins
import json
import linecache
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from lora_grader.checks import checks_of
from lora_grader.checks.core import collect, count_flops

MEMORY_LIMIT_BYTES = 8 * 2**30

# Bound before any student code runs, so that patching `os` cannot disarm the sandbox.
_fork, _exit, _kill, _waitpid, _getpid = os.fork, os._exit, os.kill, os.waitpid, os.getpid
_monotonic, _sleep = time.monotonic, time.sleep
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


def _on_alarm(signum, frame):
    raise CellTimeout()


def run_cell(number: int, source: str, namespace: dict, timeout: float) -> dict | None:
    """Execute one cell; a description of the error it raised, or None."""
    filename = f"<cell {number}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        exec(compile(source, filename, "exec"), namespace)
        return None
    except CellTimeout:
        return {"cell": number, "type": "Timeout", "message": f"still running after {timeout:g} s"}
    except SyntaxError as error:
        return {"cell": number, "type": "SyntaxError", "message": f"{error.msg} (line {error.lineno})"}
    except BaseException as error:
        return {"cell": number, "type": type(error).__name__, "message": str(error)[:300]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _isolate(out: Path) -> None:
    """Cut the notebook's process off from the grader: own folder, no stdin, output to a file."""
    os.chdir(tempfile.mkdtemp(prefix="lora-notebook-"))
    log = os.open(out / "output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ValueError, OSError):
        pass
    os._exit = _student_exit  # a student's os._exit becomes an ordinary, catchable exit


def run_notebook(job: dict, spec: dict, out: Path) -> None:
    _isolate(out)
    namespace = {"__name__": "__main__", "__builtins__": builtins, "display": _ignore}
    errors = [
        error
        for number, source in spec["cells"]
        if (error := run_cell(number, source, namespace, job["cell_timeout"]))
    ]
    _write_json(out / "cells.json", errors)
    sys.stdout.flush()
    for check in checks_of(spec["key"]):
        if check.name in spec["checks"]:
            _run_check_forked(check, namespace, out / f"{check.name}.pt", job["check_timeout"])


def _run_check_forked(check, namespace: dict, path: Path, timeout: float) -> None:
    pid = _fork()
    if pid == 0:
        try:
            _save_outcomes(path, collect(check, namespace, check.all_cases))
        finally:
            _exit(0)
    how, code = _wait(pid, _monotonic() + timeout)
    if not path.exists():
        if how == "timeout":
            message = f"still running after {timeout:g} s: is there an endless loop?"
        elif how == "signal":
            message = f"the process running it was killed by signal {code} (out of memory? a crash?)"
        else:
            message = f"the process running it ended (exit code {code}) before returning a result"
        _save_outcomes(path, [{"status": "timeout" if how == "timeout" else "crashed", "message": message}])


def main(outdir: str) -> None:
    torch.set_num_threads(1)  # small tensors, and forking after a thread pool exists is unsafe
    count_flops(lambda: torch.ones(1, 1) @ torch.ones(1, 1))  # its first use costs seconds: pay once
    line = sys.stdin.readline()
    if not line.strip():
        return
    job = json.loads(line)
    pending, running = list(job["notebooks"]), {}
    while pending or running:
        while pending and len(running) < job["parallel"]:
            spec = pending.pop(0)
            out = Path(outdir) / spec["id"]
            out.mkdir(parents=True, exist_ok=True)
            pid = _fork()
            if pid == 0:
                try:
                    run_notebook(job, spec, out)
                finally:
                    _exit(0)
            running[pid] = (out, _monotonic() + job["notebook_timeout"])
        for pid, (out, deadline) in list(running.items()):
            if ended := _reap(pid, deadline):
                _write_json(out / "status.json", {"how": ended[0], "code": ended[1]})
                del running[pid]
        _sleep(0.002)


if __name__ == "__main__":
    main(sys.argv[1])
    _exit(0)  # skip interpreter finalization: with torch loaded it takes a second
