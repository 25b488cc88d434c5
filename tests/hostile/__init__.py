"""Hostile and malformed submissions as data, like tests/catalogue/: each case is what a notebook
does (a build of its file) and what must happen (the checks it fails and the words they say,
what the sandbox refuses, what the integrity scan flags). tests/test_hostile.py grades them all.

This module: the Case, and how a case's file is built. payloads.py: the code the cases run.
cases.py: the cases.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import nbformat

from catalogue import ROOT, code_cell, complete_submission
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.confinement import landlock_abi, seccomp_supported
from lora_grader.grading import Timeouts

TIMEOUTS = Timeouts(cell=5.0, check=5.0, notebook=15.0)  # short, with room for a busy 2-core machine
CONFINED_FILES = landlock_abi() >= 1  # without Landlock, student code can reach any file the student can
CONFINED_SIGNALS = landlock_abi() >= 6
CONFINED_OTHER_PROCESSES = seccomp_supported()  # limits, priorities, CPUs of other processes
LISTENERS: dict = {}  # a TCP port and a Unix socket path the batch listens on, outside the sandbox


def checks_named(key: str, task: str | None = None) -> tuple[str, ...]:
    return tuple(check.name for check in checks_of(key) if task in (None, check.task))


UPDATE = checks_named("01", "lora_update")
LAYER = checks_named("02", "LoRALinear")
FLOPS = checks_named("02", "lora_flops")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    notebook: str
    build: Callable[[Path], bytes | None]  # the file's bytes (None: no file), given the batch's root
    fails: dict  # check name (or ALL) -> words its message must contain; every other check must pass
    refused: tuple = ()  # words that must appear among what the sandbox refused (integrity report)
    flagged: tuple = ()  # words that must appear among the integrity flags of its code


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _values(root: Path) -> dict:
    """What a cell's source may name: the batch's folder, the repository, the test's listeners."""
    return {"root": root, "repo": ROOT, "port": LISTENERS.get("port", 0), "unix": LISTENERS.get("unix", "")}


def edited(key, answers=None, scratch=(), after="imports", at_end=(), transform=None, release=False) -> Callable:
    """A complete submission (or the untouched release) with solution cells replaced ({grade_id:
    source}), scratch code cells inserted after the cell `after` and appended at the end, then
    `transform`ed."""
    def build(root: Path) -> bytes:
        notebook = json.loads((ROOT / "course" / "lora" / NOTEBOOKS[key].filename).read_text()) if release \
            else complete_submission(key)
        cells = []
        for cell in notebook["cells"]:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if grade_id in (answers or {}):
                cell["source"] = answers[grade_id].format(**_values(root)).strip("\n") + "\n"
            cells.append(cell)
            if grade_id == after:
                cells.extend(code_cell(source.format(**_values(root))) for source in scratch)
        cells.extend(code_cell(source.format(**_values(root))) for source in at_end)
        notebook["cells"] = cells
        if transform:
            notebook = transform(notebook)
        return json.dumps(notebook, indent=1).encode() if isinstance(notebook, dict) else notebook
    return build


def raw(data: bytes | None) -> Callable:
    return lambda root: data


FIFO = b"<a named pipe instead of a file>"
SPARSE_65_MB = b"<a 65 MB file>"


def truncated(key) -> Callable:
    return lambda root: (whole := edited(key)(root))[: len(whole) // 2]


def without_ids_and_outputs(notebook):
    for cell in notebook["cells"]:
        for field in ("id", "outputs", "execution_count"):
            cell.pop(field, None)
    return notebook


def malformed_metadata(notebook):
    """What hand edits and other tools leave behind: metadata that is not a dict, odd tags."""
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id == "imports":
            cell["metadata"] = "oops"
        elif grade_id == "lora_flops_answer":
            cell["metadata"] = {"nbgrader": ["solution"], "tags": "skip-autograder"}
            cell["source"] = list(_text(cell["source"]).splitlines(True)) + [None]
    return notebook


def as_nbformat_3(notebook):
    """The same notebook in nbformat 3 (worksheets, code under "input"): Jupyter still opens it."""
    v3 = nbformat.convert(nbformat.reads(json.dumps(notebook), as_version=4), 3)
    return nbformat.writes(v3, version=nbformat.NO_CONVERT).encode()


def as_utf16(notebook):
    return json.dumps(notebook, indent=1).encode("utf-16")


def with_bom(notebook):
    return b"\xef\xbb\xbf" + json.dumps(notebook, indent=1).encode()


def update(body: str) -> dict:
    return {"lora_update_answer": "def lora_update(x, lora_A, lora_B, scaling):\n" + body}


def flops(body: str) -> dict:
    return {"lora_flops_answer": "def lora_flops(num_tokens, in_features, out_features, rank, materialize=False):\n" + body}
