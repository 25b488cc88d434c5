"""Read a student's notebook without trusting it: the code the sandbox should run, or why not.

Plain `json` on purpose: a student's file may be empty, truncated, BOM-prefixed, in an old
nbformat or not a notebook at all, and each of those deserves one clear sentence.
"""
from __future__ import annotations

import json
from pathlib import Path

SKIP_TAG = "skip-autograder"  # demos, plots and benchmarks that define nothing graded
CELL_MAGICS_THAT_RUN_PYTHON = {"time", "timeit", "capture"}


class NotebookUnreadable(Exception):
    """The notebook cannot be graded; the message says why, for the student."""


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NotebookUnreadable(f"{path.name} was not found in {path.parent} (renamed or moved?)")
    raw = path.read_bytes()
    if not raw.strip():
        raise NotebookUnreadable(f"{path.name} is empty: save the notebook again from Jupyter")
    try:
        notebook = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise NotebookUnreadable(f"{path.name} is not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise NotebookUnreadable(
            f"{path.name} is not valid JSON ({error.msg} at line {error.lineno}): "
            "was the file truncated or edited by hand?"
        ) from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells", notebook.get("worksheets")), list):
        raise NotebookUnreadable(f"{path.name} is JSON but not a Jupyter notebook")
    return notebook


def _cells(notebook: dict) -> list[dict]:
    if "cells" in notebook:  # nbformat 4
        return [cell for cell in notebook["cells"] if isinstance(cell, dict)]
    cells = []  # nbformat 3: worksheets of cells whose code is under "input"
    for sheet in notebook["worksheets"]:
        for cell in sheet.get("cells", []) if isinstance(sheet, dict) else []:
            if isinstance(cell, dict):
                cells.append({**cell, "source": cell.get("input", cell.get("source", ""))})
    return cells


def _text(source) -> str:
    if isinstance(source, list):
        return "".join(part for part in source if isinstance(part, str))
    return source if isinstance(source, str) else ""


def is_test_cell(cell: dict) -> bool:
    nbgrader = (cell.get("metadata") or {}).get("nbgrader") or {}
    return bool(nbgrader.get("grade")) and not nbgrader.get("solution")


def _skipped(cell: dict) -> bool:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return is_test_cell(cell) or (isinstance(tags, list) and SKIP_TAG in tags)


def without_ipython_syntax(source: str) -> str | None:
    """Python the plain interpreter can run: line magics and shell lines become `pass`;
    a cell magic either runs its body as Python (%%time) or the cell is dropped (None)."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        magic = lines[0].lstrip()[2:].split(maxsplit=1)
        if not magic or magic[0] not in CELL_MAGICS_THAT_RUN_PYTHON:
            return None
        lines = [""] + lines[1:]  # keep line numbers
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            out.append(line[: len(line) - len(stripped)] + "pass")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def code_cells(path: Path) -> list[tuple[int, str]]:
    """(code cell number, source) for every cell the autograder runs, in order."""
    cells = []
    number = 0
    for cell in _cells(load(path)):
        if cell.get("cell_type") != "code":
            continue
        number += 1
        if _skipped(cell):
            continue
        source = without_ipython_syntax(_text(cell.get("source", "")))
        if source is not None and source.strip():
            cells.append((number, source))
    return cells
