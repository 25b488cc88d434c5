"""The catalogue graded once in a fork-mode sandbox, and its records kept, so that the quick loop
judges every entry with the verdicts in seconds: no kernel, no sandbox.

The records (what the sandbox sent, in channel.py's format, gzipped) are a cache, not a file of
the repository: they are tens of megabytes of tensors. Their name is a digest of everything that
shapes what the sandbox sends (the grader's code but its verdicts and answers, the catalogue, the
solutions, Python's and torch's versions), so a change to a verdict reuses them and a change to a
probe records again, in a real sandbox. A fresh clone (CI) always records.
"""
from __future__ import annotations

import gzip
import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from catalogue import ENTRIES, Entry, write_submission
from lora_grader import channel
from lora_grader.grading import CheckResult, Integrity, Sandbox, Timeouts, judge_record

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "tests" / ".recorded"
_JUDGING_ONLY = ("verdicts", "answers", "classgrade")  # never imported where student code runs


def _probe_side() -> list[Path]:
    grader = [path for path in (ROOT / "lora_grader").rglob("*.py")
              if not set(path.relative_to(ROOT / "lora_grader").parts) & set(_JUDGING_ONLY)]
    return sorted(grader) + sorted((ROOT / "tests" / "catalogue").glob("*.py")) + sorted(
        (ROOT / "solutions" / "lora").glob("*.ipynb"))


def digest() -> str:
    hashed = hashlib.sha256(f"{sys.version}\n{torch.__version__}\n".encode())
    for path in _probe_side():
        hashed.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return hashed.hexdigest()[:16]


def record(entries: list[Entry]) -> dict:
    """{entry name: the sandbox's record} for the entries, graded in fork mode."""
    with tempfile.TemporaryDirectory() as folder:
        jobs = {entry.name: (entry.notebook, write_submission(entry, Path(folder) / entry.name, keep_demos=False))
                for entry in entries}
        sandbox = Sandbox("fork")
        sandbox.keep_records = True
        sandbox.grade_jobs(jobs)
    return sandbox.records


def _write(records: dict, path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as stream:
        for name, found in records.items():
            header, frames = found if found is not None else ({"nothing_came_back": True}, [])
            channel.write_record(stream, {**header, "entry": name}, frames)
    partial.replace(path)  # whole or not at all: an interrupted run leaves no half recording


def _read(path: Path) -> dict:
    records = {}
    with gzip.open(path, "rb") as stream:
        while (found := channel.read_record(stream)) is not None:
            header, frames = found
            records[header["entry"]] = None if header.get("nothing_came_back") else (header, frames)
    return records


def catalogue_records() -> tuple[dict, bool]:
    """({entry name: record} for the whole catalogue, whether they were recorded just now)."""
    path = CACHE / f"catalogue-{digest()}.gz"
    if path.exists():
        return _read(path), False
    for stale in CACHE.glob("catalogue-*.gz"):
        stale.unlink()
    records = record(ENTRIES)
    _write(records, path)
    return records, True


def judged(entry: Entry, found) -> list[CheckResult]:
    """The entry's results, judged from its record exactly as the grader judges a fresh one."""
    return judge_record(entry.notebook, found, Integrity(), Timeouts().check)
