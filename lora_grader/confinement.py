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


def readable_roots(hidden: Path) -> list[Path]:
    """What student code may read: Python, the installed packages and the system's libraries,
    but nothing beneath `hidden` (the grader's own package: its hidden cases and verdicts)."""
    roots = {Path(p) for p in ("/usr", "/lib", "/lib64", "/lib32", "/etc", "/dev", "/opt", "/bin", "/sbin",
                               "/proc/cpuinfo", "/sys/devices/system/cpu")}  # torch reads the CPU's features
    roots |= {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and Path(entry).resolve() != Path.cwd().resolve():
            roots.add(Path(entry))
    hidden = hidden.resolve()
    allowed = []
    for root in roots:
        root = root.resolve()
        if not root.exists():
            continue
        if root == hidden or hidden.is_relative_to(root):
            # a folder that holds the grader (the repository, or site-packages): its other entries only
            allowed.extend(_entries_beside(root, hidden))
        elif not root.is_relative_to(hidden):
            allowed.append(root)
    return allowed


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
_X32_BIT = 0x40000000
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
_LD_ABS_W, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06


def seccomp_supported() -> bool:
    return _LIBC is not None and not _DISABLED and os.uname().machine in _DENIED


def describe() -> str:
    """One line on what the kernel enforces here, for the report that closes a grading run."""
    abi = landlock_abi()
    kernel = []
    if abi >= 1:
        kernel.append(f"files{' and TCP' if abi >= 4 else ''}{' and signals' if abi >= 6 else ''} by Landlock (ABI {abi})")
    if seccomp_supported():
        kernel.append("sockets, programs and file modes by seccomp")
    if not kernel:
        return ("sandbox: the kernel confines nothing here (no Landlock or seccomp: not Linux, or an old "
                "kernel); student code runs in separate processes with time and memory limits only, and "
                "can read and change any file you can")
    missing = [] if abi >= 1 else ["files (Landlock needs Linux 5.13+)"]
    missing += [] if seccomp_supported() else ["sockets and programs (seccomp)"]
    return "sandbox: confines " + "; ".join(kernel) + ("; not confined: " + ", ".join(missing) if missing else "")


def _filter(machine: str) -> list[tuple[int, int, int, int]]:
    """A BPF program: other architectures' calls and the denied calls fail with EPERM."""
    denied = sorted(set(_DENIED[machine].values()))
    program = [(_LD_ABS_W, 0, 0, 4), (_JEQ, 1, 0, _AUDIT_ARCH[machine]), (_RET, 0, 0, _RET_EPERM),
               (_LD_ABS_W, 0, 0, 0)]
    checks = [(_JGE, _X32_BIT)] * (machine == "x86_64") + [(_JEQ, number) for number in denied]
    deny_at = len(program) + len(checks) + 1  # after the checks and the final ALLOW
    for index, (op, value) in enumerate(checks, start=len(program)):
        program.append((op, deny_at - index - 1, 0, value))
    return program + [(_RET, 0, 0, _RET_ALLOW), (_RET, 0, 0, _RET_EPERM)]


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
