"""A one-node Slurm cluster on this machine, for the tests and the benchmark: munged, slurmctld and
slurmd from Debian's packages, on loopback, with their own key, sockets, ports and spool, so they
meet no other Slurm or munge that runs here. slurmd launches jobs as their user, so it runs as root."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from machine import apt_install, free_ports

PACKAGES = {"sbatch": "slurm-wlm", "slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "munged": "munge"}
NODE = "lora-node"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def missing_tools() -> list[str]:
    return [tool for tool in PACKAGES if not (shutil.which(tool) or Path("/usr/sbin", tool).exists())]


def ensure_installed() -> str | None:
    """Install slurm-wlm and munge when missing and allowed; None when the cluster can run, else why
    not (a reason to skip): Slurm missing without root and apt-get to install it, or not root."""
    if missing_tools():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return (f"Slurm is not installed ({', '.join(missing_tools())} missing) and only root with apt-get "
                    "installs it (apt-get install slurm-wlm munge)")
        done = apt_install(sorted(set(PACKAGES.values())))
        if done.returncode or missing_tools():
            return f"apt-get could not install Slurm:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    if os.geteuid() != 0:
        return "Slurm is installed, but the one-node cluster's slurmd launches jobs as their user and must run as root"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _clean_environment() -> dict[str, str]:
    """This process's environment without a surrounding Slurm job's or sbatch's settings (SBATCH_*
    would become options of every sbatch call)."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_"))}


class Cluster:
    """Start with Cluster(folder, cpus); `env` is what sbatch and squeue need; close() stops all,
    jobs included."""

    def __init__(self, folder: Path, cpus: int = 2) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.logs = {name: folder / f"{name}.log" for name in ("munged", "slurmctld", "slurmd", "jobcomp")}
        self.conf = folder / "slurm.conf"
        self.env = dict(_clean_environment(), SLURM_CONF=str(self.conf))
        try:
            self._start_munge()
            self._write_conf(cpus)
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

    def _write_conf(self, cpus: int) -> None:
        host = socket.gethostname().split(".")[0]
        (self.folder / "state").mkdir(exist_ok=True)
        (self.folder / "spool").mkdir(exist_ok=True)
        controller_port, node_port = free_ports(2)
        # MinJobAge: no accounting database here, so finished jobs are seen with scontrol, kept a day.
        self.conf.write_text(f"""\
ClusterName=loratest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
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
JobCompType=jobcomp/filetxt
JobCompLoc={self.logs['jobcomp']}
MailProg=/bin/true
MinJobAge=86400
KillWait=10
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

    def _start(self, name: str, command: list[str]) -> None:
        with open(self.folder / f"{name}.stdout", "w") as log:
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                   stdin=subprocess.DEVNULL))

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def _wait(self, ready, what: str, seconds: float = 180) -> None:
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
            done = self._run("sinfo", "--noheader", "--format=%T")
            return done.returncode == 0 and done.stdout.strip() == "idle"
        self._wait(idle, "the node")

    def daemon_logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.stdout"))
                         if path.exists())

    def diagnostics(self, job_ids: list[str] = (), job_folder: Path | None = None) -> str:
        """What to read when jobs fail or hang: the queue, each job as slurmctld sees it, sacct (no
        accounting database here: the job completion log stands in), the jobs' own output files
        (job_folder/*.out), and the daemons' logs."""
        parts = []
        for command in (["squeue", "--all", "--format=%i %j %T %r %M %N"],
                        *(["scontrol", "show", "job", job] for job in job_ids),
                        ["sacct", "--allusers", "--format=JobID,JobName,State,ExitCode,Elapsed"]):
            done = self._run(*command)
            parts.append(f"--- {' '.join(command)} (exit {done.returncode})\n{done.stdout}{done.stderr}")
        outputs = sorted(Path(job_folder).glob("*.out")) if job_folder else []
        parts += [f"--- {path}\n{path.read_text(errors='replace')[-3000:]}" for path in outputs]
        return "\n".join(parts) + "\n" + self.daemon_logs()

    def wait_for_jobs(self, job_ids: list[str], seconds: float = 1800,
                      job_folder: Path | None = None) -> dict[str, str]:
        """{job id (array tasks as ID_K): final state}, once none of them is pending or running (or
        pending for a dependency that can never be met: the state says so)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            queued = self._run("squeue", "--noheader", "--format=%i %T %r", "--jobs", ",".join(job_ids))
            lines = [line.split(None, 2) for line in queued.stdout.splitlines() if line.strip()]
            if queued.returncode == 0 and all(state in FINISHED or reason == "DependencyNeverSatisfied"
                                              for _, state, reason in lines):
                return self.states(job_ids)
            time.sleep(2)
        raise AssertionError(f"jobs {job_ids} not done after {seconds:.0f} s:\n"
                             f"{self.diagnostics(job_ids, job_folder)}")

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """{job id (array tasks as ID_K): state}, as scontrol shows it (a job left pending for ever by a
        failed dependency: PENDING(DependencyNeverSatisfied))."""
        states = {}
        for job in job_ids:
            shown = self._run("scontrol", "--oneliner", "show", "job", job)
            if shown.returncode:
                states[job] = f"unknown: {shown.stderr.strip()}"
            for line in shown.stdout.splitlines():
                fields = dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", line))
                task = fields.get("ArrayTaskId")
                state = fields["JobState"] + (f"({fields['Reason']})" if fields["JobState"] == "PENDING" else "")
                states[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = state
        return states

    def times(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """{job id: (StartTime, EndTime)}, to the second, as scontrol shows them."""
        times = {}
        for job in job_ids:
            for line in self._run("scontrol", "--oneliner", "show", "job", job).stdout.splitlines():
                fields = dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", line))
                task = fields.get("ArrayTaskId")
                times[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = (fields["StartTime"],
                                                                                        fields["EndTime"])
        return times

    def _ours(self) -> list[int]:
        """Processes of this cluster's jobs (slurmstepd and what the jobs started), by the SLURM_CONF in
        their environment: the conf is this cluster's own, in its own folder."""
        marker = f"SLURM_CONF={self.conf}".encode()
        # Not the daemons, nor their helpers (slurmctld's slurmscriptd), nor this process's children.
        own = {process.pid for process in self.processes} | {os.getpid()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in own:
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent not in own and marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone, or not ours to read
        return found

    def close(self) -> None:
        """Cancel every job (the cluster is private to this object: every job in it is ours), wait for
        their processes to end, stop the daemons, and kill whatever a job left behind."""
        daemons_up = self.processes and all(process.poll() is None for process in self.processes)
        if daemons_up:
            self._run("scancel", "--full", f"--user={os.geteuid()}")
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                queued = self._run("squeue", "--noheader", "--format=%i")
                if (queued.returncode == 0 and not queued.stdout.strip()) or not self._ours():
                    break
                time.sleep(1)
        deadline = time.monotonic() + 30
        while self._ours() and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        for pid in self._ours():  # a job's process that outlived its job
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
