"""Hostile and malformed submissions. None may earn a point it should not, crash the run, change
the student's files, or cost more than the notebook (or the check) it is in.

All cases are graded in one sandbox run with short timeouts, each notebook in its own folder next
to a complete copy of the other notebook; two complete notebooks graded after all of them must
keep full marks. Cases that break the file apply to every notebook of the course; the rest are
written against notebooks 01 and 02.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import nbformat
import pytest

from catalogue import ALL, ROOT, complete_submission, unexpected_verdicts
from catalogue.nb02 import lora_linear
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.grading import MODES, Sandbox, Timeouts
from lora_grader.confinement import landlock_abi, seccomp_supported

pytestmark = pytest.mark.slow  # every hostile notebook is graded in a sandbox, in both modes

TIMEOUTS = Timeouts(cell=5.0, check=5.0, notebook=15.0)  # short, with room for a busy 2-core machine
BATCH_TIME_LIMIT = 900  # seconds, per mode: spawn mode starts a fresh Python and torch for each notebook
OTHER = {"01": "02", "02": "01"}
CONFINED_FILES = landlock_abi() >= 1  # without Landlock, student code can reach any file the student can
CONFINED_SIGNALS = landlock_abi() >= 6


def _names(key: str, task: str | None = None) -> tuple[str, ...]:
    return tuple(check.name for check in checks_of(key) if task in (None, check.task))


UPDATE = _names("01", "lora_update")
LAYER = _names("02", "LoRALinear")
FLOPS = _names("02", "lora_flops")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    notebook: str
    build: Callable[[Path], bytes | None]  # the file's bytes (None: no file), given the batch's root
    fails: dict  # check name (or ALL) -> words its message must contain; every other check must pass
    refused: tuple = ()  # words that must appear among what the sandbox refused (integrity report)
    flagged: tuple = ()  # words that must appear among the integrity flags of its code


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _code(source: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}


def _values(root: Path) -> dict:
    """What a cell's source may name: the batch's folder, the repository, the test's listeners."""
    return {"root": root, "repo": ROOT, "port": LISTENERS.get("port", 0), "unix": LISTENERS.get("unix", "")}


def edited(key, answers=None, scratch=(), after="imports", at_end=(), transform=None, release=False) -> Callable:
    """A complete submission (or the untouched release) with solution cells replaced ({grade_id:
    source}), scratch code cells inserted after the cell `after` and appended at the end, then
    `transform`ed."""
    def build(root: Path) -> bytes:
        notebook = json.loads((ROOT / "course" / "lora" / NOTEBOOKS[key].filename).read_text()) if release \
            else complete_submission(key)
        cells = []
        for cell in notebook["cells"]:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if grade_id in (answers or {}):
                cell["source"] = answers[grade_id].format(**_values(root)).strip("\n") + "\n"
            cells.append(cell)
            if grade_id == after:
                cells.extend(_code(source.format(**_values(root))) for source in scratch)
        cells.extend(_code(source.format(**_values(root))) for source in at_end)
        notebook["cells"] = cells
        if transform:
            notebook = transform(notebook)
        return json.dumps(notebook, indent=1).encode() if isinstance(notebook, dict) else notebook
    return build


def raw(data: bytes | None) -> Callable:
    return lambda root: data


FIFO = b"<a named pipe instead of a file>"
SPARSE_65_MB = b"<a 65 MB file>"


def truncated(key) -> Callable:
    return lambda root: (whole := edited(key)(root))[: len(whole) // 2]


def _without_ids_and_outputs(notebook):
    for cell in notebook["cells"]:
        for field in ("id", "outputs", "execution_count"):
            cell.pop(field, None)
    return notebook


def _malformed_metadata(notebook):
    """What hand edits and other tools leave behind: metadata that is not a dict, odd tags."""
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id == "imports":
            cell["metadata"] = "oops"
        elif grade_id == "lora_flops_answer":
            cell["metadata"] = {"nbgrader": ["solution"], "tags": "skip-autograder"}
            cell["source"] = list(_text(cell["source"]).splitlines(True)) + [None]
    return notebook


def _nbformat_3(notebook):
    """The same notebook in nbformat 3 (worksheets, code under "input"): Jupyter still opens it."""
    v3 = nbformat.convert(nbformat.reads(json.dumps(notebook), as_version=4), 3)
    return nbformat.writes(v3, version=nbformat.NO_CONVERT).encode()


def _utf16(notebook):
    return json.dumps(notebook, indent=1).encode("utf-16")


def _bom(notebook):
    return b"\xef\xbb\xbf" + json.dumps(notebook, indent=1).encode()


def update(body: str) -> dict:
    return {"lora_update_answer": "def lora_update(x, lora_A, lora_B, scaling):\n" + body}


def flops(body: str) -> dict:
    return {"lora_flops_answer": "def lora_flops(num_tokens, in_features, out_features, rank, materialize=False):\n" + body}


RIGHT_FLOPS = """
    if materialize:
        return 2 * in_features * rank * out_features + 2 * num_tokens * in_features * out_features
    return 2 * num_tokens * rank * (in_features + out_features)
"""



# Patches a student might try so that "the tests pass": they live in the sandbox's process only,
# and the verdicts (in the grader's process) never call them.
PATCH_COMPARISONS = """
import torch
import lora_grader.checks.core as core
torch.allclose = lambda *args, **kwargs: True
torch.equal = lambda *args, **kwargs: True
torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(a, dtype=torch.bool)
torch.testing.assert_close = lambda *args, **kwargs: None
core.is_close = lambda *args, **kwargs: True
core.judge = lambda *args, **kwargs: None
"""

LIAR = """
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal, torch.Tensor.equal):
            return True
        if getattr(func, "__name__", "") in ("eq", "__eq__", "isclose"):
            return torch.ones(args[0].shape, dtype=torch.bool)
        return super().__torch_function__(func, types, args, kwargs or {{}})
"""

# Everything a cell might do to the files around it. Relative paths land in the sandbox's own
# scratch folder, which they may change; then the notebooks found by searching (a student can know
# where their course folder is), by Python and by a shell, which nothing may change.
FILE_ATTACKS = """
import glob, os, shutil, subprocess
outcomes = []
def attempt(what, action):
    try:
        action()
        outcomes.append(what + ": done")
    except Exception as error:
        outcomes.append(f"{{what}}: {{type(error).__name__}}")
try:
    os.remove("02_factored_fix.ipynb")
    open("../02_factored_fix.ipynb", "w").write("{{}}")
except OSError:
    pass
attempt("write far above the scratch folder", lambda: open("../../../pwned.txt", "w").write("x"))
for path in glob.glob("{root}/**/*.ipynb", recursive=True):
    folder = os.path.dirname(path)
    attempt("overwrite", lambda: open(path, "w").write("{{}}"))
    attempt("append", lambda: open(path, "a").write("x"))
    attempt("truncate", lambda: os.truncate(path, 0))
    attempt("rename", lambda: os.rename(path, path + ".bak"))
    attempt("delete", lambda: os.remove(path))
    attempt("write next to it", lambda: open(os.path.join(folder, "pwned.txt"), "w").write("x"))
    attempt("folder next to it", lambda: os.mkdir(os.path.join(folder, "pwned")))
    attempt("shell", lambda: subprocess.run(["rm", "-f", path], check=True))
attempt("delete the whole tree", lambda: shutil.rmtree("{root}"))
if any(outcome.endswith(": done") for outcome in outcomes):
    del lora_flops  # the sandbox let one through: lose the points, so that the test sees it
"""

HUGE_FILE = """
try:
    with open("huge.bin", "wb") as file:
        for _ in range(200):
            file.write(bytes(2**20))
except OSError:  # File too large: the sandbox caps each file at 64 MB
    pass
else:
    del lora_update  # 200 MB went to disk: lose the points, so that the test sees it
"""

IGNORES_INTERRUPTS = """
import time

class Counter:
    def count(self):
        while True:
            try:
                time.sleep(0.01)
            except BaseException:
                pass

def lora_flops(num_tokens, in_features, out_features, rank, materialize=False):
    return Counter().count()
"""

KILLS = """
import os, signal
def try_to(action):
    try:
        action()
    except OSError:
        pass
try_to(lambda: os.kill(os.getppid(), signal.SIGKILL))  # the sandbox, running the other notebooks
try_to(lambda: os.kill(int(open(f"/proc/{{os.getppid()}}/stat").read().rsplit(")", 1)[1].split()[1]),
                       signal.SIGKILL))  # the grader itself
try_to(lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL))  # the sandbox's process group
os.killpg(os.getpgid(0), signal.SIGKILL)  # its own process group: only this notebook may die
"""

# --- attacks on the grader itself (issue: the grader under attack) ---------------------------

LISTENERS: dict = {}  # a TCP port and a Unix socket path the batch listens on, outside the sandbox

# What forged results looked like when probes wrote them to files: correct-looking outcomes under
# every check's name, everywhere a cell might guess the grader looks.
FORGED_RESULT_FILES = """
import os, torch
forged = [{{"status": "ok", "data": {{"kind": "int", "value": 0}}}}]
for folder in (".", "..", "../..", os.environ.get("TMPDIR", ".")):
    for name in NAMES:
        for suffix in (".pt", ".tmp", ".json"):
            try:
                torch.save(forged, os.path.join(folder, name + suffix))
            except OSError:
                pass
    for name in ("status.json", "cells.json", "progress.json"):
        try:
            open(os.path.join(folder, name), "w").write("{{}}")
        except OSError:
            pass
"""

# Correct-looking frames of the results channel written to every file descriptor: no token.
WRITES_TO_EVERY_DESCRIPTOR = """
import os
frame = b"LGR2" + bytes(16) + bytes([3]) + (8).to_bytes(4, "big") + bytes(8)
for fd in range(3, 256):
    try:
        os.write(fd, frame)
    except OSError:
        pass
"""

# Deliberate introspection: walk up from its own frame to the notebook runner's, take the token
# and the pipe, and send a result for the first probe. It cannot be prevented in one process;
# it must not score silently.
FORGES_WITH_THE_TOKEN = """
import io, os, torch
try:
    raise RuntimeError
except RuntimeError as error:
    frame = error.__traceback__.tb_frame
while frame is not None and "token" not in frame.f_locals:
    frame = frame.f_back
buffer = io.BytesIO()
torch.save({{"group": 0, "outcomes": [], "attempts": []}}, buffer)
payload = buffer.getvalue()
os.write(frame.f_locals["fd"], b"LGR2" + frame.f_locals["token"] + bytes([3]) + len(payload).to_bytes(4, "big") + payload)
"""

# The attack of issue 15, after the split: during the probe, walk up the frames to the grader's
# case, then load the code that computes the expected value (bypassing the import guard) and
# return it. The answers are neither loaded in this process nor readable from it.
FORGES_WITH_THE_ANSWERS = """
def lora_flops(num_tokens, in_features, out_features, rank, materialize=False):
    import os, sys
    def running():
        yield walker.gi_frame.f_back
    walker = running()
    frame = next(walker)
    while frame is not None and not ("case" in frame.f_locals and "check" in frame.f_locals):
        frame = frame.f_back
    case = frame.f_locals["case"]
    loaded = [module for name, module in sys.modules.items() if name.startswith("lora_grader.answers")]
    if not loaded:
        grader = os.path.dirname(os.path.dirname(frame.f_globals["__file__"]))
        source = open(os.path.join(grader, "answers", "nb02.py")).read()
        source = source.replace("from lora_grader.answers.shared import matmul_flops",
                                "matmul_flops = lambda m, n, p: 2 * m * n * p")
        namespace = {{}}
        exec(source, namespace)
        return namespace["lora_flops"](case)["flops"]
    return loaded[0].lora_flops(case)["flops"]
"""

REACHES_FOR_THE_GRADER = """
import ctypes, gc, os, sys
reached = []
def attempt(what, action):
    try:
        action()
        reached.append(what)
    except Exception:
        pass
attempt("gc", lambda: gc.get_objects())
attempt("gc referrers", lambda: gc.get_referrers(torch))
attempt("frames", lambda: sys._getframe(3))  # the lambda, attempt, the cell, then the sandbox
attempt("own memory", lambda: open("/proc/self/mem", "rb"))
attempt("the sandbox's environment", lambda: open(f"/proc/{{os.getppid()}}/environ").read())
attempt("ctypes", lambda: ctypes.CDLL(None))
attempt("the grader in sys.modules", lambda: sys.modules["lora_grader"])
attempt("the sandbox as __main__", lambda: sys.modules["__main__"].run_notebook)
attempt("a tracer", lambda: sys.settrace(lambda *args: None))
attempt("a shell", lambda: os.system("true"))
if reached:
    del lora_flops  # the sandbox let one through: lose the points, so that the test sees it
    raise RuntimeError(f"reached {{reached}}")
"""

PATCHES_THE_FLOP_COUNTER = """
import torch.utils.flop_counter
torch.utils.flop_counter.FlopCounterMode.get_total_flops = lambda self: 0
torch.utils.flop_counter.FlopCounterMode.__enter__ = lambda self: self
torch.utils.flop_counter.FlopCounterMode.__exit__ = lambda self, *args: None
"""

NETWORK = """
import socket
reached = []
for family, address in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_UNIX, "{unix}")):
    try:
        with socket.socket(family) as connection:
            connection.settimeout(2)
            connection.connect(address)
            reached.append(address)
    except OSError:
        pass
try:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        reached.append("bind")
except OSError:
    pass
if reached:
    del lora_flops
"""

READS_OTHER_WORK = """
import glob, os
found = []
for pattern in ("{root}/*/*.ipynb", "{repo}/solutions/lora/*.ipynb", "{repo}/lora_grader/checks/*.py"):
    found += glob.glob(pattern)
for path in ("{repo}/solutions/lora/01_elementwise_attempt.ipynb", "{repo}/lora_grader/checks/nb01.py",
             "{root}/clean-01/01_elementwise_attempt.ipynb", "{repo}/gradebook.db"):
    try:
        open(path).read(1)
        found.append(path)
    except OSError:
        pass
if found:
    del lora_flops
"""

CHANGES_MODES_AND_TIMES = """
import os
for path in ("{root}/02-changes-modes-and-times/02_factored_fix.ipynb", "{root}/clean-01/01_elementwise_attempt.ipynb",
             "{root}"):
    for action in (lambda: os.chmod(path, 0o777), lambda: os.utime(path, (0, 0)),
                   lambda: os.setxattr(path, "user.graded", b"yes")):
        try:
            action()
        except OSError:
            pass
"""

DETACHES_PROCESSES = """
import os, time
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)
    os.waitpid(pid, 0)
"""

FORK_BOMB = """
import os
for _ in range(12):
    os.fork()
"""

USES_MEMORY_IN_MANY_PROCESSES = """
import os, time
for _ in range(4):
    if os.fork() == 0:
        block = bytearray(700 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(30)
        os._exit(0)
time.sleep(30)
"""

WRITES_MANY_MEGABYTES = """
import time
for n in range(4):
    with open(f"part{{n}}.bin", "wb") as file:
        file.write(bytes(40 * 2**20))
time.sleep(30)
"""

WRITES_MANY_FILES = """
import os, time
os.mkdir("many")
for n in range(3000):
    open(f"many/{{n}}", "w").close()
time.sleep(30)
"""

ESCAPE_CODES = ('    raise type("Bad\\x1b[31mError", (Exception,), {{}})("\\x1b[2J\\x1b]0;owned\\x07cleared")\n')

RETURNS_A_HUGE_TENSOR = "    return torch.zeros(3000, 3000)\n"  # 36 MB: more than any check reads

# The limits the batch runs under: low enough to cross quickly, far above what a notebook needs.
BATCH_LIMITS = {"memory": 2 * 2**30, "disk": 100 * 2**20, "files": 2000, "forks": 16}


def _unreadable_cases(key: str) -> list[Case]:
    """Every notebook, whatever its checks: a file that cannot be graded fails each check clearly."""
    return [
        Case(f"{key}-empty-file", key, raw(b""), {ALL: "is empty"}),
        Case(f"{key}-truncated-json", key, truncated(key), {ALL: "was the file truncated"}),
        Case(f"{key}-json-but-not-a-notebook", key, raw(b'{"name": "my notes", "cells": "none"}'),
             {ALL: "is json but not a jupyter notebook"}),
        Case(f"{key}-missing", key, raw(None), {ALL: "was not found"}),
    ]


CASES = [
    case
    for key in NOTEBOOKS
    if (ROOT / "course" / "lora" / NOTEBOOKS[key].filename).exists()
    for case in _unreadable_cases(key)
] + [
    # --- the file ---------------------------------------------------------------------------
    Case("01-json-list", "01", raw(b"[1, 2, 3]"), {ALL: "not a jupyter notebook"}),
    Case("01-utf16", "01", edited("01", transform=_utf16), {ALL: "not utf-8"}),
    Case("02-json-nested-too-deep", "02", raw(b"[" * 100_000 + b"]" * 100_000), {ALL: "nested too deeply"}),
    Case("02-utf8-bom", "02", edited("02", transform=_bom), {}),
    # Jupyter opens nbformat 3 and the code is all there, so it is graded like any notebook.
    Case("02-nbformat-3", "02", edited("02", transform=_nbformat_3), {}),
    Case("01-nbformat-3", "01", edited("01", transform=_nbformat_3), {}),
    Case("01-cells-without-ids-or-outputs", "01", edited("01", transform=_without_ids_and_outputs), {}),
    Case("02-malformed-metadata", "02", edited("02", transform=_malformed_metadata), {}),
    # --- names and syntax -------------------------------------------------------------------
    Case("02-task-renamed", "02", edited("02", {"lora_flops_answer": (
        "def flops_of_lora(num_tokens, in_features, out_features, rank, materialize=False):" + RIGHT_FLOPS)}),
         {name: "`lora_flops` is not defined" for name in FLOPS}),
    Case("02-syntax-error", "02", edited("02", lora_linear(forward="self.base_layer(x) +")),
         {name: "raised SyntaxError" for name in LAYER}),
    # --- exits --------------------------------------------------------------------------------
    # At top level, sys.exit() and exit() behave as in Jupyter (and under nbgrader): the cell
    # stops, the notebook goes on. os._exit() ends the process, as it kills a Jupyter kernel.
    Case("01-sys-exit-top-level", "01", edited("01", scratch=["import sys\nsys.exit('stop here')"]), {}),
    Case("02-exit-top-level", "02", edited("02", scratch=["exit()"]), {}),
    Case("01-os-exit-top-level", "01", edited("01", scratch=["import os\nos._exit(0)"]),
         {ALL: "ended while running code cell 2 (exit code 0) before its checks ran: os._exit()"}),
    Case("02-sys-exit-in-function", "02", edited("02", flops("    import sys\n    sys.exit(0)\n")),
         {name: "raised SystemExit" for name in FLOPS}),
    Case("01-exit-in-function", "01", edited("01", update("    exit()\n")),
         {name: "end the whole program" for name in UPDATE}),
    Case("02-os-exit-in-function", "02", edited("02", flops("    import os\n    os._exit(0)\n")),
         {name: "`os._exit(0)`" for name in FLOPS}),
    # --- dead processes -----------------------------------------------------------------------
    Case("02-kill-self-in-function", "02",
         edited("02", flops("    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n")),
         {name: "killed by signal 9" for name in FLOPS}),
    Case("01-segfault-in-function", "01", edited("01", {
        "silent_failure_case_answer": "def silent_failure_case():\n    import faulthandler\n    faulthandler._sigsegv()\n"}),
         {"silent_failure_case": "killed by signal 11"}),
    Case("01-ctypes-in-function", "01", edited("01", {
        "silent_failure_case_answer": "def silent_failure_case():\n    import ctypes\n    ctypes.string_at(0)\n"}),
         {"silent_failure_case": "does not allow ctypes"}, refused=("ctypes",), flagged=("ctypes",)),
    Case("01-kill-self-top-level", "01", edited("01", scratch=["import os\nos.kill(os.getpid(), 9)"]),
         {ALL: "killed by signal 9 while running code cell 2"}),
    # --- hangs --------------------------------------------------------------------------------
    Case("02-while-true-top-level", "02", edited("02", scratch=["while True:\n    pass"]), {}),
    Case("02-loop-ignoring-interrupts-in-method", "02", edited("02", {"lora_flops_answer": IGNORES_INTERRUPTS}),
         {name: f"still running after {TIMEOUTS.check:g} s: is there an endless loop?" for name in FLOPS}),
    # A given cell of notebook 02 calls forward at top level. Run All would hang there in Jupyter
    # too, and nbgrader could not grade the notebook: every check fails, naming that cell.
    Case("02-loop-ignoring-interrupts-in-forward", "02", edited("02", lora_linear(
        forward="self.spin()",
        freeze="self.base_layer.requires_grad_(False)\n\n"
               "    def spin(self):\n        import time\n        while True:\n            try:\n"
               "                time.sleep(0.01)\n            except BaseException:\n                pass",
    )),
         {ALL: "did not finish in time while running code cell"}),
    # --- patches that would make comparisons lie ------------------------------------------------
    Case("01-patched-comparisons-wrong-update", "01",
         edited("01", update("    return (x @ lora_A) @ lora_B\n"), scratch=[PATCH_COMPARISONS]),
         {"lora_update_values": "was scaling never applied",
          "lora_update_never_forms_AB": "only counts for a correct result"}),
    Case("02-patched-comparisons-wrong-scaling", "02", edited(
        "02", lora_linear(scaling="alpha"), scratch=[PATCH_COMPARISONS]),
         {"lora_linear_values": "alpha instead of alpha / rank", "lora_linear_scaling": "should be alpha / rank",
          "lora_linear_flops": "only counts for a correct output"}),
    # --- return values that lie ------------------------------------------------------------------
    Case("01-lying-tensor-subclass", "01", edited("01", {"lora_update_answer": LIAR + (
        "\ndef lora_update(x, lora_A, lora_B, scaling):\n    return (x @ (lora_A @ lora_B)).as_subclass(Liar)\n")}),
         {"lora_update_shape": "tensor subclass", "lora_update_values": "tensor subclass",
          "lora_update_never_forms_AB": "tensor subclass"}),
    Case("02-always-equal-object", "02", edited("02", flops(
        "    class AlwaysEqual:\n        def __eq__(self, other):\n            return True\n"
        "        __hash__ = object.__hash__\n    return AlwaysEqual()\n")),
         {name: "should return an int" for name in FLOPS}),
    Case("02-always-equal-int", "02", edited("02", flops(
        "    class AlwaysEqual(int):\n        def __eq__(self, other):\n            return True\n"
        "        def __ne__(self, other):\n            return False\n        __hash__ = int.__hash__\n"
        "    return AlwaysEqual(0)\n")),
         {name: "returned 0 but flopcountermode counts" for name in FLOPS}),
    Case("02-flops-as-float", "02", edited("02", flops(RIGHT_FLOPS.replace("return 2 *", "return 2.0 *"))),
         {name: "returned a float" for name in FLOPS}),
    Case("02-flops-as-bool", "02", edited("02", flops("    return True\n")), {name: "returned a bool" for name in FLOPS}),
    Case("02-flops-as-str", "02", edited("02", flops("    return str(2 * num_tokens * rank * (in_features + out_features))\n")),
         {name: "returned a str" for name in FLOPS}),
    # --- output and files ---------------------------------------------------------------------
    Case("01-megabytes-of-output", "01", edited(
        "01", update("    print('debugging', x.shape, lora_A, lora_B)\n    return (x @ lora_A) @ lora_B * scaling\n"),
        scratch=["for _ in range(20_000):\n    print('x' * 1_000)"]), {}),
    Case("02-prints-until-the-cell-timeout", "02", edited("02", at_end=["while True:\n    print('spam' * 1_000)"]), {}),
    Case("01-writes-a-huge-file", "01", edited("01", at_end=[HUGE_FILE]), {}),
    # --- IPython and input() -------------------------------------------------------------------
    Case("01-ipython-syntax-and-input", "01", edited(
        "01", {"lora_update_answer": "%%time\ndef lora_update(x, lora_A, lora_B, scaling):\n"
                                     "    return (x @ lora_A) @ lora_B * scaling\n"},
        scratch=["%matplotlib inline\n!pip list\nfiles = !ls\ntorch.randn?", "%%bash\nrm -rf ~/course\n",
                 "name = input('your name: ')"]), {}),
    Case("02-input-in-function", "02", edited("02", flops("    return int(input('FLOPs? '))\n")),
         {name: "input() gets no answer" for name in FLOPS}),
    # --- global state left behind by a scratch cell ---------------------------------------------
    # The checks build float32 layers with gradients on. The sandbox runs every cell before any
    # check, so a scratch cell at the end would change how work written above it is checked, while
    # nbgrader checks each answer right after its cell: a correct answer keeps full marks.
    Case("02-default-dtype-float64-at-the-end", "02",
         edited("02", at_end=["torch.set_default_dtype(torch.float64)"]), {}),
    Case("02-grad-disabled-at-the-end", "02", edited("02", at_end=["torch.set_grad_enabled(False)"]), {}),
    Case("01-float64-and-global-seed-at-the-end", "01",
         edited("01", at_end=["torch.set_default_dtype(torch.float64)\ntorch.manual_seed(1234)"]), {}),
    # No work, so no FLOPs: the FLOP check must not reward it.
    Case("01-update-computes-nothing", "01", edited("01", update(
        "    return torch.zeros(*x.shape[:-1], lora_B.shape[-1])\n")),
         {"lora_update_values": "values differ", "lora_update_never_forms_AB": "only counts for a correct result"}),
    # --- forged results, tampering and the answer key ----------------------------------------------
    Case("01-release-with-forged-result-files", "01", edited("01", release=True, at_end=[
        f"NAMES = {list(_names('01'))!r}" + FORGED_RESULT_FILES]), {ALL: "not implemented yet"}),
    Case("02-release-with-forged-result-files", "02", edited("02", release=True, at_end=[
        f"NAMES = {list(_names('02'))!r}" + FORGED_RESULT_FILES]), {ALL: "not implemented yet"}),
    Case("02-writes-frames-to-every-descriptor", "02", edited("02", at_end=[WRITES_TO_EVERY_DESCRIPTOR]),
         {ALL: "marked as tampered"}, flagged=("raw file descriptor",)),
    Case("01-release-forges-with-the-token", "01", edited("01", release=True, at_end=[FORGES_WITH_THE_TOKEN]),
         {ALL: "marked as tampered"}, flagged=("f_back", "f_locals", "traceback's frame")),
    Case("02-imports-the-answer-key", "02", edited("02", {
        "lora_flops_answer": "from lora_grader.answers.nb02 import lora_flops"}),
         {name: "cannot be imported" for name in FLOPS}, flagged=("grader's own package",)),
    Case("02-imports-the-grader-by-a-computed-name", "02", edited("02", {"lora_flops_answer": (
        "import importlib\nkey = importlib.import_module('lora_' + 'grader.answers.nb02')\n"
        "lora_flops = key.lora_flops")}),
         {name: "cannot be imported" for name in FLOPS}, flagged=("importlib",)),
    Case("02-reaches-for-the-grader", "02", edited("02", at_end=[REACHES_FOR_THE_GRADER]), {},
         refused=("gc.get_objects", "gc.get_referrers", "sys._getframe", "/proc", "ctypes", "sys.settrace", "shell"),
         flagged=("gc", "ctypes", "sys.modules", "/proc")),
    Case("01-patches-the-flop-counter-to-hide-AB", "01", edited(
        "01", update("    return x @ (lora_A @ lora_B) * scaling\n"), scratch=[PATCHES_THE_FLOP_COUNTER]),
         {"lora_update_never_forms_AB": "A @ B"}, flagged=("assigns to an attribute",)),
    # --- bounds on the whole notebook -------------------------------------------------------------
    Case("02-detaches-processes", "02", edited("02", at_end=[DETACHES_PROCESSES]), {}, flagged=("setsid",)),
    Case("02-fork-bomb", "02", edited("02", at_end=[FORK_BOMB]), {}, refused=("more than 16 processes",)),
    Case("02-memory-in-many-processes", "02", edited("02", at_end=[USES_MEMORY_IN_MANY_PROCESSES]),
         {ALL: "GB of memory together"}),
    Case("02-writes-many-megabytes", "02", edited("02", at_end=[WRITES_MANY_MEGABYTES]), {ALL: "MB of files"}),
    Case("02-writes-many-files", "02", edited("02", at_end=[WRITES_MANY_FILES]), {ALL: "2,000 files"}),
    Case("02-network", "02", edited("02", at_end=[NETWORK]), {}, refused=("network socket",), flagged=("socket",)),
    Case("02-changes-modes-and-times", "02", edited("02", at_end=[CHANGES_MODES_AND_TIMES]), {},
         refused=("mode", "times")),
    Case("01-escape-codes-in-an-error", "01", edited("01", update(ESCAPE_CODES)),
         {name: "\\x1b[2j" for name in UPDATE}),
    Case("01-returns-a-huge-tensor", "01", edited("01", update(RETURNS_A_HUGE_TENSOR)),
         {name: "too large to check" for name in UPDATE}),
    Case("02-named-pipe-instead-of-a-notebook", "02", raw(FIFO), {ALL: "not a regular file"}),
    Case("01-notebook-of-65-mb", "01", raw(SPARSE_65_MB), {ALL: "larger than 64 MB"}),
] + ([
    Case("02-reads-other-work", "02", edited("02", at_end=[READS_OTHER_WORK]), {}),
    Case("02-release-forges-with-the-answers", "02", edited("02", release=True, at_end=[FORGES_WITH_THE_ANSWERS]),
         {**{name: "not implemented yet" for name in LAYER}, **{name: "permission" for name in FLOPS}},
         flagged=("f_back",)),
] if CONFINED_FILES else []) + ([
    Case("02-attacks-the-files-around-it", "02", edited("02", at_end=[FILE_ATTACKS]), {}),
] if CONFINED_FILES else []) + ([
    Case("02-kills-the-sandbox-and-the-grader", "02", edited("02", at_end=[KILLS]),
         {ALL: "killed by signal 9 while running code cell"}),
] if CONFINED_SIGNALS else [])

BYSTANDERS = ("01", "02")  # graded after every hostile case, in the same sandbox


@dataclasses.dataclass(frozen=True)
class Batch:
    results: dict
    files_before: dict
    files_after: dict
    sandbox_folder: Path
    integrity: dict
    run_id: str


def _files(folder: Path) -> dict[str, tuple]:
    """Every path beneath `folder` (and the folder itself): its content's digest, mode, times and
    extended attributes."""
    def state(path: Path) -> tuple:
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and path.stat().st_size < 2**24 \
            else path.is_dir() and "folder" or f"{info.st_size} bytes"
        xattrs = sorted(os.listxattr(path, follow_symlinks=False)) if hasattr(os, "listxattr") else []
        return digest, info.st_mode, info.st_mtime_ns, tuple(xattrs)
    return {str(path.relative_to(folder)): state(path) for path in [folder, *sorted(folder.rglob("*"))]
            if not path.is_socket()}


@pytest.fixture(scope="module", params=MODES)
def batch(request, tmp_path_factory) -> Batch:
    root = tmp_path_factory.mktemp("hostile")
    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind(str(root / "grader.sock"))
        unix.listen()
        LISTENERS.update(port=tcp.getsockname()[1], unix=str(root / "grader.sock"))
        return _grade_batch(root, request.param)


def _grade_batch(root: Path, mode: str) -> Batch:
    jobs = {}
    for case in CASES:
        folder = root / case.name
        folder.mkdir()
        if case.notebook in OTHER:
            other = OTHER[case.notebook]
            (folder / NOTEBOOKS[other].filename).write_text(json.dumps(complete_submission(other), indent=1))
        path = folder / NOTEBOOKS[case.notebook].filename
        if (data := case.build(root)) == FIFO:
            os.mkfifo(path)
        elif data == SPARSE_65_MB:
            with open(path, "wb") as file:
                file.truncate(65 * 2**20)
        elif data is not None:
            path.write_bytes(data)
        jobs[case.name] = (case.notebook, path)
    for key in BYSTANDERS:
        path = root / f"clean-{key}" / NOTEBOOKS[key].filename
        path.parent.mkdir()
        path.write_text(json.dumps(complete_submission(key), indent=1))
        jobs[f"clean-{key}"] = (key, path)
    before = _files(root)
    sandbox = Sandbox(mode)
    results = sandbox.grade_jobs(jobs, TIMEOUTS, limits=BATCH_LIMITS)
    return Batch(results, before, _files(root), sandbox.outdir, sandbox.integrity, sandbox.run_id)


def _case_ids(cases):
    return [pytest.param(case, id=case.name) for case in cases]


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_every_check_gets_a_result(case, batch):
    graded = [result.check.name for result in batch.results[case.name]]
    assert graded == list(_names(case.notebook)), f"{case.name}: results came back for {graded}"


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_hostile_submission_fails_exactly_the_checks_it_breaks(case, batch):
    problems = unexpected_verdicts(batch.results[case.name], case.fails)
    assert not problems, f"{case.name}:\n" + "\n".join(problems)


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_feedback_is_short_and_has_no_traceback(case, batch):
    for result in batch.results[case.name]:
        assert "Traceback" not in result.message and len(result.message) < 1200, (
            f"{case.name}, {result.check.name}: feedback a student cannot read:\n{result.message}")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_no_file_around_the_notebook_changes(case, batch):
    def of_case(files):
        return {name: state for name, state in files.items() if name.split(os.sep)[0] in (case.name, ".")}
    assert of_case(batch.files_after) == of_case(batch.files_before), (
        f"{case.name}: grading changed, added or removed files in the student's folder")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("key", BYSTANDERS)
def test_notebooks_graded_after_the_hostile_ones_keep_full_marks(key, batch):
    failed = [f"{r.check.name}: {r.message}" for r in batch.results[f"clean-{key}"] if not r.passed]
    assert not failed, f"a complete notebook {key} lost points next to hostile ones:\n" + "\n".join(failed)


@pytest.mark.timeout(BATCH_TIME_LIMIT)
def test_the_sandbox_leaves_nothing_behind(batch):
    assert not batch.sandbox_folder.exists(), (
        f"{batch.sandbox_folder} (results, and whatever student code wrote) outlived the grading")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids([case for case in CASES if case.refused or case.flagged]))
def test_the_integrity_report_names_what_the_code_reached_for(case, batch):
    integrity = batch.integrity[case.name]
    refused, flags = "\n".join(integrity.attempts), "\n".join(integrity.flags)
    missing = [f"refused: {words}" for words in case.refused if words.lower() not in refused.lower()]
    missing += [f"flag: {words}" for words in case.flagged if words.lower() not in flags.lower()]
    assert not missing, f"{case.name}: the integrity report lacks {missing}:\n{integrity.lines()}"


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("key", BYSTANDERS)
def test_a_complete_notebook_has_nothing_to_report(key, batch):
    assert not batch.integrity[f"clean-{key}"].lines()


_RAW_CONTROL = re.compile("[\\x00-\\x08\\x0b-\\x1f\\x7f]")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_feedback_never_sends_control_characters_to_the_terminal(case, batch):
    for result in batch.results[case.name]:
        assert not _RAW_CONTROL.search(result.message), f"{case.name}, {result.check.name}: {result.message!r}"


def _processes_of_run(run_id: str) -> list[str]:
    """Processes whose environment marks them as started by one grading run."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if f"LORA_GRADING_RUN={run_id}".encode() in environ.read().split(b"\0"):
                    found.append(entry)
        except OSError:
            continue
    return found


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc to list processes")
def test_no_process_outlives_the_run(batch):
    assert not _processes_of_run(batch.run_id), "processes started by graded notebooks outlived the run"


# --- the real command line ------------------------------------------------------------------

def _autograder(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "autograder", "--notebooks", str(folder), "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def _assert_a_readable_failing_run(run: subprocess.CompletedProcess) -> str:
    output = run.stdout + run.stderr
    lines = run.stdout.rstrip().splitlines()
    assert run.returncode == 1, f"pytest should report failed tests (exit code 1), not {run.returncode}:\n{output}"
    assert lines and lines[-1].startswith("=") and " failed" in lines[-1] and " in " in lines[-1], (
        f"the run did not end with pytest's summary line:\n{output}")
    assert "LoRA course: points" in output and "total (autograded)" in output, f"no points table:\n{output}"
    assert "Traceback" not in output and "_ _ _ _" not in output, f"tracebacks instead of feedback:\n{output}"
    return output


@pytest.mark.timeout(300)
def test_command_line_on_a_truncated_notebook_and_an_exit_in_a_graded_function(tmp_path):
    (tmp_path / NOTEBOOKS["01"].filename).write_bytes(truncated("01")(tmp_path))
    (tmp_path / NOTEBOOKS["02"].filename).write_bytes(
        edited("02", flops("    import os\n    os._exit(0)\n"))(tmp_path))
    output = _assert_a_readable_failing_run(_autograder(tmp_path))
    assert "is not valid JSON" in output and "was the file truncated" in output, output
    assert "`lora_flops` raised SystemExit" in output and "os._exit(0)" in output, output
    table = output.split("LoRA course: points")[1]
    assert any(line.split()[:3] == ["02", "LoRALinear", "10/10"] for line in table.splitlines()), (
        f"LoRALinear should keep its points when lora_flops exits:\n{table}")


@pytest.mark.timeout(300)
def test_command_line_on_a_killed_notebook_next_to_a_complete_one(tmp_path):
    (tmp_path / NOTEBOOKS["01"].filename).write_text(json.dumps(complete_submission("01"), indent=1))
    (tmp_path / NOTEBOOKS["02"].filename).write_bytes(
        edited("02", scratch=["import os\nos.kill(os.getpid(), 9)"])(tmp_path))
    output = _assert_a_readable_failing_run(_autograder(tmp_path))
    assert "killed by signal 9 while running code cell 2" in output, output
    table = output.split("LoRA course: points")[1]
    for task, points in (("silent_failure_case", "2/2"), ("lora_update", "4/4")):
        assert any(line.split()[:3] == ["01", task, points] for line in table.splitlines()), (
            f"notebook 01 is complete and should keep {points} for {task}:\n{table}")


@pytest.mark.timeout(300)
def test_where_the_kernel_confines_nothing_the_run_still_grades_and_says_so(tmp_path):
    for key in ("01", "02"):
        (tmp_path / NOTEBOOKS[key].filename).write_text(json.dumps(complete_submission(key), indent=1))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "autograder", "--notebooks", str(tmp_path), "-k", "01 or 02",
         "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "LORA_GRADER_CONFINEMENT": "off"},
    )
    assert run.returncode == 0, f"complete notebooks should pass without confinement too:\n{run.stdout[-3000:]}"
    assert "sandbox: the kernel confines nothing here" in run.stdout, run.stdout[-2000:]


@pytest.mark.skipif(not (CONFINED_FILES and seccomp_supported()), reason="this kernel lacks Landlock or seccomp")
def test_the_run_says_what_the_kernel_confines(tmp_path):
    (tmp_path / NOTEBOOKS["01"].filename).write_text(json.dumps(complete_submission("01"), indent=1))
    output = _autograder(tmp_path).stdout
    assert "sandbox: confines files" in output and "by seccomp" in output, output[-2000:]


# Data a sandbox could send back for any probe, if something forged it: every verdict must turn
# it into feedback without allocating in proportion to a number in it.
JUDGE_JUNK = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
import torch
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.verdicts.core import CheckFailed, judge


huge = 60_000
junk = [None, {}, [], huge, "x" * 10_000, {"kind": "int", "value": huge * huge},
        {"spec": {"in_features": huge, "out_features": huge, "rank": huge, "x_shape": [huge, huge]},
         "lora_A": torch.zeros(2, 2), "output": torch.zeros(2, 2), "error": ""},
        {key: huge for key in ("in_features", "out_features", "rank", "num_tokens", "shape", "size", "count")},
        {key: [huge, huge] for key in ("shape", "x_shape", "weight_shape", "A_shape", "B_shape")}]
for key in NOTEBOOKS:
    for check in checks_of(key):
        for data in junk:
            try:
                judge(check, check.cases, [{"status": "ok", "data": data}] * len(check.cases))
            except CheckFailed as failure:
                if "MemoryError" in str(failure):
                    print(f"{check.name} ran out of memory on {str(data)[:80]}")
print("judged")
"""


@pytest.mark.timeout(300)
def test_no_verdict_allocates_in_proportion_to_a_forged_number():
    run = subprocess.run([sys.executable, "-c", JUDGE_JUNK], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout.strip().endswith("judged"), run.stdout[-3000:] + run.stderr[-3000:]
    assert "ran out of memory" not in run.stdout, run.stdout
