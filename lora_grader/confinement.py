"""What the kernel enforces on student code, beyond Python's reach: files, network, system calls.

Two Linux mechanisms, each used where the kernel offers it and reported where it does not:

* Landlock (Linux 5.13+): the notebook's processes may change files only in their own folder,
  read only Python, the installed packages, the system's libraries and their own folder, and,
  from ABI 6, signal only processes they started. The grader's own package, other students'
  folders, the gradebook and the course's solutions are unreadable.
* seccomp (Linux 3.5+): a short list of system calls fails with EPERM: sockets (no network, no
  connecting to a Jupyter server), changes to the mode, owner, times or extended attributes of any
  file, running other programs, tracing or reading other processes, and what only an
  administrator does (mounts, modules, reboots, clocks).

Both are inherited by every process the student's code starts and cannot be lifted by it.
"""
from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

# --- system calls, by hand: no library wraps Landlock, and libseccomp is not on every laptop ----

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _LIBC is not None:
    _LIBC.syscall.restype = ctypes.c_long
    _LIBC.prctl.restype = ctypes.c_int

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER = 38, 22, 36


def _syscall(*args) -> int:
    return _LIBC.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def prctl(option: int, value: int) -> bool:
    if _LIBC is None:
        return False
    return _LIBC.prctl(option, *map(ctypes.c_ulong, (value, 0, 0, 0))) == 0


# --- Landlock ------------------------------------------------------------------------------

_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all but alpha
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_CHANGES = 0x1FF2  # write, remove file/dir, make char/dir/reg/sock/fifo/block/sym (ABI 1)
_FS_READS = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


# "off" simulates a kernel without either mechanism: the fallback is tested, not assumed.
_DISABLED = os.environ.get("LORA_GRADER_CONFINEMENT", "").lower() == "off"


def landlock_abi() -> int:
    """The Landlock version this kernel offers, 0 if none."""
    if _LIBC is None or _DISABLED or os.uname().machine == "alpha":
        return 0
    try:
        return max(0, _syscall(_LANDLOCK_CREATE_RULESET, None, 0, 1))  # 1: ask for the version
    except (OSError, AttributeError):
        return 0


def readable_roots(*hidden: Path) -> list[Path]:
    """What student code may read: Python, the installed packages and the system's libraries,
    but nothing beneath any of `hidden` (the grader's own package: its hidden cases and verdicts;
    the grading run's folder: the sandbox's log and the other notebooks' folders)."""
    roots = {Path(p) for p in ("/usr", "/lib", "/lib64", "/lib32", "/etc", "/dev", "/opt", "/bin", "/sbin",
                               "/proc/cpuinfo", "/sys/devices/system/cpu")}  # torch reads the CPU's features
    roots |= {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots |= {Path(entry) for entry in sys.path if entry and os.path.isdir(entry)}
    allowed = [root.resolve() for root in roots if root.exists()]
    for secret in (path.resolve() for path in hidden):
        allowed = [entry for root in allowed for entry in _without(root, secret)]
    return allowed


def _without(root: Path, hidden: Path) -> list[Path]:
    if root == hidden or root.is_relative_to(hidden):
        return []
    if hidden.is_relative_to(root):  # a folder that holds it (the repository, or site-packages)
        return _entries_beside(root, hidden)
    return [root]


def _entries_beside(root: Path, hidden: Path) -> list[Path]:
    """Python's own folders and installed packages in `root`, but not the path to `hidden` and,
    where `root` is the course repository itself, none of its other folders either."""
    if (root / "pyproject.toml").exists() or (root / ".git").exists():
        return []  # the repository: solutions, submissions, the gradebook
    entries = []
    for entry in root.iterdir():
        if entry.resolve() == hidden:
            continue
        if hidden.is_relative_to(entry.resolve()):
            entries.extend(_entries_beside(entry.resolve(), hidden))
        elif not entry.name.startswith(("lora_grader", "lora_course", "__editable__")):
            entries.append(entry)
    return entries


def _add_rule(ruleset: int, path: Path, allowed: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return True  # gone since it was listed: nothing to allow
    try:
        if os.path.isfile(path) or os.path.islink(path):
            allowed &= _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE  # file rights only
        rule = _PathBeneath(allowed, fd)
        return _syscall(_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) == 0  # 1: path beneath
    finally:
        os.close(fd)


def landlock(writable: Path, readable: list[Path] | None) -> int:
    """From now on this process and its children may change files only beneath `writable` (and
    write to /dev/null); read only beneath `writable` and `readable` (None: read anything); make
    no TCP connection or bind and no abstract Unix socket connection outside the sandbox (ABI 4, 6);
    signal only processes they started (ABI 6). Returns the ABI used, 0 if nothing was confined."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    changes = _FS_CHANGES | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    handled = changes | (_FS_READS if readable is not None else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET) if abi >= 6 else 0
    attr = _RulesetAttr(handled, net, scoped)
    ruleset = _syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        return 0
    try:
        rules = [(writable, handled), (Path(os.devnull), _FS_WRITE_FILE | (changes & _FS_TRUNCATE) | _FS_READ_FILE)]
        rules += [(path, _FS_READS) for path in readable or ()]
        if not all(_add_rule(ruleset, path, allowed) for path, allowed in rules):
            return 0
        prctl(_PR_SET_NO_NEW_PRIVS, 1)  # Landlock and seccomp need it
        return abi if _syscall(_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0 else 0
    finally:
        os.close(ruleset)


# --- seccomp ---------------------------------------------------------------------------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# System calls student code never needs, by architecture (x86_64's table; aarch64's generic one).
_DENIED = {
    "x86_64": {
        "socket": 41, "execve": 59, "execveat": 322,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
        "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260,
        "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
        "fremovexattr": 199, "setxattrat": 463, "removexattrat": 466,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "setns": 308, "unshare": 272,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "mount_setattr": 442, "reboot": 169, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321,
        "perf_event_open": 298, "sethostname": 170, "setdomainname": 171, "settimeofday": 164,
        "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305, "swapon": 167, "swapoff": 168,
        "acct": 163, "iopl": 172, "ioperm": 173, "keyctl": 250, "add_key": 248, "request_key": 249,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "quotactl": 179,
    },
    "aarch64": {
        "socket": 198, "execve": 221, "execveat": 281,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452, "fchown": 55, "fchownat": 54, "utimensat": 88,
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15,
        "fremovexattr": 16, "setxattrat": 463, "removexattrat": 466,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "setns": 268, "unshare": 97,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "mount_setattr": 442, "reboot": 142, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "bpf": 280,
        "perf_event_open": 241, "sethostname": 161, "setdomainname": 162, "settimeofday": 170,
        "clock_settime": 112, "adjtimex": 171, "clock_adjtime": 266, "swapon": 224, "swapoff": 225,
        "acct": 89, "keyctl": 219, "add_key": 217, "request_key": 218,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "quotactl": 60,
    },
}
# System calls that act on a process named by their arguments: allowed on the caller only
# (pid 0), so that a notebook cannot re-limit, re-prioritise, pin or move the memory of the
# sandbox, the grader or another notebook. Each rule: {argument index: the one value allowed}.
_SELF_ONLY = {
    "x86_64": {
        "prlimit64": (302, {0: 0}), "setpriority": (141, {0: 0, 1: 0}),  # PRIO_PROCESS, who 0
        "sched_setaffinity": (203, {0: 0}), "sched_setscheduler": (144, {0: 0}), "sched_setparam": (142, {0: 0}),
        "sched_setattr": (314, {0: 0}), "ioprio_set": (251, {0: 1, 1: 0}),  # IOPRIO_WHO_PROCESS, who 0
        "migrate_pages": (256, {0: 0}), "move_pages": (279, {0: 0}),
    },
    "aarch64": {
        "prlimit64": (261, {0: 0}), "setpriority": (140, {0: 0, 1: 0}),
        "sched_setaffinity": (122, {0: 0}), "sched_setscheduler": (119, {0: 0}), "sched_setparam": (118, {0: 0}),
        "sched_setattr": (274, {0: 0}), "ioprio_set": (30, {0: 1, 1: 0}),
        "migrate_pages": (238, {0: 0}), "move_pages": (239, {0: 0}),
    },
}
# Handles on other processes, and comparing their kernel objects: never needed by student code.
_DENIED["x86_64"].update(kcmp=312, pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
                         process_madvise=440, process_mrelease=448)
_DENIED["aarch64"].update(kcmp=272, pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
                          process_madvise=440, process_mrelease=448)
_X32_BIT = 0x40000000
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
_LD_ABS_W, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_NR, _ARCH, _ARGS = 0, 4, 16  # offsets in struct seccomp_data; each argument is 8 bytes, low half first


def seccomp_supported() -> bool:
    return _LIBC is not None and not _DISABLED and os.uname().machine in _DENIED


def describe() -> str:
    """One line on what the kernel enforces here, for the report that closes a grading run."""
    abi = landlock_abi()
    kernel = []
    if abi >= 1:
        kernel.append(f"files{' and TCP' if abi >= 4 else ''}{' and signals' if abi >= 6 else ''} by Landlock (ABI {abi})")
    if seccomp_supported():
        kernel.append("sockets, programs, file modes and other processes' limits, priorities and memory "
                      "by seccomp")
    if not kernel:
        return ("sandbox: the kernel confines nothing here (no Landlock or seccomp: not Linux, or an old "
                "kernel); student code runs in separate processes with time and memory limits only, and "
                "can read and change any file you can")
    missing = [] if abi >= 1 else ["files (Landlock needs Linux 5.13+)"]
    missing += [] if seccomp_supported() else ["sockets and programs (seccomp)"]
    return "sandbox: confines " + "; ".join(kernel) + ("; not confined: " + ", ".join(missing) if missing else "")


def _filter(machine: str) -> list[tuple[int, int, int, int]]:
    """A BPF program: other architectures' calls and the denied calls fail with EPERM, and so do
    the self-only calls whose arguments name another process."""
    # Jumps are written to labels first ("deny", "allow", "next"), then turned into offsets.
    program: list[tuple[int, object, object, int]] = [
        (_LD_ABS_W, 0, 0, _ARCH), (_JEQ, 1, 0, _AUDIT_ARCH[machine]), (_RET, 0, 0, _RET_EPERM),
        (_LD_ABS_W, 0, 0, _NR)]
    if machine == "x86_64":
        program.append((_JGE, "deny", 0, _X32_BIT))
    program += [(_JEQ, "deny", 0, number) for number in sorted(set(_DENIED[machine].values()))]
    for number, allowed in sorted(_SELF_ONLY[machine].values()):
        program.append((_JEQ, 0, "next", number))
        for index, value in sorted(allowed.items()):
            # the kernel reads these arguments as 32-bit ints: the low half is the whole value
            program += [(_LD_ABS_W, 0, 0, _ARGS + 8 * index), (_JEQ, 0, "deny", value)]
        program += [(_RET, 0, 0, _RET_ALLOW), ("next",)]
    program += [(_RET, 0, 0, _RET_ALLOW), ("deny",), (_RET, 0, 0, _RET_EPERM)]
    return _assemble(program)


def _assemble(program: list[tuple]) -> list[tuple[int, int, int, int]]:
    """Resolve the labels of `program`: "deny" is the last such label, each "next" the first one
    after the jump; a BPF jump is at most 255 instructions forward."""
    labels, code = [], []
    for item in program:
        if len(item) == 1:
            labels.append((item[0], len(code)))
        else:
            code.append(item)
    resolved = []
    for at, (op, true, false, value) in enumerate(code):
        jumps = []
        for target in (true, false):
            if isinstance(target, str):
                place = min(p for name, p in labels if name == target and p > at)
                target = place - at - 1
                assert 0 <= target <= 255, "a seccomp jump is too long"
            jumps.append(target)
        resolved.append((op, *jumps, value))
    return resolved


def seccomp() -> bool:
    """Deny the system calls above to this process and its children; False where unsupported."""
    if not seccomp_supported():
        return False
    program = _filter(os.uname().machine)
    raw = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Program(len(program), ctypes.addressof(buffer))
    prctl(_PR_SET_NO_NEW_PRIVS, 1)
    return _LIBC.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(2), ctypes.byref(fprog), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)) == 0  # 2: SECCOMP_MODE_FILTER
