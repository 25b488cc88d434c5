"""A class built from the catalogue, for `lora-grade report`: its test, its benchmark and the
README's screenshot. Each student's plan says what they handed in, so a test knows what the
report must show.

Of every ten students, four hand in complete notebooks, four one or two catalogued bugs (drawn
from a pool in which common mistakes are common), and two something a person should look at,
in turn: a cell that calls os._exit, the untouched release with a cell that patches the grader,
notebooks 04 and 05 not handed in, and a copy of a classmate's notebooks. Every other notebook
differs from its classmates' (as real ones do: outputs, metadata), so only the copy is identical.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path

from catalogue import ENTRIES, Entry, code_cell, complete_submission, write_submission
from lora_grader.checks import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
POOL = {  # catalogue entry: how common the mistake is in the class
    "01-materialized-update": 4, "01-no-scaling": 2,
    "02-alpha-not-divided-by-rank": 4, "02-no-freezing": 2, "02-flops-multiply-adds": 4,
    "02-flops-forget-the-product-with-x": 2, "02-flops-as-float": 1,
    "03-B-random": 2, "03-count-all-parameters": 3, "03-predict-bias-trains": 2,
    "04-merge-without-scaling": 3, "04-merging-twice-adds-twice": 2,
    "05-add-lora-forgets-to-freeze": 2, "05-count-swapped": 1,
}
SPECIAL = ("exits", "patches-the-grader", "missing", "copies")
MISSING = ("04", "05")  # the notebooks the "missing" student did not hand in
PATCH = "import lora_grader\nlora_grader.check = lambda *a, **k: None\n"


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    bugs: tuple[Entry, ...] = ()  # at most one per notebook
    special: str = ""  # one of SPECIAL
    copies: str = ""  # whose notebooks this student handed in

    def first_failures(self, first_check: dict[str, str]) -> dict[str, str]:
        """{notebook: the first check that fails in it}, as the catalogue and the plan say;
        `first_check` is each notebook's first check."""
        if self.special in ("exits", "patches-the-grader"):
            return {"01": first_check["01"]}
        if self.special == "missing":
            return {key: first_check[key] for key in MISSING}
        return {bug.notebook: bug.caught_by for bug in self.bugs}


def plan_class(size: int) -> list[Plan]:
    entries = {entry.name: entry for entry in ENTRIES}
    pool, weights = [entries[name] for name in POOL], list(POOL.values())
    plans = []
    for number in range(size):
        name, role = f"student{number:03d}", number % 10
        if role < 4:
            plans.append(Plan(name))
        elif role < 8:
            draw = random.Random(number)
            bugs = [draw.choices(pool, weights)[0]]
            if draw.random() < 0.4:  # a second mistake, in another notebook
                others = [(e, w) for e, w in zip(pool, weights) if e.notebook != bugs[0].notebook]
                bugs.append(draw.choices([e for e, _ in others], [w for _, w in others])[0])
            plans.append(Plan(name, tuple(bugs)))
        else:
            special = SPECIAL[(number // 10 * 2 + role - 8) % len(SPECIAL)]
            plans.append(Plan(name, special=special, copies=f"student{number - role:03d}" if special == "copies" else ""))
    return plans


def write_class(plans: list[Plan], submitted: Path) -> None:
    for plan in plans:  # a copy after what it copies: plan_class copies an earlier, complete student
        folder = submitted / plan.name / "lora"
        if plan.copies:
            shutil.copytree(submitted / plan.copies / "lora", folder)
            continue
        folder.mkdir(parents=True)
        for key, notebook in NOTEBOOKS.items():
            if not (plan.special == "missing" and key in MISSING):
                _write(folder / notebook.filename, complete_submission(key), plan.name)
        for bug in plan.bugs:
            path = write_submission(bug, folder)
            _write(path, json.loads(path.read_text()), plan.name)
        if plan.special in ("exits", "patches-the-grader"):
            exits = plan.special == "exits"
            notebook = complete_submission("01") if exits else _released("01")
            notebook["cells"].insert(1, code_cell("import os\nos._exit(3)\n" if exits else PATCH, "added"))
            _write(folder / NOTEBOOKS["01"].filename, notebook, plan.name)


def _released(key: str) -> dict:
    return json.loads((ROOT / "course" / "lora" / NOTEBOOKS[key].filename).read_text())


def _write(path: Path, notebook: dict, student: str) -> None:
    notebook.setdefault("metadata", {})["author"] = student  # no two students' notebooks alike
    path.write_text(json.dumps(notebook, indent=1))


def repeated(record: dict, size: int) -> dict:
    """results.json of a class of `size`, the graded class's students repeated (renamed, and each
    copy's notebooks with a hash of their own, so that only real copies are identical)."""
    graded = list(record["students"].items())
    students = {}
    for number in range(size):
        original, student = graded[number % len(graded)]
        copy = json.loads(json.dumps(student))
        for notebook in copy["notebooks"].values():
            if notebook["sha256"]:
                notebook["sha256"] = hashlib.sha256(f"{notebook['sha256']}/{number // len(graded)}".encode()).hexdigest()
        students[f"{number:04d}-{original}"] = copy
    return {**record, "students": students}
