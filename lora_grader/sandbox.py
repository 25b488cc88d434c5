"""The sandbox: where student code runs, away from the grader.

`python -m lora_grader.sandbox fork|spawn` imports torch and the checks, then reads one job (a JSON line)
from stdin: notebooks to run, each with an id, at most `parallel` at a time. Importing first lets
the grader start the sandbox before it knows what to grade. Each notebook runs in a process forked
from here, and each probe in a process forked from the notebook's, so an exit, a crash or a hang
costs only the checks (or notebook) it happens in.

Results come back on a pipe per notebook, as token-checked frames (channel.py); this process
writes one record per notebook to stdout, for the grader. No file carries a result. This process
runs no student code: it watches each notebook's memory (all its processes together), the disk it
fills and its time, kills the notebook past a bound, and, as the subreaper of everything started
below it, kills every process a notebook left behind, however it detached itself.

What runs inside a notebook's process is in notebook_process.py; the watch over the process tree
and its limits in process_tree.py.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from lora_grader import channel, timeline
from lora_grader.channel import CELLS, OUTCOMES, PROBE_STARTED, PROGRESS
from lora_grader.checks import NOTEBOOKS, probe_groups
from lora_grader.checks.core import count_flops_and_largest
from lora_grader.checks.physical import zero_linear
from lora_grader.confinement import PR_SET_CHILD_SUBREAPER, landlock_abi, prctl
from lora_grader.notebook_process import run_notebook
from lora_grader.process_tree import LIMITS, kill_tree, over_limit, processes_now, status, sweep_orphans

timeline.mark("sandbox: torch and the checks imported")

__all__ = ["landlock_abi", "LIMITS"]

_WATCH_EVERY = 0.2  # seconds between looks at each notebook's memory and disk

# Bound before any student code runs, so that patching `os` cannot disarm the sandbox.
_fork, _exit = os.fork, os._exit
_monotonic, _sleep = time.monotonic, time.sleep
_save = torch.save


class _Notebook:
    """A notebook as the sandbox watches it: its process (in spawn mode, each worker in turn)."""

    def __init__(self, spec: dict, outdir: Path, job: dict) -> None:
        self.id, self.spec, self.job = spec["id"], spec, job
        self.out = outdir / f"notebook-{secrets.token_hex(8)}"
        self.out.mkdir()
        self.token = secrets.token_bytes(channel.TOKEN_BYTES)
        self.groups = len(probe_groups(spec["key"]))
        self.frames: list[tuple[int, bytes]] = []
        self.tampered = ""
        self.limit = ""
        self.lost: dict[int, tuple[str, int]] = {}  # spawn mode: probes whose worker crashed or hung
        self.limits = {**LIMITS, **job.get("limits", {})}
        self.first_group = 0
        self.workers = 0

    def begin(self, pid: int, fd: int, worker=None) -> None:
        """A new process for this notebook: its cells run (again), then probes from first_group."""
        self.pid, self.fd, self.worker = pid, fd, worker
        self.reader = channel.FrameReader(self.token)
        self.cells_done = False
        self.probing = None  # spawn mode: the probe running now
        self.deadline = _monotonic() + self.job["notebook_timeout"]
        self.workers += 1

    def receive(self, data: bytes) -> None:
        if self.tampered:
            return
        before = len(self.reader.frames)
        try:
            self.reader.feed(data)
        except channel.Forged as forged:
            self.tampered = str(forged)
            return
        check_timeout = self.job["check_timeout"]
        for frame in self.reader.frames[before:]:
            kind = frame[0]
            if kind == CELLS and not self.cells_done:
                self.cells_done = True
                if self.job["mode"] == "spawn":
                    self.deadline = _monotonic() + check_timeout + 1
                else:  # its cells had notebook_timeout; now each probe check_timeout
                    self.deadline += (self.groups - self.first_group) * (check_timeout + 1)
                if self.workers > 1:
                    continue  # the first worker's report on the cells stands
            elif kind != PROGRESS and not self.cells_done:
                self.tampered = "a result arrived while the notebook's own cells were still running"
                return
            elif kind == PROBE_STARTED:
                self.probing = channel.unpack_int(frame[1])
                self.deadline = _monotonic() + check_timeout
            elif kind == OUTCOMES and self.job["mode"] == "spawn":
                self.probing = None
                self.deadline = _monotonic() + check_timeout + 1
            self.frames.append(frame)

    def go_on_after(self, ended: tuple[str, int]) -> bool:
        """Spawn mode: after a worker crashed or hung in a probe, whether a fresh one should run the
        probes after it (every probe gets its verdict, as when each runs in its own process)."""
        if self.job["mode"] != "spawn" or self.tampered or self.limit or not self.cells_done:
            return False
        if not isinstance(self.probing, int) or not 0 <= self.probing < self.groups:
            return False
        self.lost[self.probing] = ended
        self.first_group = self.probing + 1
        return self.first_group < self.groups


def _start(notebook: _Notebook, open_fds: list[int]) -> None:
    job = notebook.job
    if job["mode"] == "spawn":
        worker = subprocess.Popen([sys.executable, "-m", "lora_grader.sandbox", "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        request = {"job": job, "spec": notebook.spec, "out": str(notebook.out), "token": notebook.token.hex(),
                   "first_group": notebook.first_group}
        threading.Thread(target=_send_request, args=(worker.stdin, request), daemon=True).start()
        os.set_blocking(worker.stdout.fileno(), False)
        notebook.begin(worker.pid, worker.stdout.fileno(), worker)
        return
    read_end, write_end = os.pipe()
    pid = _fork()
    if pid == 0:
        code = 1  # the sandbox's own failure, told apart from a student's os._exit(0)
        try:
            for fd in open_fds + [read_end]:
                os.close(fd)
            run_notebook(job, notebook.spec, notebook.out, write_end, notebook.token)
            code = 0
        finally:
            _exit(code)
    os.close(write_end)
    os.set_blocking(read_end, False)
    notebook.begin(pid, read_end)


def _send_request(stdin, request: dict) -> None:
    try:
        stdin.write(json.dumps(request).encode() + b"\n")
        stdin.close()
    except OSError:
        pass  # the worker died before reading it: its status says how


def worker() -> None:
    """Spawn mode: one notebook in this fresh process, from a request on stdin."""
    _warm_up()
    request = json.loads(sys.stdin.readline())
    fd = os.dup(1)  # the results channel; stdout itself goes to /dev/null before student code runs
    run_notebook(request["job"], request["spec"], Path(request["out"]), fd, bytes.fromhex(request["token"]),
                 request["first_group"])


def _drain(notebook: _Notebook) -> None:
    while True:
        try:
            data = os.read(notebook.fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            return
        notebook.receive(data)


def _end_process(notebook: _Notebook) -> None:
    _drain(notebook)
    if notebook.worker is not None:
        notebook.worker.stdout.close()
    else:
        os.close(notebook.fd)
    try:
        os.killpg(notebook.pid, signal.SIGKILL)  # what it started and left in its group
    except (ProcessLookupError, PermissionError):
        pass


def _finish(notebook: _Notebook, ended: tuple[str, int]) -> None:
    timeline.mark(f"sandbox: notebook {notebook.spec['key']} finished")
    how, code = ended
    header = {"id": notebook.id, "how": how, "code": code, "tampered": notebook.tampered, "limit": notebook.limit,
              "lost": {str(index): list(lost) for index, lost in notebook.lost.items()}}
    progress = [frame for frame in notebook.frames if frame[0] == PROGRESS][-1:]
    channel.write_record(sys.stdout.buffer, header,
                         progress + [frame for frame in notebook.frames if frame[0] != PROGRESS])


def _warm_up() -> None:
    torch.set_num_threads(1)  # small tensors, and forking after a thread pool exists is unsafe
    for key in NOTEBOOKS:
        probe_groups(key)  # every check module, imported before student code could shadow one
    # The first use of the measuring tools imports parts of torch (sympy for shapes, the
    # machinery of tensor subclasses, serialization): a second or more. Pay it once, here, on
    # sizes too small to matter, rather than in every probe forked from a notebook.
    layer = zero_linear(2, 3, seed=0)
    count_flops_and_largest(lambda: _save(layer(torch.ones(1, 2)).detach(), io.BytesIO()))
    timeline.mark("sandbox: warmed up")


def main() -> None:
    if sys.argv[1:] == ["fork"]:
        _warm_up()  # once, for every notebook forked from here, while the grader still collects
    line = sys.stdin.readline()
    job = json.loads(line) if line.strip() else None
    timeline.mark("sandbox: job received")
    subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1)
    if job is None:
        return
    outdir = Path(tempfile.mkdtemp(prefix="notebooks-", dir=os.getcwd()))
    pending, running = list(job["notebooks"]), {}
    last_watch = 0.0
    while pending or running:
        while pending and len(running) < job["parallel"]:
            notebook = _Notebook(pending.pop(0), outdir, job)
            # Said before the fork: should the notebook kill this process at once, the grader knows it ran.
            channel.write_started(sys.stdout.buffer, notebook.id)
            _start(notebook, [n.fd for n in running.values()])
            running[notebook.pid] = notebook
            timeline.mark(f"sandbox: notebook {notebook.spec['key']} started")
        ready = select.select([n.fd for n in running.values()], [], [], 0.01)[0]
        for notebook in list(running.values()):
            if notebook.fd in ready:
                _drain(notebook)
        watch = _monotonic() - last_watch > _WATCH_EVERY
        processes = processes_now() if watch else {}
        for pid, notebook in list(running.items()):
            if watch and not notebook.limit and (reason := over_limit(pid, notebook.out, notebook.limits, processes)):
                notebook.limit = reason
                kill_tree(pid, processes)
            deadline = notebook.deadline if not notebook.tampered else 0.0
            if ended := status(pid, deadline):
                _end_process(notebook)
                del running[pid]
                if notebook.go_on_after(ended):
                    _start(notebook, [n.fd for n in running.values()])
                    running[notebook.pid] = notebook
                else:
                    _finish(notebook, ended)
        if watch:
            last_watch = _monotonic()
            if subreaper:
                sweep_orphans(running)
    if subreaper:
        for _ in range(50):  # until nothing is left
            sweep_orphans({})
            if not any(parent == os.getpid() for parent, _ in processes_now().values()):
                break
            _sleep(0.02)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
    _exit(0)  # skip interpreter finalization: with torch loaded it takes a second
