"""How fast a class is graded: `lora-grade autograde` against `nbgrader autograde`, side by side.

A class is built from the catalogue: of every ten students, six hand in complete notebooks
(demos included), three a catalogued bug, and one a hostile submission (a cell that calls
os._exit, 20 MB of output in a cell, the untouched release with a cell that replaces the grader,
an endless loop, in turn).
`lora-grade` grades classes of 10, 20 and 40 students (and the 20 again, with nothing changed);
`nbgrader autograde` grades the class of 20. This is a measurement to report, not a test: a
busy machine makes it slower.

    python benchmarks/class_speed.py [--sizes 10 20 40] [--nbgrader-size 20] [--jobs N]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from catalogue import BUGS, complete_submission, write_submission  # noqa: E402
from lora_grader.checks import NOTEBOOKS  # noqa: E402
from nbgrader_course import Course  # noqa: E402

HOSTILE = {  # notebook, the cell inserted after its first cell
    "exits": ("01", "import os\nos._exit(3)\n"),
    "enormous": ("03", "pass\n"),
    "patches-the-grader": ("01", "import lora_grader\nlora_grader.check = lambda *a, **k: None\n"),
    "hangs": ("04", "while True:\n    pass\n"),
}


def _cell(source: str, output: str = "") -> dict:
    outputs = [{"output_type": "stream", "name": "stdout", "text": output}] if output else []
    return {"cell_type": "code", "execution_count": None, "id": "added", "metadata": {}, "outputs": outputs,
            "source": source}


def _released(key: str) -> dict:
    return json.loads((ROOT / "course" / "lora" / NOTEBOOKS[key].filename).read_text())


def make_student(number: int, submitted: Path) -> str:
    """The `number`th student of the class, written to submitted/<name>/lora; its name."""
    role = "complete" if number % 10 < 6 else "bug" if number % 10 < 9 else "hostile"
    kind = list(HOSTILE)[(number // 10) % len(HOSTILE)] if role == "hostile" else role
    name = f"{number:03d}-{kind}"
    folder = submitted / name / "lora"
    folder.mkdir(parents=True)
    for key, notebook in NOTEBOOKS.items():
        (folder / notebook.filename).write_text(json.dumps(complete_submission(key), indent=1))
    if role == "bug":
        write_submission(BUGS[number % len(BUGS)], folder)
    elif role == "hostile":
        key, source = HOSTILE[kind]
        notebook = _released(key) if kind == "patches-the-grader" else complete_submission(key)
        notebook["cells"].insert(1, _cell(source, "x" * 20 * 2**20 if kind == "enormous" else ""))
        (folder / NOTEBOOKS[key].filename).write_text(json.dumps(notebook, indent=1))
    return name


def seconds(command: list[str], cwd: Path, env=None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:  # nbgrader exits 1 when a notebook fails to run; that is part of the class
        print(f"({' '.join(command[1:4])} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]})")
    return elapsed


def lora_grade(course: Path, jobs: list[str]) -> float:
    return seconds([sys.executable, "-m", "lora_grader.classgrade", "autograde", "--no-progress", *jobs], course)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--nbgrader-size", type=int, default=20)
    parser.add_argument("--jobs", type=str, default=None, help="lora-grade --jobs (default: its own)")
    args = parser.parse_args()
    if args.nbgrader_size not in args.sizes:
        parser.error("--nbgrader-size must be one of --sizes: both grade the same class")
    jobs = ["--jobs", args.jobs] if args.jobs else []

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for size in args.sizes:
            course = Path(tmp) / f"class{size}"
            for number in range(size):
                make_student(number, course / "submitted")
            wall = lora_grade(course, jobs)
            rows.append((size, wall))
            print(f"lora-grade autograde, {size:3d} students: {wall:6.1f} s, {60 * size / wall:5.1f} students/min, "
                  f"{wall / size:4.2f} s/student", flush=True)
            if size == args.nbgrader_size:
                again = lora_grade(course, jobs)
                print(f"lora-grade autograde again, nothing changed: {again:.1f} s", flush=True)
                ours = wall

        nbgrader = Course(Path(tmp) / "nbgrader")
        nbgrader.nbgrader("generate_assignment", "lora")
        shutil.copytree(Path(tmp) / f"class{args.nbgrader_size}" / "submitted", nbgrader.root / "submitted")
        theirs = seconds([sys.executable, "-m", "nbgrader", "autograde", "lora"], nbgrader.root, nbgrader.env)
        size = args.nbgrader_size
        print(f"nbgrader autograde,   {size:3d} students: {theirs:6.1f} s, {60 * size / theirs:5.1f} students/min, "
              f"{theirs / size:4.2f} s/student")
        print(f"lora-grade is {theirs / ours:.1f}x faster than nbgrader autograde on the class of {size}")
        size, wall = rows[-1]
        for students in (500, 5000):
            print(f"at the rate of the class of {size}: {students} students in about "
                  f"{students * wall / size / 60:.0f} min on this machine")


if __name__ == "__main__":
    main()
