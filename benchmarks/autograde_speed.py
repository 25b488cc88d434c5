"""How long grading one complete submission takes: `pytest autograder` against `nbgrader autograde`,
and against the floor, `python -c "import torch"`, which any grader that runs student code in a
fresh process pays.

`pytest autograder` runs in both sandbox modes (fork, the default on Linux; spawn, a fresh process
per notebook, the default on macOS). All grade the same notebooks (the solutions, as a student who
solved everything would hand them in), side by side in one run, in turns, each repeated; the
medians and their ratios are printed. This is a measurement to report, not a test: a noisy machine
makes it vary.

    python benchmarks/autograde_speed.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = 'python -c "import torch"'
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from catalogue import complete_submission  # noqa: E402
from lora_grader.checks import NOTEBOOKS  # noqa: E402
from nbgrader_course import Course  # noqa: E402


def seconds(command: list[str], cwd: Path, env=None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats

    with tempfile.TemporaryDirectory() as tmp:
        course = Course(Path(tmp) / "course")
        course.nbgrader("generate_assignment", "lora")
        folder = course.submit("bench", {n.filename: complete_submission(key) for key, n in NOTEBOOKS.items()})
        floor, ours, spawned, theirs = [], [], [], []
        for _ in range(repeats):
            floor.append(seconds([sys.executable, "-c", "import torch"], ROOT))
            for mode, times in (("fork", ours), ("spawn", spawned)):
                times.append(seconds([sys.executable, "-m", "pytest", "autograder", "-q", "-p", "no:cacheprovider",
                                      "--sandbox", mode, "--notebooks", str(folder)], ROOT))
            shutil.rmtree(course.root / "autograded", ignore_errors=True)
            theirs.append(seconds([sys.executable, "-m", "nbgrader", "autograde", "lora", "--force"],
                                  course.root, course.env))

    theirs_median, floor_median = statistics.median(theirs), statistics.median(floor)
    print(f"notebooks graded:                 {len(NOTEBOOKS)} ({', '.join(sorted(NOTEBOOKS))})")
    print(f"{FLOOR + ' (wall):':33} {floor_median:.1f} s  (runs: {', '.join(f'{s:.1f}' for s in floor)})")
    for name, times in (("pytest autograder, fork", ours), ("pytest autograder, spawn", spawned)):
        median = statistics.median(times)
        print(f"{name + ' (wall):':33} {median:.1f} s  (runs: {', '.join(f'{s:.1f}' for s in times)}; "
              f"{median / floor_median:.1f}x the import floor; {theirs_median / median:.1f}x faster than nbgrader autograde)")
    print(f"{'nbgrader autograde (wall):':33} {theirs_median:.1f} s  (runs: {', '.join(f'{s:.1f}' for s in theirs)})")


if __name__ == "__main__":
    main()
