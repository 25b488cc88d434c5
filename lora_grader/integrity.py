"""The integrity report: code in a student's cells that reaches for the grader or the sandbox.

A flag is for a person to read, not a verdict: `gc` or `ctypes` can appear in honest code. It
lists what the isolated grader defends against (and what nbgrader, which runs its tests in the
student's own kernel, does not), so that an instructor can look where a deliberate attempt to
read or patch the grader would have to start.
"""
from __future__ import annotations

import ast
import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Flag:
    cell: int  # code cell number, as in the notebook
    line: int
    what: str

    def __str__(self) -> str:
        return f"code cell {self.cell}, line {self.line}: {self.what}"


_MODULES = {
    "lora_grader": "imports the grader's own package",
    "gc": "imports gc (can walk every object in memory)",
    "ctypes": "imports ctypes (raw memory and system calls)",
    "inspect": "imports inspect (frames of running code)",
    "multiprocessing": "imports multiprocessing (starts processes)",
    "subprocess": "imports subprocess (runs other programs)",
    "socket": "imports socket (network)",
    "fcntl": "imports fcntl (raw file descriptors)",
    "importlib": "imports importlib (imports by computed name)",
    "base64": "imports base64 (text that can hide code)",
    "codecs": "imports codecs (text that can hide code)",
    "marshal": "imports marshal (code objects from bytes)",
}
_ATTRIBUTES = {
    "modules": "reads sys.modules",
    "_getframe": "reads frames (sys._getframe)",
    "_current_frames": "reads frames (sys._current_frames)",
    "currentframe": "reads frames (inspect.currentframe)",
    "stack": None,  # only as inspect.stack, below
    "f_back": "walks up the call stack (f_back)",
    "f_locals": "reads another frame's variables (f_locals)",
    "f_globals": "reads another frame's globals (f_globals)",
    "tb_frame": "reads a traceback's frame",
    "gi_frame": "reads a generator's frame (gi_frame)",
    "cr_frame": "reads a coroutine's frame (cr_frame)",
    "ag_frame": "reads an async generator's frame (ag_frame)",
    "fromhex": "decodes hex (bytes.fromhex): text that can hide code",
    "__globals__": "reads a function's globals",
    "__closure__": "reads a function's closure",
    "fork": "starts a process (fork)",
    "forkpty": "starts a process (forkpty)",
    "setsid": "detaches a process (setsid)",
    "setpgid": "detaches a process (setpgid)",
    "settrace": "installs a tracer",
    "setprofile": "installs a profiler hook",
    "addaudithook": "installs an audit hook",
    "write": None,  # only as os.write, below
    "dup2": "duplicates file descriptors (dup2)",
    "fdopen": "opens a raw file descriptor",
    "system": None,  # only as os.system, below
    "prlimit": "changes a process's limits (prlimit)",
    "setpriority": "changes a process's priority (setpriority)",
    "sched_setaffinity": "pins a process to CPUs (sched_setaffinity)",
    "sched_setscheduler": "changes a process's scheduling (sched_setscheduler)",
    "pidfd_open": "takes a handle on another process (pidfd_open)",
    "syscall": "makes raw system calls (syscall)",
}
_QUALIFIED = {("inspect", "stack"): "reads frames (inspect.stack)", ("os", "write"): "writes to a raw file descriptor (os.write)",
              ("os", "system"): "runs a shell command (os.system)", ("os", "kill"): "sends a signal (os.kill)",
              ("os", "killpg"): "sends a signal to a process group (os.killpg)"}
_STRINGS = [
    (re.compile(r"lora_grader"), "names the grader's own package"),
    (re.compile(r"/proc\b"), "reads /proc (processes' memory and files)"),
    (re.compile(r"(^|[/\\])\.\.([/\\]|$)"), "a path that leaves its folder (../)"),
    (re.compile(r"/dev/fd|/dev/shm"), "a path to raw file descriptors or shared memory"),
]
_BUILTINS = {"__import__": "imports by computed name (__import__)", "exec": None, "eval": None,
             "setattr": None, "globals": None}


def scan(cells) -> list[Flag]:
    """Flags for the (code cell number, source) pairs the grader runs, in order, one per finding."""
    flags, imported = [], {"torch", "nn", "F", "np", "math", "os", "sys"}
    for number, source in cells:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            for what in _node_flags(node, imported):
                flags.append(Flag(number, getattr(node, "lineno", 0), what))
    return _unique(flags)


def _node_flags(node, imported: set[str]):
    if isinstance(node, ast.Import):
        for alias in node.names:
            imported.add((alias.asname or alias.name).split(".")[0])
            yield from _module_flags(alias.name)
    elif isinstance(node, ast.ImportFrom) and node.module:
        for alias in node.names:
            imported.add(alias.asname or alias.name)
        yield from _module_flags(node.module)
        for alias in node.names:
            if alias.name in _ATTRIBUTES and _ATTRIBUTES[alias.name]:
                yield _ATTRIBUTES[alias.name]
    elif isinstance(node, ast.Attribute):
        qualified = (node.value.id, node.attr) if isinstance(node.value, ast.Name) else None
        if qualified in _QUALIFIED:
            yield _QUALIFIED[qualified]
        elif _ATTRIBUTES.get(node.attr):
            yield _ATTRIBUTES[node.attr]
        if isinstance(node.ctx, (ast.Store, ast.Del)) and _root_name(node) in imported:
            yield f"assigns to an attribute of an imported module ({ast.unparse(node)[:60]})"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "__import__":
            yield _BUILTINS["__import__"]
        elif node.func.id in ("setattr", "delattr") and node.args and _root_name(node.args[0]) in imported:
            yield f"{node.func.id} on an imported module ({ast.unparse(node.args[0])[:60]})"
        elif node.func.id in _RUNS_CODE and node.args and not _is_literal(node.args[0]):
            # code written out in the cell is scanned like any other; code built at run time is not
            yield f"runs code built at run time ({node.func.id} of {ast.unparse(node.args[0])[:40]})"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        for pattern, what in _STRINGS:
            if pattern.search(node.value):
                yield what


_RUNS_CODE = ("exec", "eval", "compile")


def _is_literal(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _module_flags(name: str):
    top = name.split(".")[0]
    if top in _MODULES:
        yield _MODULES[top]


def _root_name(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _unique(flags: list[Flag]) -> list[Flag]:
    seen, kept = set(), []
    for flag in flags:
        if (flag.cell, flag.what) not in seen:
            seen.add((flag.cell, flag.what))
            kept.append(flag)
    return kept
