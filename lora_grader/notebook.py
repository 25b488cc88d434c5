"""Read a student's notebook without trusting it: the code the sandbox should run, or why not.

Plain `json` on purpose: a student's file may be empty, truncated, BOM-prefixed, in an old
nbformat or not a notebook at all, and each of those deserves one clear sentence.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

MAX_NOTEBOOK_BYTES = 64 * 2**20  # far above any notebook of the course, far below a full disk
SKIP_TAG = "skip-autograder"  # demos, plots and benchmarks that define nothing graded
CELL_MAGICS_THAT_RUN_PYTHON = {"time", "timeit", "capture"}


class NotebookUnreadable(Exception):
    """The notebook cannot be graded; the message says why, for the student."""


def load(path: Path) -> dict:
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO or a device, whose reading could block or never end
        raise NotebookUnreadable(f"{path.name} is not a regular file: save the notebook again from Jupyter")
    if not path.is_file():
        raise NotebookUnreadable(f"{path.name} was not found in {path.parent} (renamed or moved?)")
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            raise NotebookUnreadable(f"{path.name} is larger than {MAX_NOTEBOOK_BYTES // 2**20} MB: "
                                     "clear its outputs (Edit > Clear Outputs of All Cells) and save it again")
        with open(path, "rb") as file:
            raw = file.read(MAX_NOTEBOOK_BYTES + 1)
    except OSError as error:
        raise NotebookUnreadable(f"{path.name} could not be read ({error.strerror or error})") from None
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
    except RecursionError:  # JSON nested thousands deep: valid, but no notebook looks like that
        raise NotebookUnreadable(f"{path.name} is JSON nested too deeply to be a Jupyter notebook") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells", notebook.get("worksheets")), list):
        raise NotebookUnreadable(f"{path.name} is JSON but not a Jupyter notebook")
    return notebook


def _cells(notebook: dict) -> list[dict]:
    if "cells" in notebook:  # nbformat 4
        return [cell for cell in notebook["cells"] if isinstance(cell, dict)]
    cells = []  # nbformat 3, which Jupyter still opens: worksheets of cells whose code is under "input"
    for sheet in notebook["worksheets"]:
        sheet_cells = sheet.get("cells") if isinstance(sheet, dict) else None
        for cell in sheet_cells if isinstance(sheet_cells, list) else []:
            if isinstance(cell, dict):
                cells.append({**cell, "source": cell.get("input", cell.get("source", ""))})
    return cells


def _mapping(value) -> dict:
    """A metadata field as a dict: hand-edited notebooks can hold anything there."""
    return value if isinstance(value, dict) else {}


def _text(source) -> str:
    if isinstance(source, list):
        return "".join(part for part in source if isinstance(part, str))
    return source if isinstance(source, str) else ""


def is_test_cell(cell: dict) -> bool:
    nbgrader = _mapping(_mapping(cell.get("metadata")).get("nbgrader"))
    return bool(nbgrader.get("grade")) and not nbgrader.get("solution")


def _skipped(cell: dict) -> bool:
    tags = _mapping(cell.get("metadata")).get("tags")
    return is_test_cell(cell) or (isinstance(tags, list) and SKIP_TAG in tags)


# `files = !ls`, `t = %timeit -o f()`: IPython assigns what the command printed
_ASSIGNED_FROM_IPYTHON = re.compile(r"^(\s*[\w.\[\]\'\", ]+=\s*)[%!]")
# `torch.randn?`, `??LoRALinear`: IPython's help
_HELP = re.compile(r"^\s*(\?{1,2}[\w.]+|[\w.]+\?{1,2})\s*$")


def without_ipython_syntax(source: str) -> str | None:
    """Python the plain interpreter can run: line magics, shell lines and help requests become
    `pass`, and `x = !cmd` becomes `x = None`; a cell magic either runs its body as Python (%%time)
    or the cell is dropped (None). Lines keep their numbers, so error messages point right."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        magic = lines[0].lstrip()[2:].split(maxsplit=1)
        if not magic or magic[0] not in CELL_MAGICS_THAT_RUN_PYTHON:
            return None
        lines = [""] + lines[1:]
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")) or _HELP.match(line):
            out.append(line[: len(line) - len(stripped)] + "pass")
        elif assigned := _ASSIGNED_FROM_IPYTHON.match(line):
            out.append(assigned.group(1) + "None")
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
