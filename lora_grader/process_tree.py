"""The sandbox's watch over the processes below it: how a child ended, every process it can see,
the tree under a notebook, the bounds on memory and disk a notebook's processes share, and
killing what a notebook leaves behind (this process is the subreaper of all of them).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

LIMITS = {
    "address_space": 8 * 2**30,  # per process (RLIMIT_AS)
    "file_size": 64 * 2**20,  # per file (RLIMIT_FSIZE): enough for any exercise, not a full disk
    "memory": 4 * 2**30,  # resident memory of all of a notebook's processes together
    "disk": 256 * 2**20,  # everything a notebook writes into its folder, together
    "files": 10_000,  # files and folders it creates there
    "forks": 64,  # processes a notebook's code may start, probes included
}

# Bound before any student code runs, so that patching `os` or `time` cannot disarm the sandbox.
_kill, _waitpid, _monotonic = os.kill, os.waitpid, time.monotonic


def status(pid: int, deadline: float) -> tuple[str, int] | None:
    """How a child ended ('exited'|'signal'|'timeout', code), killing it past the deadline;
    None while it still runs."""
    done, how = _waitpid(pid, os.WNOHANG)
    if done:
        if os.WIFSIGNALED(how):
            return "signal", os.WTERMSIG(how)
        return "exited", os.WEXITSTATUS(how)
    if _monotonic() > deadline:
        _kill(pid, signal.SIGKILL)
        _waitpid(pid, 0)
        return "timeout", 0
    return None


def processes_now() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, resident bytes)} of every process this user can see (Linux /proc)."""
    found = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc") if os.path.isdir("/proc/self") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            found[int(entry)] = (int(fields[1]), int(fields[21]) * page)
        except (OSError, IndexError, ValueError):
            continue
    return found


def descendants(root: int, processes: dict) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _disk_use(folder: Path, most_files: int) -> tuple[int, int]:
    """Bytes on disk and entries beneath `folder` (counting stops past `most_files`)."""
    size = count = 0
    stack = [str(folder)]
    while stack and count <= most_files:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            count += 1
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            size += info.st_blocks * 512 if hasattr(info, "st_blocks") else info.st_size
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return size, count


def _proportional_memory(pid: int, resident: int) -> int:
    """Memory a process uses, its share of pages shared with others included once (Linux's PSS);
    forked processes share torch's pages, which resident sizes would count again for each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resident


def over_limit(pid: int, folder: Path, limits: dict, processes: dict) -> str:
    memory = sum(_proportional_memory(member, processes[member][1])
                 for member in descendants(pid, processes) if member in processes)
    if memory > limits["memory"]:
        return f"its processes used more than {limits['memory'] / 2**30:g} GB of memory together"
    size, count = _disk_use(folder, limits["files"])
    if size > limits["disk"]:
        return f"it wrote more than {limits['disk'] // 2**20} MB of files"
    if count > limits["files"]:
        return f"it created more than {limits['files']:,} files"
    return ""


def kill_tree(pid: int, processes: dict) -> None:
    for member in descendants(pid, processes):
        try:
            _kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def sweep_orphans(running: dict) -> None:
    """Kill and reap whatever a notebook left behind: as subreaper, this process inherits every
    process whose parent died, whether it called setsid() or forked twice."""
    me = os.getpid()
    processes = processes_now()
    for pid, (parent, _) in processes.items():
        if parent == me and pid not in running:
            kill_tree(pid, processes)
            try:
                _waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def kill_leftovers(session: int, mark: bytes) -> None:
    """Kill what a sandbox that died left running: its notebooks' processes, orphaned, would go
    on (a hung one for ever) beside the sandbox that replaces it. They are the processes of its
    session, and those that left the session (setsid) but carry the run's mark in their
    environment. Called by the grader before it reaps the sandbox: until then the session's
    number cannot be reused by an unrelated process."""
    if not os.path.isdir("/proc/self"):
        return
    me = os.getpid()
    for _ in range(5):  # what was forking while it was killed
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
                if fields[0] == b"Z":  # dead already (the sandbox itself, until it is reaped)
                    continue
                if int(fields[3]) == session:
                    found.append(int(entry))
                    continue
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if mark in environ.read().split(b"\0"):
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
        for pid in found:
            try:
                _kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not found:
            return
        time.sleep(0.02)
