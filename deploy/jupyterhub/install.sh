#!/usr/bin/env bash
# Install the LoRA course on a JupyterHub machine, as root, from the course repository:
#   sudo deploy/jupyterhub/install.sh [COURSE_REPO]      (default: the repository this script is in)
# Makes two installs under $LORA_PREFIX (default /opt/lora-course):
#   instructor/  the full grader (hidden cases) and JupyterHub; readable by root and the instructors only
#   student/     the student bundle's wheel (no hidden cases, nothing that computes an answer), and
#                JupyterHub's single-user server; readable by everyone, shared by every student
# the groups of students and instructors (lora-students, lora-instructors), the nbgrader exchange
# $LORA_EXCHANGE (default /srv/nbgrader/exchange), the hub's folder $LORA_HUB_STATE (default
# /srv/jupyterhub), and in $LORA_PREFIX/etc the hub's configuration and a systemd unit that starts it.
# JupyterHub's proxy, configurable-http-proxy, comes from npm (Node.js and npm must be installed).
# PYTHON is the Python the installs are made from (default: python3); TORCH chooses the torch build
# (default: the CPU build, from PyTorch's own index).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "${1:-$here/../..}" && pwd)"
prefix="${LORA_PREFIX:-/opt/lora-course}"
exchange="${LORA_EXCHANGE:-/srv/nbgrader/exchange}"
state="${LORA_HUB_STATE:-/srv/jupyterhub}"
students="${LORA_STUDENT_GROUP:-lora-students}"
instructors="${LORA_INSTRUCTOR_GROUP:-lora-instructors}"
python="${PYTHON:-python3}"
torch="${TORCH:-torch --index-url https://download.pytorch.org/whl/cpu}"
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it makes groups and installs for every user)" >&2; exit 2; }
command -v npm >/dev/null || { echo "install.sh: npm is missing (Debian, Ubuntu: apt-get install nodejs npm)" >&2; exit 2; }

groupadd -f "$students"
groupadd -f "$instructors"
umask 022
mkdir -p "$prefix"
chmod 755 "$prefix"

# JupyterHub's proxy, from npm (the hub finds it on root's PATH).
command -v configurable-http-proxy >/dev/null || npm install --global --silent configurable-http-proxy

venv() {  # venv DIR GROUP MODE: a fresh virtual environment with torch in it
    rm -rf "$1"
    install -d -g "$2" -m "$3" "$1"  # the instructors' is closed to others from the start
    "$python" -m venv "$1"
    "$1/bin/pip" install --quiet --upgrade pip
    # shellcheck disable=SC2086  # TORCH may carry pip options
    "$1/bin/pip" install --quiet $torch
}

venv "$prefix/instructor" "$instructors" 750
"$prefix/instructor/bin/pip" install --quiet "$repo[hub]"

bundle="$(mktemp -d)"
trap 'rm -rf "$bundle"' EXIT
(cd "$repo" && "$prefix/instructor/bin/lora-bundle" --out "$bundle" >/dev/null)
hub_version="$("$prefix/instructor/bin/python" -c 'import jupyterhub; print(jupyterhub.__version__)')"
venv "$prefix/student" root 755
"$prefix/student/bin/pip" install --quiet "$bundle"/lora-course/*.whl "jupyterhub==$hub_version"
# What add-user.sh puts beside each student's notebooks: the bundle's self-check.
mkdir -p "$prefix/student/share/lora-course"
cp -r "$bundle/lora-course/autograder" "$bundle/lora-course/pytest.ini" "$prefix/student/share/lora-course/"
# A student's JupyterLab has nbgrader's Assignments tab and Validate button, not the instructor's tools.
for plugin in formgrader create-assignment course-list; do
    "$prefix/student/bin/jupyter" labextension disable --level=sys_prefix "@jupyter/nbgrader:$plugin" >/dev/null
done
for extension in formgrader course_list; do
    "$prefix/student/bin/jupyter" server extension disable --sys-prefix "nbgrader.server_extensions.$extension" >/dev/null
done

for install in instructor student; do
    mkdir -p "$prefix/$install/etc/jupyter" "$prefix/$install/share/jupyter/lab/settings"
    cp "$here/nbgrader_config.py" "$prefix/$install/etc/jupyter/nbgrader_config.py"
    # No pop-up asking each user whether JupyterLab may fetch news from the internet.
    cp "$here/lab-overrides.json" "$prefix/$install/share/jupyter/lab/settings/overrides.json"
    # Terminals run bash as it is, not as a login shell: a login shell's /etc/profile would put the
    # system's PATH back, and `pytest`, `nbgrader` and `lora-grade` would not be this install's.
    cp "$here/server-config.json" "$prefix/$install/etc/jupyter/jupyter_server_config.json"
done
chown -R "root:$instructors" "$prefix/instructor"
chmod -R o-rwx "$prefix/instructor"  # the hidden cases and the answers stay with the instructors
chmod -R a+rX "$prefix/student"

# nbgrader wants the exchange root writable by all (0777); the sticky bit stops a student from
# renaming the course's folder away. add-user.sh gives the course's folder to its instructor.
mkdir -p "$exchange"
chmod 1777 "$exchange"

# The hub: its database and cookie secret in $state (root's only), its configuration and a systemd
# unit in $prefix/etc, with this install's paths.
install -d -m 700 "$state"
install -d -m 755 "$prefix/etc"
install -m 644 "$here/jupyterhub_config.py" "$prefix/etc/jupyterhub_config.py"
cat >"$prefix/etc/lora-hub.service" <<EOF
[Unit]
Description=JupyterHub for the LoRA course
After=network.target

[Service]
User=root
WorkingDirectory=$state
Environment=LORA_PREFIX=$prefix LORA_EXCHANGE=$exchange LORA_HUB_STATE=$state LORA_STUDENT_GROUP=$students LORA_INSTRUCTOR_GROUP=$instructors LORA_COURSE_ID=${LORA_COURSE_ID:-lora-course}
ExecStart=$prefix/instructor/bin/jupyterhub -f $prefix/etc/jupyterhub_config.py
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOF
echo "installed: $prefix/instructor (instructors), $prefix/student (students); exchange $exchange"
echo "start the hub: systemctl enable --now $prefix/etc/lora-hub.service"
