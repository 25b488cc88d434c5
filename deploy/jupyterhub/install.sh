#!/usr/bin/env bash
# Install the LoRA course on a JupyterHub machine, as root, from the course repository:
#   sudo deploy/jupyterhub/install.sh [COURSE_REPO]      (default: the repository this script is in)
# Makes two installs under $LORA_PREFIX (default /opt/lora-course):
#   instructor/  the full grader (hidden cases) and JupyterHub; readable by root and lora-instructors only
#   student/     the student bundle's wheel (no hidden cases, nothing that computes an answer), and
#                JupyterHub's single-user server; readable by everyone, shared by every student
# and the nbgrader exchange $LORA_EXCHANGE (default /srv/nbgrader/exchange).
# TORCH chooses the torch build (default: the CPU build, from PyTorch's own index).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "${1:-$here/../..}" && pwd)"
prefix="${LORA_PREFIX:-/opt/lora-course}"
exchange="${LORA_EXCHANGE:-/srv/nbgrader/exchange}"
python="${PYTHON:-python3}"
torch="${TORCH:-torch --index-url https://download.pytorch.org/whl/cpu}"
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it makes groups and installs for every user)" >&2; exit 2; }

groupadd -f lora-students
groupadd -f lora-instructors
umask 022
mkdir -p "$prefix"
chmod 755 "$prefix"

venv() {  # venv DIR: a fresh virtual environment with torch in it
    rm -rf "$1"
    "$python" -m venv "$1"
    "$1/bin/pip" install --quiet --upgrade pip
    # shellcheck disable=SC2086  # TORCH may carry pip options
    "$1/bin/pip" install --quiet $torch
}

venv "$prefix/instructor"
"$prefix/instructor/bin/pip" install --quiet "$repo[hub]"
chown -R root:lora-instructors "$prefix/instructor"
chmod -R o-rwx "$prefix/instructor"  # the hidden cases stay with the instructors

bundle="$(mktemp -d)"
trap 'rm -rf "$bundle"' EXIT
(cd "$repo" && "$prefix/instructor/bin/lora-bundle" --out "$bundle" >/dev/null)
hub_version="$("$prefix/instructor/bin/python" -c 'import jupyterhub; print(jupyterhub.__version__)')"
venv "$prefix/student"
"$prefix/student/bin/pip" install --quiet "$bundle"/lora-course/*.whl "jupyterhub==$hub_version"
# What add-user.sh puts beside each student's notebooks: the bundle's self-check.
mkdir -p "$prefix/student/share/lora-course"
cp -r "$bundle/lora-course/autograder" "$bundle/lora-course/pytest.ini" "$prefix/student/share/lora-course/"

for install in instructor student; do
    mkdir -p "$prefix/$install/etc/jupyter"
    cp "$here/nbgrader_config.py" "$prefix/$install/etc/jupyter/nbgrader_config.py"
done
chmod -R a+rX "$prefix/student"

# nbgrader wants the exchange root writable by all (0777); the sticky bit stops a student from
# renaming the course's folder away.
mkdir -p "$exchange"
chmod 1777 "$exchange"
echo "installed: $prefix/instructor (instructors), $prefix/student (students); exchange $exchange"
