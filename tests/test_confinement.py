"""What seccomp refuses a notebook's processes, called the rawest way (ctypes, no Python guard):
nothing that names another process by its pid, while the same calls on the caller itself work."""
import ctypes
import os
import platform
import struct

import pytest

from lora_grader import confinement

pytestmark = pytest.mark.skipif(not confinement.seccomp_supported(), reason="no seccomp on this system")

NUMBERS = {
    "x86_64": {"prlimit64": 302, "setpriority": 141, "sched_setaffinity": 203, "sched_setscheduler": 144,
               "sched_setparam": 142, "ioprio_set": 251, "pidfd_open": 434, "kcmp": 312, "getpid": 39},
    "aarch64": {"prlimit64": 261, "setpriority": 140, "sched_setaffinity": 122, "sched_setscheduler": 119,
                "sched_setparam": 118, "ioprio_set": 30, "pidfd_open": 434, "kcmp": 272, "getpid": 172},
}
IOPRIO_WHO_PROCESS = 1
RET = 0x06  # BPF_RET


def _calls(target: int) -> dict:
    """Each call, on `target` (0: the caller itself), with arguments that would really change it."""
    mask = ctypes.c_ulong(1)
    param = ctypes.c_int(0)
    read_only = ctypes.create_string_buffer(16)
    return {
        "prlimit64": (target, 4, None, ctypes.byref(read_only)),  # 4: RLIMIT_CORE, only read
        "setpriority": (0, target, os.getpriority(os.PRIO_PROCESS, 0)),  # as it is: raising it needs privilege
        "sched_setaffinity": (target, ctypes.sizeof(mask), ctypes.byref(mask)),
        "sched_setscheduler": (target, 0, ctypes.byref(param)),  # SCHED_OTHER, as it is
        "sched_setparam": (target, ctypes.byref(param)),
        "ioprio_set": (IOPRIO_WHO_PROCESS, target, 0),  # 0: the default class
    }


def _in_a_confined_child(body) -> dict:
    """Run body() in a forked child under seccomp; what it returned, {name: errno or 0}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            confinement.seccomp() or os._exit(3)
            os.write(write_end, repr(body()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as results:
        text = results.read()
    os.waitpid(pid, 0)
    return eval(text)  # a dict of ints, written by this test's own child


def _syscall(name: str, *args) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    number = NUMBERS[platform.machine()][name]
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    return 0 if result >= 0 else ctypes.get_errno()


@pytest.fixture(autouse=True)
def _known_machine():
    if platform.machine() not in NUMBERS:
        pytest.skip(f"no system call table for {platform.machine()} in this test")


def test_calls_that_name_another_process_are_refused():
    parent = os.getpid()
    refused = _in_a_confined_child(lambda: {name: _syscall(name, *args) for name, args in _calls(parent).items()})
    assert refused == {name: 1 for name in refused}, f"EPERM (1) expected for each: {refused}"


def test_the_same_calls_on_the_caller_itself_still_work():
    allowed = _in_a_confined_child(lambda: {name: _syscall(name, *args) for name, args in _calls(0).items()})
    assert allowed == {name: 0 for name in allowed}, f"0 expected for each: {allowed}"


def test_handles_on_processes_and_comparing_them_are_refused():
    parent = os.getpid()
    refused = _in_a_confined_child(lambda: {"pidfd_open": _syscall("pidfd_open", parent, 0),
                                            "kcmp": _syscall("kcmp", parent, parent, 0, 0, 0),
                                            "getpid": _syscall("getpid")})
    assert refused == {"pidfd_open": 1, "kcmp": 1, "getpid": 0}, refused


def test_the_filter_jumps_stay_inside_the_program():
    for machine in NUMBERS:
        program = confinement._filter(machine)
        assert program[-1][0] == RET, "a program ends by returning"
        for at, (op, true, false, _) in enumerate(program):
            assert op == RET or at + 1 + max(true, false) < len(program), f"instruction {at} jumps out"
        struct.pack(f"{len(program) * 'HBBI'}", *(field for instruction in program for field in instruction))
