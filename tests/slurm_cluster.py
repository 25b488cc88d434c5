"""A one-node Slurm cluster on this machine, for the tests and the benchmark: munged, slurmctld and
slurmd from Debian's packages, on loopback, with their own key, sockets, ports and spool, so they
meet no other Slurm or munge that runs here."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = {"sbatch": "slurm-wlm", "slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "munged": "munge"}
NODE = "lora-node"


def missing_tools() -> list[str]:
    return [tool for tool in PACKAGES if not (shutil.which(tool) or Path("/usr/sbin", tool).exists())]


def ensure_installed() -> str | None:
    """Install slurm-wlm and munge when missing and allowed; why not, when they cannot be had."""
    if not missing_tools():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"Slurm is not installed ({', '.join(missing_tools())} missing) and only root with apt-get installs it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *sorted(set(PACKAGES.values()))], env=env,
                          capture_output=True, text=True)
    if done.returncode or missing_tools():
        return f"apt-get could not install Slurm:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """Start with Cluster(folder, cpus); `env` is what sbatch and squeue need; close() stops all."""

    def __init__(self, folder: Path, cpus: int = 2) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.logs = {name: folder / f"{name}.log" for name in ("munged", "slurmctld", "slurmd")}
        try:
            self._start_munge()
            self.conf = self._write_conf(cpus)
            self.env = dict(os.environ, SLURM_CONF=str(self.conf))
            self._start("slurmctld", [_tool("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._start("slurmd", [_tool("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait_for_idle_node()
        except BaseException:
            self.close()
            raise

    def _start_munge(self) -> None:
        key, self.munge_socket = self.folder / "munge.key", self.folder / "munge.socket"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        # munged runs in the foreground here, owned by this test; --force: as root, in a private folder.
        self._start("munged", [_tool("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={self.folder / 'munged.pid'}",
                               f"--seed-file={self.folder / 'munge.seed'}", f"--log-file={self.logs['munged']}"])
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")

    def _write_conf(self, cpus: int) -> Path:
        host = socket.gethostname().split(".")[0]
        conf = self.folder / "slurm.conf"
        (self.folder / "state").mkdir(exist_ok=True)
        (self.folder / "spool").mkdir(exist_ok=True)
        conf.write_text(f"""\
ClusterName=loratest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={self.folder / 'state'}
SlurmdSpoolDir={self.folder / 'spool'}
SlurmctldPidFile={self.folder / 'slurmctld.pid'}
SlurmdPidFile={self.folder / 'slurmd.pid'}
SlurmctldLogFile={self.logs['slurmctld']}
SlurmdLogFile={self.logs['slurmd']}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        return conf

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.folder / f"{name}.stdout", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env=dict(os.environ, SLURM_CONF=str(self.folder / "slurm.conf"))))

    def _wait(self, ready, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                raise AssertionError(f"a daemon exited before {what} was ready:\n{self.daemon_logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise AssertionError(f"{what} not ready within {seconds} s:\n{self.daemon_logs()}")

    def _wait_for_idle_node(self) -> None:
        def idle() -> bool:
            done = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=self.env, capture_output=True,
                                  text=True)
            return done.returncode == 0 and done.stdout.strip() == "idle"
        self._wait(idle, "the node")

    def daemon_logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}"
                         for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.stdout"))
                         if path.exists())

    def wait_for_jobs(self, job_ids: list[str], seconds: float = 1800) -> dict[str, str]:
        """{job id (array tasks as ID_K): final state}, once none of them is pending or running."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            queued = subprocess.run(["squeue", "--noheader", "--format=%i", "--jobs", ",".join(job_ids)],
                                    env=self.env, capture_output=True, text=True)
            if queued.returncode == 0 and not queued.stdout.strip():
                return self.states(job_ids)
            time.sleep(1)
        raise AssertionError(f"jobs {job_ids} still queued after {seconds} s:\n{self.daemon_logs()}")

    def states(self, job_ids: list[str]) -> dict[str, str]:
        # No accounting database here: slurmctld keeps finished jobs for MinJobAge (300 s) for scontrol.
        states = {}
        for job in job_ids:
            shown = subprocess.run(["scontrol", "--oneliner", "show", "job", job], env=self.env,
                                   capture_output=True, text=True, check=True).stdout
            for line in shown.splitlines():
                fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
                task = fields.get("ArrayTaskId")
                states[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = fields["JobState"]
        return states

    def close(self) -> None:
        if hasattr(self, "env"):  # the cluster is private to this object: every job in it is ours
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
