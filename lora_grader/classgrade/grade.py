"""Grade every student's notebooks: only those whose content changed since the last run.

All the notebooks to grade go to one sandbox, which imports torch once and runs `--jobs` of
them at a time, each isolated as in `pytest autograder`; this process judges each notebook as
it comes back, and the progress bar counts students as their last notebook is judged. Should the
sandbox die, another grades what is left (grading.py); only the grader's own failure is never
kept as a grade.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import stat
from pathlib import Path

from tqdm import tqdm

from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.grading import PACKAGE_ROOT, CheckResult, Integrity, Sandbox, Timeouts
from lora_grader.report import first_line

ASSIGNMENT = "lora"


@dataclasses.dataclass(frozen=True)
class Student:
    name: str
    folder: Path  # where the student's notebooks are


def find_students(submitted: Path) -> list[Student]:
    """nbgrader's layout (<student>/lora/*.ipynb) or plain student folders (<student>/*.ipynb)."""
    students = []
    for folder in sorted(Path(submitted).iterdir(), key=lambda path: path.name):
        if folder.is_dir() and not folder.name.startswith("."):
            inner = folder / ASSIGNMENT
            students.append(Student(folder.name, inner if inner.is_dir() else folder))
    return students


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"--shard takes K/N with 1 <= K <= N, e.g. 2/8, not {text!r}")
    return int(match.group(1)), int(match.group(2))


def in_shard(name: str, shard: tuple[int, int]) -> bool:
    """By a hash of the name: a student stays in the same shard when others join or leave."""
    k, n = shard
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % n == k - 1


def grader_fingerprint(timeouts: Timeouts) -> str:
    """Changes whenever the grader's code or time limits do: results are then graded afresh."""
    digest = hashlib.sha256(repr(timeouts).encode())
    package = PACKAGE_ROOT / "lora_grader"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def refusal(student: Student, path: Path) -> str:
    """Why a file named like a notebook is not taken as the student's, or "": only a regular file in
    the student's own folder counts. A symbolic link (perhaps to another student's work) is never
    followed, nor is a FIFO or a device read."""
    folders = [student.folder] + ([student.folder.parent] if student.folder.name == ASSIGNMENT else [])
    if any(folder.is_symlink() for folder in folders):
        return "the student's folder is a symbolic link"
    if path.is_symlink():
        return f"{path.name} is a symbolic link"
    try:
        mode = path.lstat().st_mode
    except OSError:
        return ""  # not there: not handed in
    return "" if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else f"{path.name} is not a regular file"


def content_hash(path: Path) -> str | None:
    """sha256 of a handed-in notebook; None when there is no such file."""
    if not path.is_file():  # also a folder or a device named like the notebook
        return None
    digest = hashlib.sha256()
    try:
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    except OSError as error:
        return f"unreadable: {error.strerror}"
    return digest.hexdigest()


def _entry(key: str, digest: str | None, results) -> dict:
    return {
        "file": NOTEBOOKS[key].filename,
        "sha256": digest,
        "checks": [{"name": r.check.name, "task": r.check.task, "passed": r.passed,
                    "points": r.points, "max": r.check.points, "message": r.message, "cause": r.cause}
                   for r in results],
    }


def _missing(key: str, refused: str = "") -> dict:
    message = (f"{NOTEBOOKS[key].filename} was refused ({refused}; only a regular file is graded): "
               f"notebook {key} scores 0" if refused else
               f"{NOTEBOOKS[key].filename} was not handed in: notebook {key} scores 0")
    return {
        "file": NOTEBOOKS[key].filename,
        "sha256": None,
        "checks": [{"name": c.name, "task": c.task, "passed": False, "points": 0, "max": c.points,
                    "message": message, "cause": "refused" if refused else "not_handed_in"}
                   for c in checks_of(key)],
    }


def needs_a_look(student: Student, notebooks: dict) -> list[str]:
    """Why a person should look at this student's work: notebooks missing, or handed in and
    worth nothing (unreadable, crashed, hung, or never started)."""
    missing = [key for key, entry in notebooks.items() if entry["sha256"] is None]
    reasons = [f"not handed in: {', '.join(missing)}"] if missing else []
    refused = [reason for key in missing if (reason := refusal(student, student.folder / NOTEBOOKS[key].filename))]
    reasons += [f"refused, never followed: {reason}" for reason in dict.fromkeys(refused)]
    expected = {notebook.filename for notebook in NOTEBOOKS.values()}
    strays = sorted(path.name for path in student.folder.glob("*.ipynb") if path.name not in expected)
    if missing and strays:
        reasons.append(f"notebooks under other names: {', '.join(strays)}")
    for key, entry in notebooks.items():
        if entry["sha256"] is not None and not any(check["passed"] for check in entry["checks"]):
            reasons.append(f"{key} earned nothing: {first_line(entry['checks'][0]['message'])}")
        if entry.get("integrity"):
            reasons.append(f"{key} integrity report: {first_line(entry['integrity'][0])}"
                           + (f" (and {len(entry['integrity']) - 1} more in results.json)" if len(entry["integrity"]) > 1 else ""))
    return reasons


@dataclasses.dataclass
class Run:
    students: dict  # name -> {"notebooks": {key: entry}, "needs_a_look": [reason]}
    graded: int  # notebooks sent to the sandbox
    reused: int  # notebooks unchanged since the last run
    missing: int
    # (student, notebook, grading.Death): the notebooks running when a sandbox died, as it happened
    deaths: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Job:
    student: Student
    key: str
    path: Path
    digest: str


def grade_class(students: list[Student], previous: dict | None, grader: str, jobs: int,
                timeouts: Timeouts = Timeouts(), progress: bool = True) -> Run:
    """Grade the class; `previous` is the last run's results.json (None: grade everything)."""
    old = previous["students"] if previous and previous.get("grader") == grader else {}
    notebooks = {student.name: {} for student in students}
    todo: dict[str, Job] = {}  # by job id
    reused = missing = 0
    for number, student in enumerate(students):
        for key, notebook in NOTEBOOKS.items():
            path = student.folder / notebook.filename
            refused = refusal(student, path)
            digest = None if refused else content_hash(path)
            before = old.get(student.name, {}).get("notebooks", {}).get(key)
            if digest is None:
                notebooks[student.name][key] = _missing(key, refused)
                missing += 1
            elif before and before["sha256"] == digest and not before.get("grader_failed"):
                notebooks[student.name][key] = before
                reused += 1
            else:
                todo[f"{number}-{key}"] = Job(student, key, path, digest)  # ids safe as folder names
    sandbox = None
    with _Progress(todo, notebooks, enabled=progress) as heard:
        try:
            if todo:
                sandbox = Sandbox()
                sandbox.grade_jobs({job_id: (job.key, job.path) for job_id, job in todo.items()}, timeouts,
                                   parallel=jobs, on_notebook=heard)
                for job_id, job in todo.items():
                    notebooks[job.student.name][job.key]["integrity"] = sandbox.integrity.get(job_id, Integrity()).lines()
                    if job_id in sandbox.unreported:
                        notebooks[job.student.name][job.key]["grader_failed"] = True  # graded again next run
        except Exception as error:  # the grader's own failure must not end the run without outputs
            message = f"the grader failed ({type(error).__name__}: {error}); the next run grades it again"
            for job_id, job in todo.items():
                if job.key not in notebooks[job.student.name]:
                    notebooks[job.student.name][job.key] = {
                        **_entry(job.key, job.digest, [CheckResult(job.key, c, message, "grader_failed") for c in checks_of(job.key)]),
                        "grader_failed": True}
    deaths = [(todo[death.job].student.name, todo[death.job].key, death) for death in sandbox.deaths] if sandbox else []
    return Run(
        {student.name: {"notebooks": {key: notebooks[student.name][key] for key in NOTEBOOKS},
                        "needs_a_look": needs_a_look(student, notebooks[student.name])}
         for student in students},
        graded=len(todo), reused=reused, missing=missing, deaths=deaths,
    )


class _Progress:
    """One bar, student by student: a student is done when their last notebook is judged. Judged
    results are stored in `notebooks` as they come."""

    def __init__(self, todo: dict, notebooks: dict, enabled: bool) -> None:
        self.todo, self.notebooks = todo, notebooks
        self.left = dict(collections.Counter(job.student.name for job in todo.values()))
        self.bar = tqdm(total=len(self.left), unit="student", desc="grading", disable=not enabled or not todo)
        self.looks = 0

    def __enter__(self):
        return self.heard

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def heard(self, job_id: str, results) -> None:
        job = self.todo[job_id]
        name = job.student.name
        self.notebooks[name][job.key] = _entry(job.key, job.digest, results)
        self.left[name] -= 1
        if self.left[name] == 0:
            self.looks += bool(needs_a_look(job.student, self.notebooks[name]))
            self.bar.set_postfix_str(f"need a look so far: {self.looks}", refresh=False)
            self.bar.update()
