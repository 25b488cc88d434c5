#!/usr/bin/env bash
# Add users to the course hub, as root:
#   sudo deploy/jupyterhub/add-user.sh student alice bob ...
#   sudo deploy/jupyterhub/add-user.sh instructor carol
# Makes each a Unix user (if new) with a home only they can read, in the role's group. Set a
# password with `passwd NAME` (the hub logs in with PAM).
set -euo pipefail

prefix="${LORA_PREFIX:-/opt/lora-course}"
exchange="${LORA_EXCHANGE:-/srv/nbgrader/exchange}"
course_id="${LORA_COURSE_ID:-lora-course}"
here="$(cd "$(dirname "$0")" && pwd)"
role="${1:-}"
case "$role" in student|instructor) shift ;; *) echo "usage: add-user.sh student|instructor NAME..." >&2; exit 2 ;; esac

for name in "$@"; do
    id "$name" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$name"
    home="$(getent passwd "$name" | cut -d: -f6)"
    chmod 700 "$home"  # useradd's default may let every user read it
    if [ "$role" = student ]; then
        usermod -a -G lora-students "$name"
        # The bundle's layout: ~/course/<assignment> (nbgrader fetches there), ~/autograder, ~/pytest.ini.
        install -d -o "$name" -g "$name" -m 700 "$home/course"
        cp -r "$prefix/student/share/lora-course/autograder" "$prefix/student/share/lora-course/pytest.ini" "$home/"
        chown -R "$name:$name" "$home/autograder" "$home/pytest.ini"
    else
        usermod -a -G lora-instructors "$name"
        install -d -o "$name" -g "$name" -m 700 "$home/.jupyter"
        install -o "$name" -g "$name" -m 644 "$here/instructor_nbgrader_config.py" "$home/.jupyter/nbgrader_config.py"
        # The course's folder in the exchange belongs to its instructor before any student can take the name.
        install -d -o "$name" -g "$name" -m 755 "$exchange/$course_id"
    fi
    echo "$role $name: $home"
done
