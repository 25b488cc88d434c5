#!/usr/bin/env bash
# Grade the class in submitted/ on a Slurm cluster: N array tasks, then the merge once all of
# them succeeded (cancelled if one failed: its output says why; submit again, and only what was
# not graded yet is graded). Run from the course folder, on a filesystem every node mounts, with
# LORA_VENV naming the course's venv there (or that venv activated); further arguments go to
# both sbatch calls:
#   LORA_VENV=/shared/course/venv deploy/slurm/submit.sh 8 --partition=short
# Prints the array's job id, then the merge's.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
shards="${1:?usage: submit.sh N [sbatch options...]}"
shift
[ -d submitted ] || { echo "submit.sh: no submitted/ here: run it from the course folder" >&2; exit 2; }
array="$(sbatch --parsable --array="1-$shards" --export="ALL,LORA_SHARDS=$shards" "$@" "$here/grade-shard.sbatch")"
array="${array%%;*}"  # --parsable may append the cluster's name
echo "$array"
merge="$(sbatch --parsable --dependency="afterok:$array" --kill-on-invalid-dep=yes \
    --export="ALL,LORA_SHARDS=$shards" "$@" "$here/merge.sbatch")"
echo "${merge%%;*}"
