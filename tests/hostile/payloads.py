"""The code hostile cases run: attacks on the files, the processes, the grader and its results."""

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
while True:  # past the cell's time too: on a busy machine the children take seconds to fill their memory
    try:
        time.sleep(30)
    except BaseException:
        pass
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

# A saboteur: while the notebooks beside it are graded, it lowers the memory limit, priority and
# CPUs of its parent (the sandbox) and of every process it can name, and takes a handle on the
# sandbox. Each attempt names another process, which seccomp refuses; one that got through would
# cost this notebook its FLOPs points (and the others theirs: test_hostile's bystanders).
SABOTAGES_OTHER_PROCESSES = """
import os, resource, signal, time
worked = []
def attempt(what, action):
    try:
        action()
        worked.append(what)
    except (OSError, ValueError):
        pass
me, parent = os.getpid(), os.getppid()
# A canary first: seccomp refuses even the caller itself when named by its pid. Where that is
# let through, so would the attacks be, on whatever runs on this machine: fail, without them.
attempt("canary", lambda: os.setpriority(os.PRIO_PROCESS, me, 0))
others = [parent] + [pid for pid in range(max(2, me - 300), me + 300) if pid not in (me, parent)]
deadline = time.monotonic() + 1  # while other notebooks run beside this one
while not worked and time.monotonic() < deadline:
    for pid in others:
        attempt("prlimit", lambda: resource.prlimit(pid, resource.RLIMIT_AS, (2**20, 2**20)))
        attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
        attempt("sched_setaffinity", lambda: os.sched_setaffinity(pid, {{0}}))
        attempt("sched_setscheduler", lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)))
    attempt("pidfd_open", lambda: signal.pidfd_send_signal(os.pidfd_open(parent), signal.SIGSTOP))
    attempt("setpriority of every process of this user", lambda: os.setpriority(os.PRIO_USER, 0, 19))
if worked:
    del lora_flops
"""

# The same through raw system calls, with ctypes handed to torch's tree_map so that a library,
# not the student's cell, is the immediate caller: the student's frame below it still counts.
RAW_SYSTEM_CALLS_THROUGH_A_LIBRARY = """
import ctypes, functools, os, platform
from torch.utils._pytree import tree_map
NUMBERS = {{"x86_64": {{"prlimit64": 302, "setpriority": 141, "ioprio_set": 251, "kill": 62}},
           "aarch64": {{"prlimit64": 261, "setpriority": 140, "ioprio_set": 30, "kill": 129}}}}
def through_torch(function, *args):
    return tree_map(functools.partial(function, *args[:-1]), [args[-1]])[0]
worked = []
try:
    libc = through_torch(ctypes.CDLL, "libc.so.6")
    syscall = through_torch(getattr, libc, "syscall")
    number = NUMBERS[platform.machine()]
    limit = through_torch(ctypes.c_uint64 * 2, 2**20)
    for name, args in (("prlimit64", (os.getppid(), 9, limit, 0)), ("setpriority", (0, os.getppid(), 19)),
                       ("ioprio_set", (1, os.getppid(), (3 << 13) | 7)), ("kill", (os.getppid(), 0))):
        if through_torch(syscall, number[name], *args) == 0:
            worked.append(name)
except PermissionError:
    pass
if worked:
    del lora_flops
"""

# The run's own files: the sandbox's folder (on sys.path, as `python -m` puts it there) with its
# log, and the folders of the notebooks graded beside this one.
READS_THE_SANDBOX = """
import os, re, sys
found = []
for folder in sys.path + ["../..", "../../.."]:
    try:
        names = os.listdir(folder)
    except OSError:
        continue
    found += [os.path.join(folder, name) for name in names
              if name == "sandbox.log" or re.fullmatch(r"notebooks?-[0-9a-z_]{{8,16}}", name)]
for path in ["../../../sandbox.log"] + [os.path.join(path, "scratch") for path in found]:
    try:
        os.listdir(path) if path.endswith("scratch") else open(path).read(1)
        found.append(path)
    except OSError:
        pass
if found:
    del lora_flops
"""
