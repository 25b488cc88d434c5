"""What the end-to-end tests need of this machine: Debian packages installed when missing, free
loopback ports, and the processes one grading run started."""
from __future__ import annotations

import os
import socket
import subprocess


def apt_install(packages: list[str]) -> subprocess.CompletedProcess:
    """`apt-get install` the packages (root only); the package lists may be missing or stale on a
    fresh machine, so a failed install is tried once more after an update."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    return done


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:  # held open together, so that the ports differ
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def processes_of_run(run_id: str) -> list[str]:
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
