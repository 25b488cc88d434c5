"""Grade every student's notebooks: only those whose content changed since the last run.

Notebooks go to the sandbox in chunks of a few students, each chunk in its own sandbox, the
next one started (importing torch) while the current one grades: the progress bar moves per
chunk, and a chunk's sandbox is never kept waiting for the next.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from tqdm import tqdm

from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.grading import PACKAGE_ROOT, CheckResult, Sandbox, Timeouts
from lora_grader.report import first_line

ASSIGNMENT = "lora"
NOTEBOOKS_PER_CHUNK_AND_JOB = 8


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


def content_hash(path: Path) -> str | None:
    """sha256 of a handed-in notebook; None when there is no such file."""
    if not path.is_file():  # also a folder or a device named like the notebook
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
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
                    "points": r.points, "max": r.check.points, "message": r.message} for r in results],
    }


def _missing(key: str) -> dict:
    message = f"{NOTEBOOKS[key].filename} was not handed in: notebook {key} scores 0"
    return {
        "file": NOTEBOOKS[key].filename,
        "sha256": None,
        "checks": [{"name": c.name, "task": c.task, "passed": False, "points": 0, "max": c.points,
                    "message": message} for c in checks_of(key)],
    }


def needs_a_look(student: Student, notebooks: dict) -> list[str]:
    """Why a person should look at this student's work: notebooks missing, or handed in and
    worth nothing (unreadable, crashed, hung, or never started)."""
    missing = [key for key, entry in notebooks.items() if entry["sha256"] is None]
    reasons = [f"not handed in: {', '.join(missing)}"] if missing else []
    expected = {notebook.filename for notebook in NOTEBOOKS.values()}
    strays = sorted(path.name for path in student.folder.glob("*.ipynb") if path.name not in expected)
    if missing and strays:
        reasons.append(f"notebooks under other names: {', '.join(strays)}")
    for key, entry in notebooks.items():
        if entry["sha256"] is not None and not any(check["passed"] for check in entry["checks"]):
            reasons.append(f"{key} earned nothing: {first_line(entry['checks'][0]['message'])}")
    return reasons


@dataclasses.dataclass
class Run:
    students: dict  # name -> {"notebooks": {key: entry}, "needs_a_look": [reason]}
    graded: int  # notebooks sent to the sandbox
    reused: int  # notebooks unchanged since the last run
    missing: int


def grade_class(students: list[Student], previous: dict | None, grader: str, jobs: int,
                timeouts: Timeouts = Timeouts(), progress: bool = True) -> Run:
    """Grade the class; `previous` is the last run's results.json (None: grade everything)."""
    old = previous["students"] if previous and previous.get("grader") == grader else {}
    notebooks = {student.name: {} for student in students}
    todo: dict[str, list] = {}  # student -> [(job id, key, path, digest)]
    reused = missing = 0
    for number, student in enumerate(students):
        for key, notebook in NOTEBOOKS.items():
            path = student.folder / notebook.filename
            digest = content_hash(path)
            before = old.get(student.name, {}).get("notebooks", {}).get(key)
            if digest is None:
                notebooks[student.name][key] = _missing(key)
                missing += 1
            elif before and before["sha256"] == digest:
                notebooks[student.name][key] = before
                reused += 1
            else:
                todo.setdefault(student.name, []).append((f"{number}-{key}", key, path, digest))
    chunks = _chunks(list(todo.items()), NOTEBOOKS_PER_CHUNK_AND_JOB * jobs)
    bar = tqdm(total=len(students), unit="student", desc="grading", disable=not progress, smoothing=0.1)
    looks = 0

    def done(names) -> None:
        nonlocal looks
        looks += sum(bool(needs_a_look(by_name[name], notebooks[name])) for name in names)
        bar.set_postfix_str(f"need a look: {looks}", refresh=False)
        bar.update(len(names))

    by_name = {student.name: student for student in students}
    done([name for name in notebooks if name not in todo])
    sandbox = Sandbox() if chunks else None
    try:
        for number, chunk in enumerate(chunks):
            following = Sandbox() if number + 1 < len(chunks) else None  # imports torch meanwhile
            current, sandbox = sandbox, following
            graded = _grade_chunk(current, chunk, timeouts, jobs)
            for name, items in chunk:
                for job_id, key, _, digest in items:
                    notebooks[name][key] = _entry(key, digest, graded[job_id])
            done([name for name, _ in chunk])
    finally:
        if sandbox:
            sandbox.close()
        bar.close()
    return Run(
        {student.name: {"notebooks": {key: notebooks[student.name][key] for key in NOTEBOOKS},
                        "needs_a_look": needs_a_look(student, notebooks[student.name])}
         for student in students},
        graded=sum(len(items) for items in todo.values()), reused=reused, missing=missing,
    )


def _chunks(todo: list, size: int) -> list[list]:
    """Whole students, at least `size` notebooks per chunk (but the last)."""
    chunks, current, count = [], [], 0
    for name, items in todo:
        current.append((name, items))
        count += len(items)
        if count >= size:
            chunks.append(current)
            current, count = [], 0
    return chunks + ([current] if current else [])


def _grade_chunk(sandbox: Sandbox, chunk: list, timeouts: Timeouts, jobs: int) -> dict:
    jobs_of_chunk = {job_id: (key, path) for _, items in chunk for job_id, key, path, _ in items}
    try:
        return sandbox.grade_jobs(jobs_of_chunk, timeouts, parallel=jobs)
    except Exception as error:  # the grader's own failure must not cost the rest of the class
        sandbox.close()
        message = (f"the grader failed on this chunk of the class ({type(error).__name__}: {error}); "
                   "grade again with --force")
        return {job_id: [CheckResult(key, check, message) for check in checks_of(key)]
                for job_id, (key, _) in jobs_of_chunk.items()}
