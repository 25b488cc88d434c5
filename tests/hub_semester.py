"""The course hub of deploy/jupyterhub/ on this machine, for tests/test_jupyterhub.py: installed by
install.sh, its users made by add-user.sh, the hub started by the command of the systemd unit that
install.sh writes, on loopback ports of its own. Everything the test makes (installs, Unix users
and groups, the exchange, the hub and every process of its users) is removed by close().

The hub runs users' servers as their Unix users, so all this needs root; the tools it needs (Node.js
and npm for the proxy, Debian's Python with venv, Chromium) are installed with apt-get when missing.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from machine import apt_install, free_ports

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "jupyterhub"
PYTHON = "/usr/bin/python3"  # Debian's: every user can run it (the default python3 may live under /root)
# What the machine needs, as a command and the Debian package that brings it.
TOOLS = {"node": "nodejs", "npm": "npm", "chromium": "chromium", "runuser": "util-linux", "chpasswd": "passwd"}
# The environment systemd gives a service: the hub's, as the unit starts it.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# An existing install of install.sh to reuse (its etc/lora-hub.service names the rest), for quicker
# runs while working on the test; CI installs afresh.
REUSE = "LORA_HUB_TEST_PREFIX"
README_SECTION = "### Running the course on a JupyterHub"


def readme_commands(containing: str) -> list[str]:
    """The lines of the README hub section's ```bash block that holds `containing`, without comments."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(README_SECTION):]
    section = section[:section.index("\n### ")]
    blocks = [block for block in re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", section, flags=re.M | re.S)
              if containing in block]
    assert len(blocks) == 1, f"the README's hub section should have one block with {containing!r}"
    lines = (re.sub(r"(^|\s+)#.*$", "", line).strip() for line in blocks[0].splitlines())
    return [line for line in lines if line]


def _missing() -> list[str]:
    missing = [package for tool, package in TOOLS.items() if not shutil.which(tool)]
    if subprocess.run([PYTHON, "-c", "import ensurepip, venv"], capture_output=True).returncode:
        missing.append("python3-venv")
    return sorted(set(missing))


def ensure_installed() -> str | None:
    """Install what the hub needs when missing; None when it can run, else why not (a reason to skip)."""
    if os.geteuid() != 0:
        return "the hub test needs root: the hub runs each user's server as their Unix user, and the test makes those users"
    if not Path(PYTHON).exists():
        return f"no {PYTHON} (Debian's Python), which the installs are made from"
    if missing := _missing():
        if not shutil.which("apt-get"):
            return f"missing {', '.join(missing)}, and no apt-get to install them"
        done = apt_install(missing)
        if done.returncode or _missing():
            return f"apt-get could not install {', '.join(missing)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return None


def unit(path: Path) -> dict:
    """The systemd unit's WorkingDirectory, Environment (as a dict) and ExecStart (as argv)."""
    fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {"cwd": fields["WorkingDirectory"], "argv": shlex.split(fields["ExecStart"]),
            "env": dict(item.split("=", 1) for item in shlex.split(fields["Environment"]))}


class User:
    def __init__(self, name: str, role: str) -> None:
        self.name, self.role, self.password = name, role, secrets.token_urlsafe(12)

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.name).pw_dir)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid


class Hub:
    """Install (or reuse) the course hub, add `students` and `instructors` (names get a suffix of
    this run), start the hub; `url` is its address, `log` its output. close() undoes everything."""

    def __init__(self, folder: Path, students: list[str], instructors: list[str]) -> None:
        self.folder, self.log = folder, folder / "jupyterhub.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.suffix = secrets.token_hex(2)
        self.users = {name: User(f"{name}-{self.suffix}", role) for role, names in
                      (("student", students), ("instructor", instructors)) for name in names}
        self.made_users: list[str] = []
        self.made_groups: list[str] = []
        self.root: Path | None = None  # the folder of a fresh install, removed by close()
        self.process: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}
        try:
            self._install()
            self._add_users()
            self._start()
        except BaseException:
            self.close()
            raise

    # --- the install, as the README's hub section does it --------------------------------------------
    def _install(self) -> None:
        start = time.monotonic()
        if os.environ.get(REUSE):
            self.prefix = Path(os.environ[REUSE])
        else:
            # Under /var/tmp, not pytest's folder (root's alone): every user must reach the installs.
            self.root = Path(tempfile.mkdtemp(prefix="lora-hub-", dir="/var/tmp"))
            self.root.chmod(0o755)
            self.prefix = self.root / "prefix"
            env = dict(os.environ, LORA_PREFIX=str(self.prefix), LORA_EXCHANGE=str(self.root / "exchange"),
                       LORA_HUB_STATE=str(self.root / "state"), LORA_COURSE_ID="lora-course",
                       LORA_STUDENT_GROUP=f"lora-students-{self.suffix}",
                       LORA_INSTRUCTOR_GROUP=f"lora-instructors-{self.suffix}",
                       # Debian's Python, and the CPU build of torch that lies on this machine's disk.
                       PYTHON=PYTHON, TORCH="torch==2.13.0")
            self.made_groups = [env["LORA_STUDENT_GROUP"], env["LORA_INSTRUCTOR_GROUP"]]
            self._run_logged("install", ["bash", str(DEPLOY / "install.sh")], env)
        self.unit = unit(self.prefix / "etc" / "lora-hub.service")
        self.env = self.unit["env"]
        self.exchange = Path(self.env["LORA_EXCHANGE"]) / self.env["LORA_COURSE_ID"]
        self.timings["install"] = time.monotonic() - start

    def _run_logged(self, name: str, argv: list[str], env: dict) -> None:
        log = self.folder / f"{name}.log"
        with open(log, "w") as out:
            done = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{log.read_text()[-5000:]}"

    def _add_users(self) -> None:
        env = dict(os.environ, **self.env)
        for role in ("instructor", "student"):
            names = [user.name for user in self.users.values() if user.role == role]
            fresh = [name for name in names if not _exists(name)]
            self.made_users += fresh
            self._run_logged(f"add-{role}s", ["bash", str(DEPLOY / "add-user.sh"), role, *names], env)
        passwords = "".join(f"{user.name}:{user.password}\n" for user in self.users.values())
        subprocess.run(["chpasswd"], input=passwords, text=True, check=True)

    def _start(self) -> None:
        public, hub_api, proxy_api = free_ports(3)
        self.url = f"http://127.0.0.1:{public}"
        # The unit's command, with ports of this test's own and on loopback only.
        argv = [*self.unit["argv"], f"--JupyterHub.bind_url={self.url}",
                f"--JupyterHub.hub_bind_url=http://127.0.0.1:{hub_api}",
                f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{proxy_api}"]
        env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", **self.env}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(argv, cwd=self.unit["cwd"], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the hub exited {self.process.returncode}:\n{self.log.read_text()[-5000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/hub/api", timeout=5) as answer:
                    json.load(answer)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the hub did not answer within 120 s:\n{self.log.read_text()[-5000:]}")

    # --- as a user -------------------------------------------------------------------------------------
    def run_as(self, user: User, command: str) -> subprocess.CompletedProcess:
        """`command` in bash as `user`, with a login's bare environment."""
        return subprocess.run(
            ["runuser", "-u", user.name, "--", "env", "-i", f"HOME={user.home}", f"USER={user.name}",
             f"LOGNAME={user.name}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "bash", "-c", command],
            cwd="/", capture_output=True, text=True, timeout=120)

    # --- the end ---------------------------------------------------------------------------------------
    def _pids_of_users(self) -> list[int]:
        uids = {pwd.getpwnam(name).pw_uid for name in self.made_users if _exists(name)}
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid in uids:
                        pids.append(int(entry.name))
                except FileNotFoundError:
                    pass
        return pids

    def close(self) -> None:
        """Stop the hub (it stops the proxy and the users' servers), kill what the test's users still
        run, and remove the users, their groups and homes, the exchange and a fresh install."""
        start = time.monotonic()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if self.process:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the proxy, if the hub left it running
            except ProcessLookupError:
                pass
            self.process.wait()
        proxy_pid = Path(self.env["LORA_HUB_STATE"], "jupyterhub-proxy.pid") if hasattr(self, "env") else None
        if proxy_pid and proxy_pid.exists():
            _kill_if(int(proxy_pid.read_text().strip() or 0), "configurable-http-proxy")
        for pid in self._pids_of_users():  # servers, kernels and terminals of the test's own users
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while self._pids_of_users() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.timings["stop"] = time.monotonic() - start
        for name in self.made_users:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        for group in self.made_groups:
            subprocess.run(["groupdel", group], capture_output=True)
        if hasattr(self, "env"):
            shutil.rmtree(self.exchange, ignore_errors=True)
            for name in ("jupyterhub.sqlite", "jupyterhub_cookie_secret", "jupyterhub-proxy.pid"):
                Path(self.env["LORA_HUB_STATE"], name).unlink(missing_ok=True)
        if self.root:  # two venvs of 1.7 GB each
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], capture_output=True)
        self.timings["teardown"] = time.monotonic() - start
        (self.folder / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in self.timings.items()}))


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _kill_if(pid: int, command: str) -> None:
    """Kill `pid` if it still runs `command` (a pid file may outlive its process)."""
    try:
        if command in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
