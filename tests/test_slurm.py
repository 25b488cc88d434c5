"""deploy/slurm/ run by Slurm itself: a one-node cluster on loopback (tests/slurm_cluster.py)
grades a class from the catalogue with `deploy/slurm/submit.sh`, an array task per shard and the
merge after them, and the merged outputs are byte for byte those of one `lora-grade autograde`.

The jobs find lora-grade as an instructor's do on a real cluster: LORA_VENV names the venv (here
the one running this test), not the PATH. Slurm and munge are installed from Debian's packages
when missing (as root); without them and without root, the test is skipped.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import slurm_cluster
from catalogue_class import plan_class, write_class
from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.grade import in_shard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the waits below say what went wrong first

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "deploy" / "slurm" / "submit.sh"
SHARDS = 3  # of one CPU each, on a node of 2: two run at once and the third waits for a CPU
UNTOUCHED = "untouched"  # hands in the released notebooks as they are
LORA_GRADE = Path(sys.prefix, "bin", "lora-grade")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.ensure_installed()
    if why:
        pytest.skip(why)
    if not LORA_GRADE.exists():
        pytest.skip(f"lora-grade is not installed in this Python's environment ({sys.prefix}), which the jobs use")
    started = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"), cpus=2)
    try:
        yield started
    finally:
        started.close()


def build_class(submitted: Path) -> dict[str, str]:
    """Four complete students, four with one or two catalogued bugs, one untouched; {name: kind}."""
    plans = plan_class(8)
    write_class(plans, submitted)
    for notebook in NOTEBOOKS.values():
        (submitted / UNTOUCHED / "lora").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "course" / "lora" / notebook.filename, submitted / UNTOUCHED / "lora")
    return {**{plan.name: "buggy" if plan.bugs else "complete" for plan in plans}, UNTOUCHED: "untouched"}


def files(folder: Path, leave_out: set[str] = frozenset()) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*")
            if path.is_file() and path.relative_to(folder).parts[0] not in leave_out}


def test_the_array_job_and_its_merge_write_byte_for_byte_what_one_run_writes(cluster, tmp_path):
    single, course = tmp_path / "single", tmp_path / "course"
    students = build_class(single / "submitted")
    shutil.copytree(single / "submitted", course / "submitted")
    shard_students = {k: {name for name in students if in_shard(name, (k, SHARDS))} for k in range(1, SHARDS + 1)}
    assert all(shard_students.values()), f"every shard has students to grade: {shard_students}"

    # As an instructor submits: from the course folder, LORA_VENV naming the venv; the venv is not on
    # the PATH, so the jobs find lora-grade through LORA_VENV or not at all.
    path = os.pathsep.join(part for part in cluster.env.get("PATH", "").split(os.pathsep)
                           if Path(part) != Path(sys.prefix, "bin"))
    env = dict(cluster.env, LORA_VENV=sys.prefix, PATH=path)
    submitted = subprocess.run([str(SUBMIT), str(SHARDS), "--cpus-per-task=1"], cwd=course, env=env,
                               capture_output=True, text=True)
    assert submitted.returncode == 0, (f"submit.sh exited {submitted.returncode}:\n{submitted.stdout}\n"
                                       f"{submitted.stderr}\n{cluster.diagnostics()}")
    array, merge = submitted.stdout.split()
    # The single run while the jobs run: both start from lora_grader/ as it is now (results.json holds
    # a fingerprint of its code), even in a checkout being edited meanwhile.
    done = subprocess.run([str(LORA_GRADE), "autograde", "--no-progress"], cwd=single, capture_output=True, text=True)
    assert done.returncode == 0, f"lora-grade autograde exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    states = cluster.wait_for_jobs([array, merge], seconds=2400, job_folder=course)
    expected = {**{f"{array}_{k}": "COMPLETED" for k in range(1, SHARDS + 1)}, merge: "COMPLETED"}
    assert states == expected, f"job states {states}:\n{cluster.diagnostics([array, merge], course)}"

    for k in range(1, SHARDS + 1):
        said = (course / f"slurm-lora-grade-{array}_{k}.out").read_text()
        assert said.startswith(f"shard {k} of {SHARDS} on ") and f", 1 CPUs, {LORA_GRADE}\n" in said, said
        record = json.loads((course / "lora_grading" / f"shard-{k}-of-{SHARDS}" / "results.json").read_text())
        assert set(record["students"]) == shard_students[k], f"shard {k}"
    said = (course / f"slurm-lora-merge-{merge}.out").read_text()
    assert f"merged {SHARDS} shards, {len(students)} students" in said, said

    ours, theirs = single / "lora_grading", course / "lora_grading"
    shard_folders = {f"shard-{k}-of-{SHARDS}" for k in range(1, SHARDS + 1)}
    merged, single_run = files(theirs, leave_out=shard_folders), files(ours)
    assert merged == single_run, (f"the same files, beside the shards' folders: only merged {merged - single_run}, "
                                  f"only in the single run {single_run - merged}")
    differ = sorted(str(name) for name in files(ours) if (ours / name).read_bytes() != (theirs / name).read_bytes())
    graders = {json.loads((folder / "results.json").read_text())["grader"] for folder in (ours, theirs)}
    assert not differ, (f"{len(differ)} files differ: {differ}" + (
        "; the grader's fingerprint differs too: lora_grader/ was edited between the two runs" if len(graders) > 1
        else ""))

    with open(ours / "grades.csv", encoding="utf-8", newline="") as file:
        totals = {row["student"]: (int(row["total"]), int(row["max"])) for row in csv.DictReader(file)}
    assert set(totals) == set(students)
    for name, kind in students.items():  # a class worth comparing: neither all zero nor all full marks
        got, out_of = totals[name]
        assert {"complete": got == out_of, "buggy": 0 < got < out_of, "untouched": got == 0}[kind], (name, kind, got)
