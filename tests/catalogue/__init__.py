"""A catalogue of submissions: realistic bugs, each with the check that must catch it and the
words its feedback must use, and correct answers written differently, each worth full marks.

An entry swaps the source of solution cells (by nbgrader grade_id) in an otherwise complete,
correct submission, so each entry tests exactly one mistake or one variation.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

from lora_grader.checks import NOTEBOOKS
from lora_grader.notebook import SKIP_TAG

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # unique; also the nbgrader student id
    notebook: str  # "01"
    cells: dict  # grade_id of a solution cell -> the source the student wrote there
    caught_by: str | None = None  # the first check that fails; None for a correct variant
    says: str = ""  # words (case-insensitive) the feedback of `caught_by` must contain
    extra_cells: tuple = ()  # scratch code cells the student added at the end
    fails_only: tuple = ()  # if given, exactly these checks fail: one mistake is reported once

    @property
    def is_bug(self) -> bool:
        return self.caught_by is not None


def bug(name, notebook, cells, caught_by, says, extra_cells=(), fails_only=()) -> Entry:
    return Entry(name, notebook, cells, caught_by, says, tuple(extra_cells), tuple(fails_only))


def variant(name, notebook, cells, extra_cells=()) -> Entry:
    return Entry(name, notebook, cells, None, "", tuple(extra_cells))


def _entries() -> list[Entry]:
    entries = []
    for key in NOTEBOOKS:
        try:
            module = importlib.import_module(f"catalogue.nb{key}")
        except ModuleNotFoundError:
            continue
        entries.extend(module.ENTRIES)
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names)), "catalogue names must be unique"
    return entries


ENTRIES = _entries()
BUGS = [entry for entry in ENTRIES if entry.is_bug]
VARIANTS = [entry for entry in ENTRIES if not entry.is_bug]


def selected(session) -> list[Entry]:
    """The entries a pytest run selected (all of them, or those `-k` kept), in catalogue order."""
    names = {item.callspec.params["entry"].name for item in session.items
             if "entry" in getattr(getattr(item, "callspec", None), "params", {})}
    return [entry for entry in ENTRIES if entry.name in names]


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def complete_submission(key: str) -> dict:
    """The released notebook as a student who solved everything hands it in."""
    filename = NOTEBOOKS[key].filename
    release = json.loads((ROOT / "course" / "lora" / filename).read_text())
    solutions = json.loads((ROOT / "solutions" / "lora" / filename).read_text())
    answers = {
        _grade_id(cell): cell["source"]
        for cell in solutions["cells"]
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution")
    }
    for cell in release["cells"]:
        if _grade_id(cell) in answers:
            cell["source"] = _strip_markers(answers[_grade_id(cell)])
    return release


def _strip_markers(source) -> str:
    text = "".join(source) if isinstance(source, list) else source
    return "".join(
        line for line in text.splitlines(True) if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")
    )


def _is_demo(cell) -> bool:
    return SKIP_TAG in cell.get("metadata", {}).get("tags", [])


def code_cell(source: str, cell_id: str | None = None, outputs: list = ()) -> dict:
    """A code cell a student added, never run (with an id, as JupyterLab writes one, if given)."""
    cell = {"cell_type": "code", "execution_count": None}
    if cell_id is not None:
        cell["id"] = cell_id
    return {**cell, "metadata": {}, "outputs": list(outputs), "source": source}


def write_submission(entry: Entry, folder: Path, keep_demos: bool = True) -> Path:
    """Write the entry's notebook into `folder`; returns its path. Without its demo cells
    (plots, timings, fits: they define nothing graded) nbgrader runs it several times faster."""
    notebook = complete_submission(entry.notebook)
    if not keep_demos:
        notebook["cells"] = [cell for cell in notebook["cells"] if not _is_demo(cell)]
    found = set()
    for cell in notebook["cells"]:
        if _grade_id(cell) in entry.cells:
            cell["source"] = entry.cells[_grade_id(cell)].strip("\n") + "\n"
            found.add(_grade_id(cell))
    missing = set(entry.cells) - found
    assert not missing, f"{entry.name}: no solution cell {missing} in notebook {entry.notebook}"
    for number, source in enumerate(entry.extra_cells):
        notebook["cells"].append(code_cell(source.strip("\n") + "\n", f"scratch-{number}"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTEBOOKS[entry.notebook].filename
    path.write_text(json.dumps(notebook, indent=1))
    return path


ALL = "*"  # in a `fails` mapping: every check of the notebook


def unexpected_verdicts(results, fails: dict) -> list[str]:
    """What differs from `fails` (check name, or ALL, -> words its message must contain; every
    other check must pass), one line per check."""
    problems = []
    for result in results:
        words = fails.get(ALL, fails.get(result.check.name))
        if words is None and not result.passed:
            problems.append(f"{result.check.name} should pass but failed: {result.message}")
        elif words is not None and result.passed:
            problems.append(f"{result.check.name} passed (expected a failure saying {words!r})")
        elif words is not None and words.lower() not in result.message.lower():
            problems.append(f"{result.check.name}'s feedback does not say {words!r}:\n{result.message}")
    return problems
