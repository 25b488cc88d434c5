"""JupyterHub for the LoRA course, on one machine (see the README, "Running the course on a JupyterHub").

Every user is a Unix user, logged in with the system's passwords (PAM). Members of the group
lora-students get a server from the student install (the bundle's wheel: no hidden cases), members
of lora-instructors one from the full install, which students cannot read. install.sh and
add-user.sh beside this file make the installs, the groups and the users.

Paths and group names come from the environment (install.sh writes them into the systemd unit) so
that a test can run a second hub beside a real one; the defaults are what install.sh uses.
"""
import grp
import os
import pwd

c = get_config()  # noqa: F821 (provided by JupyterHub)

PREFIX = os.environ.get("LORA_PREFIX", "/opt/lora-course")
EXCHANGE = os.environ.get("LORA_EXCHANGE", "/srv/nbgrader/exchange")
COURSE_ID = os.environ.get("LORA_COURSE_ID", "lora-course")
STATE = os.environ.get("LORA_HUB_STATE", "/srv/jupyterhub")
STUDENTS = os.environ.get("LORA_STUDENT_GROUP", "lora-students")
INSTRUCTORS = os.environ.get("LORA_INSTRUCTOR_GROUP", "lora-instructors")

c.JupyterHub.bind_url = "http://:8000"  # behind a TLS proxy, or JupyterHub's own ssl_key and ssl_cert
c.JupyterHub.db_url = f"sqlite:///{STATE}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{STATE}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{STATE}/jupyterhub-proxy.pid"

c.JupyterHub.authenticator_class = "pam"
# Groups, not a list of names: a user added to a group may log in without restarting the hub.
c.Authenticator.allowed_groups = {STUDENTS, INSTRUCTORS}
c.Authenticator.admin_groups = {INSTRUCTORS}
c.PAMAuthenticator.open_sessions = False  # no systemd-logind session per server: none is needed

c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
# A busy machine (torch imports, many students logging in at the start of a class) starts servers slowly.
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 120


def _in_group(name: str, group: str) -> bool:
    entry = grp.getgrnam(group)
    return name in entry.gr_mem or pwd.getpwnam(name).pw_gid == entry.gr_gid


def choose_install(spawner) -> None:
    """Each server runs from its role's install, and its terminals find that install's
    commands (`pytest`, `nbgrader`, `lora-grade`) first."""
    name = spawner.user.name
    venv = f"{PREFIX}/instructor" if _in_group(name, INSTRUCTORS) else f"{PREFIX}/student"
    spawner.cmd = [f"{venv}/bin/jupyterhub-singleuser"]
    spawner.environment = {
        **spawner.environment,
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": venv,
        # Read by the course's nbgrader_config.py files (the instructor's and the students').
        "LORA_EXCHANGE": EXCHANGE,
        "LORA_COURSE_ID": COURSE_ID,
    }


c.Spawner.pre_spawn_hook = choose_install
