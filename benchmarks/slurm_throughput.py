"""Notebooks graded per minute through Slurm (deploy/slurm/submit.sh: an array task per shard, then
the merge) against one `lora-grade autograde` run, on the same class.

The class is built from the catalogue (tests/catalogue_class.py: of every ten students four
complete, four with catalogued bugs, two who need a look). Slurm is the one-node cluster of
tests/slurm_cluster.py (installed from Debian's packages when missing, as root), with as many CPUs
as this machine has; each layout N×C is `submit.sh N --cpus-per-task=C`, timed from the submission
until the merge has finished, and its merged grades.csv and results.json are checked against the
single run's. A measurement to report, not a test: a busy machine makes every figure slower.

    python benchmarks/slurm_throughput.py [--size 20] [--layouts 1x2 2x1 2x2] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import slurm_cluster  # noqa: E402
from catalogue_class import plan_class, write_class  # noqa: E402

LORA_GRADE = Path(sys.prefix, "bin", "lora-grade")
SUBMIT = ROOT / "deploy" / "slurm" / "submit.sh"


def single_run(course: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(LORA_GRADE), "autograde", "--no-progress"], cwd=course, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def slurm_run(cluster: slurm_cluster.Cluster, course: Path, shards: int, cpus: int) -> tuple[float, str]:
    """Seconds from the submission until the merge finished; what scontrol says of the tasks' times."""
    start = time.perf_counter()
    submitted = subprocess.run([str(SUBMIT), str(shards), f"--cpus-per-task={cpus}"], cwd=course, check=True,
                               env=dict(cluster.env, LORA_VENV=sys.prefix), capture_output=True, text=True)
    jobs = submitted.stdout.split()
    states = cluster.wait_for_jobs(jobs, seconds=7200, job_folder=course)
    seconds = time.perf_counter() - start
    if set(states.values()) != {"COMPLETED"}:
        raise SystemExit(f"{shards}x{cpus}: {states}\n{cluster.diagnostics(jobs, course)}")
    times = cluster.times(jobs)
    spans = [f"{job}: {start[11:]}-{end[11:]}" for job, (start, end) in sorted(times.items())]
    return seconds, ", ".join(spans)


def compare(single: Path, merged: Path) -> str:
    """"" when the merged outputs are the single run's, byte for byte; else how they differ."""
    ours, theirs = single / "lora_grading", merged / "lora_grading"
    if all((ours / name).read_bytes() == (theirs / name).read_bytes() for name in ("grades.csv", "results.json")):
        return ""
    records = [json.loads((folder / "results.json").read_text()) for folder in (ours, theirs)]
    if records[0]["grader"] != records[1]["grader"] and records[0]["students"] == records[1]["students"]:
        return "same verdicts, but lora_grader/ was edited between the runs (its fingerprint differs)"
    raise SystemExit(f"{merged.name}: the merged outputs differ from the single run's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20, help="students in the class (default 20)")
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "2x2"],
                        help="N×C: N shards of C CPUs each (default 1x2 2x1 2x2)")
    parser.add_argument("--repeat", type=int, default=1, help="times each measurement is taken (default 1)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                        help="CPUs of the node (default: this machine's)")
    args = parser.parse_args()
    why = slurm_cluster.ensure_installed()
    if why:
        raise SystemExit(why)
    layouts = [tuple(map(int, layout.split("x"))) for layout in args.layouts]
    with tempfile.TemporaryDirectory(prefix="slurm-throughput-") as folder:
        root = Path(folder)
        write_class(plan_class(args.size), root / "submitted")
        notebooks = sum(1 for _ in (root / "submitted").rglob("*.ipynb"))
        print(f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores; a class of {args.size} students, "
              f"{notebooks} notebooks handed in; load average {os.getloadavg()[0]:.1f} at the start")
        start = time.perf_counter()
        cluster = slurm_cluster.Cluster(root / "slurm", cpus=args.cpus)
        print(f"the one-node cluster ({args.cpus} CPUs) started in {time.perf_counter() - start:.1f} s")
        rows = []
        try:
            for attempt in range(args.repeat):
                single = root / f"single-{attempt}"
                shutil.copytree(root / "submitted", single / "submitted")
                load = os.getloadavg()[0]
                seconds = single_run(single)
                rows.append(("lora-grade autograde (--jobs 2)", seconds, load, ""))
                print(f"  single run: {seconds:.0f} s, {notebooks / seconds * 60:.1f} notebooks/min (load {load:.1f})",
                      flush=True)
                for shards, cpus in layouts:
                    course = root / f"slurm-{shards}x{cpus}-{attempt}"
                    shutil.copytree(root / "submitted", course / "submitted")
                    load = os.getloadavg()[0]
                    seconds, spans = slurm_run(cluster, course, shards, cpus)
                    note = compare(single, course)
                    rows.append((f"submit.sh {shards} --cpus-per-task={cpus}", seconds, load, spans))
                    print(f"  {shards}x{cpus}: {seconds:.0f} s, {notebooks / seconds * 60:.1f} notebooks/min "
                          f"(load {load:.1f}; {spans}){'; ' + note if note else ''}", flush=True)
        finally:
            cluster.close()
    print("\n| how | seconds | notebooks/min | load average at the start |\n|---|---|---|---|")
    for how, seconds, load, _ in rows:
        print(f"| `{how}` | {seconds:.0f} | {notebooks / seconds * 60:.1f} | {load:.1f} |")


if __name__ == "__main__":
    main()
