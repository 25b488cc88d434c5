#!/usr/bin/env bash
# Add users to the course hub, as root, after install.sh:
#   sudo deploy/jupyterhub/add-user.sh student alice bob ...
#   sudo deploy/jupyterhub/add-user.sh instructor carol
# Makes each a Unix user (if new) with a home only they can read, in the role's group. Set a
# password with `passwd NAME` (the hub logs in with PAM). A student's home gets the self-check
# (~/autograder, ~/pytest.ini; nbgrader fetches into ~/course). The instructor gets the course
# folder, ~/lora-course, a copy of this repository, and the course's folder in the exchange.
set -euo pipefail

prefix="${LORA_PREFIX:-/opt/lora-course}"
exchange="${LORA_EXCHANGE:-/srv/nbgrader/exchange}"
course_id="${LORA_COURSE_ID:-lora-course}"
students="${LORA_STUDENT_GROUP:-lora-students}"
instructors="${LORA_INSTRUCTOR_GROUP:-lora-instructors}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
role="${1:-}"
case "$role" in student|instructor) shift ;; *) echo "usage: add-user.sh student|instructor NAME..." >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "add-user.sh: run as root (it makes users)" >&2; exit 2; }
[ -d "$prefix/student/share/lora-course" ] || { echo "add-user.sh: run install.sh first ($prefix)" >&2; exit 2; }

copy_repository() {  # copy_repository DEST: the files git tracks (and new ones it does not ignore)
    if git -c safe.directory="$repo" -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        mkdir -p "$1"
        git -c safe.directory="$repo" -C "$repo" ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' file; do
                if [ -e "$repo/$file" ] || [ -L "$repo/$file" ]; then printf '%s\0' "$file"; fi
            done | tar -C "$repo" --create --null --files-from=- | tar -C "$1" --extract
    else
        cp -a "$repo" "$1"
    fi
}

for name in "$@"; do
    id "$name" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$name"
    home="$(getent passwd "$name" | cut -d: -f6)"
    chmod 700 "$home"  # useradd's default may let every user read it
    if [ "$role" = student ]; then
        usermod -a -G "$students" "$name"
        # The bundle's layout: ~/course/<assignment> (nbgrader fetches there), ~/autograder, ~/pytest.ini.
        install -d -o "$name" -g "$name" -m 700 "$home/course"
        rm -rf "$home/autograder"
        cp -r "$prefix/student/share/lora-course/autograder" "$prefix/student/share/lora-course/pytest.ini" "$home/"
        chown -R "$name:$name" "$home/autograder" "$home/pytest.ini"
    else
        usermod -a -G "$instructors" "$name"
        install -d -o "$name" -g "$name" -m 700 "$home/.jupyter"
        install -o "$name" -g "$name" -m 644 "$here/instructor_nbgrader_config.py" "$home/.jupyter/nbgrader_config.py"
        if [ ! -e "$home/lora-course" ]; then  # never over an instructor's own work
            copy_repository "$home/lora-course"
            chown -R "$name:$name" "$home/lora-course"
        fi
        # The course's folder in the exchange belongs to its instructor before any student can take
        # the name. Its inbound/ gets the sticky bit, which nbgrader's own (0733) lacks: a student
        # may add a submission there, but not rename or delete another's.
        if [ ! -e "$exchange/$course_id" ]; then
            install -d -o "$name" -g "$name" -m 755 "$exchange/$course_id" "$exchange/$course_id/outbound"
            install -d -o "$name" -g "$name" -m 1733 "$exchange/$course_id/inbound"
            install -d -o "$name" -g "$name" -m 711 "$exchange/$course_id/feedback"
        fi
    fi
    echo "$role $name: $home"
done
