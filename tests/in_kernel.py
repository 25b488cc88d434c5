"""Grading as nbgrader does, inside the student's kernel: the notebook's cells run in a fresh
namespace and the checks are called in the same process, each notebook in a forked child of
its own (its own session, no terminal, a deadline), so that student code cannot reach the test
run. Forking from a process that has already imported torch makes each child cheap."""
from __future__ import annotations

import os
import pickle
import select
import signal
import tempfile
import time
from pathlib import Path

import torch

from lora_grader.checks.core import count_flops
from lora_grader.notebook import code_cells

# Paid once here, not in every child: FlopCounterMode's first use and matplotlib's import.
count_flops(lambda: torch.ones(2, 2) @ torch.ones(2, 2))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401


def run_cells(path: Path) -> dict:
    """The namespace left by running the notebook's graded cells in order, as a kernel would;
    a cell that raises is left behind, as nbgrader leaves it, and the next one runs."""
    namespace = {"__name__": "__main__"}
    for number, source in code_cells(path):
        try:
            exec(compile(source, f"<cell {number}>", "exec"), namespace)
        except BaseException:  # noqa: BLE001  a student's SystemExit too
            pass
    return namespace


def forked(function, *args, timeout: float = 120.0):
    """function(*args) in a forked child in a session of its own, with no terminal and a
    temporary working folder; its picklable result, or None if the child died or ran out of time."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setsid()
            os.chdir(tempfile.mkdtemp(prefix="in-kernel-"))
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            torch.set_num_threads(1)
            payload = pickle.dumps(function(*args))
            with os.fdopen(write, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)
    os.close(write)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([read], [], [], left)[0]:
                break
            chunk = os.read(read, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        try:
            os.killpg(pid, signal.SIGKILL)  # the child and whatever it started
        except (ProcessLookupError, PermissionError):
            pass
        os.waitpid(pid, 0)
    try:
        return pickle.loads(b"".join(chunks)) if chunks else None
    except Exception:  # noqa: BLE001  a child cut off mid-write
        return None
