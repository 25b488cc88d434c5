"""Guards inside a notebook's own process, set before any student code runs.

The kernel (confinement.py) decides what the process may touch; these decide what Python hands
out: the grader's package cannot be imported, its frames and objects cannot be looked up through
`gc`, `sys._getframe`, tracebacks, tracers or `ctypes`, no other program runs, no socket opens,
forks are counted, and whatever the student patched in torch or the grader is put back before
the checks run. An audit hook (PEP 578) cannot be removed from Python once added.

A student who sets out to read the grader's memory may still find a way: these guards stop the
direct routes and record each attempt, and the integrity report (integrity.py) flags the code.
"""
from __future__ import annotations

import mmap
import os
import struct
import sys
import sysconfig
import types

GRADER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_GUARD_FILE = os.path.abspath(__file__)
_LIBRARY_DIRS = tuple({os.path.abspath(sysconfig.get_paths()[name]) + os.sep
                       for name in ("stdlib", "platstdlib", "purelib", "platlib")})
# The standard library's own wrappers of the audited calls: the code that called them decides.
_WRAPPERS = tuple(os.path.join(os.path.abspath(sysconfig.get_paths()["stdlib"]), name)
                  for name in ("ctypes" + os.sep, "socket.py", "subprocess.py", "os.py", "pty.py", "pathlib.py",
                               "shutil.py", "multiprocessing" + os.sep))
REFUSED_IMPORT = ("the autograder's own package (lora_grader) cannot be imported while your "
                  "notebook is graded: write the answer in your own cells")

# Modules whose attributes a student might patch to make a check lie; restored before probing.
_PATCHABLE = ("torch", "torch.nn", "torch.nn.modules", "torch.nn.functional", "torch.nn.parameter",
              "torch.functional", "torch._tensor", "torch.testing", "torch.utils.flop_counter",
              "torch.utils._python_dispatch", "torch.overrides", "builtins", "math", "operator",
              "functools", "lora_grader")

_REFUSED_EVENTS = {
    "gc.get_objects": "looking through every object in memory (gc.get_objects)",
    "gc.get_referrers": "looking up who refers to an object (gc.get_referrers)",
    "gc.get_referents": "looking up what an object refers to (gc.get_referents)",
    "sys._current_frames": "reading other threads' frames",
    "sys.settrace": "tracing (sys.settrace)",
    "sys.setprofile": "profiling hooks (sys.setprofile)",
    "os.exec": "running another program",
    "os.posix_spawn": "running another program",
    "os.spawn": "running another program",
    "os.system": "running a shell command",
    "subprocess.Popen": "running another program",
    "socket.__new__": "opening a network socket",
    "os.chmod": "changing a file's mode",
    "os.chown": "changing a file's owner",
    "os.utime": "changing a file's times",
    "os.setxattr": "changing a file's extended attributes",
    "os.removexattr": "changing a file's extended attributes",
    "os.chflags": "changing a file's flags",
    "os.lchflags": "changing a file's flags",
}


class Refused(PermissionError):
    """What the sandbox does not allow graded code to do."""


class _BlockGraderImports:
    """First on sys.meta_path: `lora_grader`, by any spelling of the import, is not found."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "lora_grader" or name.startswith("lora_grader."):
            raise ImportError(REFUSED_IMPORT, name=name)
        return None


def _is_grader_frame(frame) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(GRADER_DIR)


def _kind(frame) -> str:
    filename = frame.f_code.co_filename
    if filename.startswith(GRADER_DIR):
        return "grader"
    if filename.startswith(_LIBRARY_DIRS) or filename.startswith("<frozen "):
        return "library"
    return "student"


def _asked_by_student(frame, through_libraries: bool = True) -> bool:
    """Whether the code behind an audited action is the student's: the nearest caller that is
    not a library (the standard library, torch, ...) decides, so a student's frame anywhere
    below a chain of library calls counts (ctypes handed to torch's tree_map is still the
    student's ctypes), while the grader's probes may read tracebacks to point at the student's
    line. Without `through_libraries`, only the immediate caller counts: for loading a shared
    library, which packages imported by a student's cell do for their own ends."""
    while frame is not None and (frame.f_code.co_filename == _GUARD_FILE
                                 or frame.f_code.co_filename.startswith(_WRAPPERS)):
        frame = frame.f_back
    while frame is not None:
        kind = _kind(frame)
        if kind != "library" or not through_libraries:
            return kind == "student"
        frame = frame.f_back
    return False


class Guards:
    """Installed once per notebook process, before its first cell; `attempts` lists what was refused."""

    def __init__(self, fork_limit: int, protected_pids: set[int]) -> None:
        self.attempts: list[str] = []
        self._fork_limit = fork_limit
        self._forks = mmap.mmap(-1, 8)  # shared with every process forked from here
        self._protected = frozenset(protected_pids)
        self._busy = False
        self._snapshot = _Snapshot()

    def install(self, namespace_module: types.ModuleType) -> None:
        """Hide the grader's modules, make the student's namespace `__main__`, add the hook."""
        for name in [name for name in sys.modules if name.split(".")[0] == "lora_grader"]:
            del sys.modules[name]
        sys.modules["__main__"] = namespace_module
        sys.meta_path.insert(0, _BlockGraderImports)
        sys.path[:] = [entry for entry in sys.path if entry and not os.path.isdir(os.path.join(entry, "lora_grader"))]
        sys.addaudithook(self._hook)

    def note_refused_forks(self) -> None:
        """Forks refused in processes that are gone count too: the counter is shared."""
        what = f"starting more than {self._fork_limit} processes"
        if struct.unpack_from("q", self._forks)[0] > self._fork_limit and what not in self.attempts:
            self.attempts.append(what)

    def restore(self) -> list[str]:
        """Put back what student code patched in torch, builtins and the grader; what it was."""
        return self._snapshot.restore()

    def _refuse(self, what: str) -> None:
        if len(self.attempts) < 50:
            self.attempts.append(what)
        raise Refused(f"the autograder's sandbox does not allow {what}")

    def _hook(self, event: str, args: tuple) -> None:
        if self._busy:  # events raised while the hook itself looks at a frame
            return
        self._busy = True
        try:
            self._check(event, args)
        finally:
            self._busy = False

    def _check(self, event: str, args: tuple) -> None:
        if event in ("os.fork", "os.forkpty"):
            if not _asked_by_student(sys._getframe(2), through_libraries=True):
                return  # the probes
            count = struct.unpack_from("q", self._forks)[0] + 1
            struct.pack_into("q", self._forks, 0, count)
            if count > self._fork_limit:
                self._refuse(f"starting more than {self._fork_limit} processes")
        elif (what := _refusal(event, args, self._protected)) and _asked_by_student(
                sys._getframe(2), through_libraries=event != "ctypes.dlopen"):
            self._refuse(what)


def _refusal(event: str, args: tuple, protected: frozenset) -> str:
    """What an audited action would do that graded code may not, or ''."""
    if event in _REFUSED_EVENTS:
        return _REFUSED_EVENTS[event]
    if event.startswith("ctypes."):
        return "ctypes (reading or calling raw memory)"
    if event == "sys._getframe" and _is_grader_frame(args[0]):
        return "looking at the grader's frames (sys._getframe)"
    if event == "object.__getattr__" and args[1] == "tb_frame" and _is_grader_frame(getattr(args[0], "tb_frame", None)):
        return "looking at the grader's frames (a traceback's tb_frame)"
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path.startswith("/proc/") and path != "/proc/cpuinfo":
            return "reading /proc (other processes' memory and files)"
    if event in ("os.kill", "os.killpg") and abs(args[0]) in protected:
        return "signalling the grader's processes"
    return ""


_MISSING = object()
# Attributes Python itself adds to a class on first use: copy and pickle cache a class's slot
# names in __slotnames__ (copy.deepcopy of a tensor does it to torch.Tensor). Not a patch.
_CACHES = {"__slotnames__"}


class _Snapshot:
    """The attributes of the patchable modules and of their classes, as they were before."""

    def __init__(self) -> None:
        modules = [module for name, module in list(sys.modules.items())
                   if isinstance(module, types.ModuleType) and (name in _PATCHABLE or name.startswith("lora_grader.")
                                                                or name.startswith("torch.nn.modules."))]
        self.modules = {module: dict(vars(module)) for module in modules}
        self.classes = {
            value: dict(vars(value))
            for module in modules for value in list(vars(module).values())
            if isinstance(value, type) and getattr(value, "__module__", None) == module.__name__
        }

    def restore(self) -> list[str]:
        undone = []
        for module, saved in self.modules.items():
            current = vars(module)
            for name, value in saved.items():
                if current.get(name, _MISSING) is not value:
                    current[name] = value
                    undone.append(f"{module.__name__}.{name}")
        for cls, saved in self.classes.items():
            current = vars(cls)
            changed = [name for name, value in saved.items() if current.get(name, _MISSING) is not value]
            added = [name for name in current if name not in saved and name not in _CACHES]
            for name in changed + added:
                try:
                    if name in saved:
                        setattr(cls, name, saved[name])
                    else:
                        delattr(cls, name)
                    undone.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
                except (AttributeError, TypeError):
                    pass
        return undone
