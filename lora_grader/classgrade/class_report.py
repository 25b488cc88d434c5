"""The class as a whole, from the record `autograde` keeps (results.json): the numbers behind
`lora-grade report`. Nothing here runs student code.

Failures are grouped by what the check knows: which check failed and the cause key it gave
(the explanation its verdict chose, or how the code failed to run), never by message text.
"""
from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import io
import re
import statistics
from pathlib import Path

from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.outputs import spreadsheet_safe, task_points
from lora_grader.grading import printable_name
from lora_grader.report import first_line

# What the generic cause keys mean; a verdict's own keys are explained by its module's CAUSES.
GENERIC_CAUSES = {
    "wrong": "wrong result (no specific cause named)",
    "not_handed_in": "notebook not handed in",
    "refused": "notebook refused (a link or a special file)",
    "undefined": "not defined (the name is missing, or its cell failed)",
    "not_implemented": "not implemented (NotImplementedError left in)",
    "timeout": "ran out of time",
    "crashed": "the notebook's process died",
    "probe": "the grader's call did not return normally",
    "tampered": "marked as tampered: scores 0 until a person looks",
    "unreadable": "the notebook or its results could not be read",
    "no_result": "no result came back",
    "not_shipped": "expected values not shipped in this install",
    "grader_failed": "the grader failed on this notebook (graded again next run)",
}
# Causes that mean a person should look at the notebook, even if it earned some points.
ALARMING = ("crashed", "timeout", "tampered", "grader_failed")
EXAMPLE_CHARS = 1500


def verdict_causes() -> dict[str, str]:
    """Every verdict module's CAUSES ({key: explanation}), merged. Read from the source where it
    is a literal: importing the verdicts imports torch, seconds the report need not spend."""
    import importlib

    import lora_grader.verdicts as verdicts

    known = {}
    for path in sorted(Path(verdicts.__file__).parent.glob("*.py")):
        causes = _literal_causes(path)
        if causes is None:
            try:
                causes = getattr(importlib.import_module(f"lora_grader.verdicts.{path.stem}"), "CAUSES", {})
            except ImportError:  # e.g. a module that needs lora_grader.answers, absent from the student wheel
                continue
        known.update({key: text for key, text in causes.items() if key not in known})
    return known


def _literal_causes(path: Path) -> dict | None:
    """The module's top-level `CAUSES = {...}` if it is a literal, {} if there is none, None otherwise."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == "CAUSES" for target in node.targets):
            try:
                return dict(ast.literal_eval(node.value))
            except ValueError:
                return None
    return {}


def cause_label(key: str, known: dict[str, str]) -> str:
    if key.startswith("raised:"):
        return f"raised {key.removeprefix('raised:')}"
    return known.get(key) or GENERIC_CAUSES.get(key) or key.replace("_", " ")


@dataclasses.dataclass
class Cause:
    """Students who failed one check for one cause."""
    notebook: str
    task: str
    checks: list[str]  # one check; several when rows with the same cause and students are joined
    cause: str  # the key, as results.json holds it
    label: str  # what it means
    students: list[str]
    example: str  # one of their messages, with the student's name taken out

    @property
    def count(self) -> int:
        return len(self.students)


@dataclasses.dataclass
class TaskScores:
    notebook: str
    task: str
    out_of: int
    full: int
    partial: int
    none: int

    @property
    def lost(self) -> int:
        return self.partial + self.none


@dataclasses.dataclass
class ClassReport:
    students: list[str]
    totals: list[int]  # in the order of students
    out_of: int
    notebook_totals: dict[str, list[int]]
    notebook_out_of: dict[str, int]
    tasks: list[TaskScores]
    causes: list[Cause]  # one check each, in notebook and check order, the largest group first
    looks: dict[str, list[tuple[str, str]]]  # student -> [(kind, reason)]
    waiting: dict[tuple[str, str], list[str]] | None  # (student, notebook) -> answers; None: no gradebook
    audit_note: str  # where the nbgrader comparison comes from, or why there is none

    def task_causes(self, notebook: str, task: str) -> list[Cause]:
        """The task's causes, checks joined where one cause failed the same students on several
        of them (an unwritten function fails every check of its task), the largest group first."""
        joined: dict[tuple, Cause] = {}
        for cause in self.causes:
            if (cause.notebook, cause.task) == (notebook, task):
                key = (cause.cause, tuple(cause.students))
                if key in joined:
                    joined[key].checks.extend(cause.checks)
                else:
                    joined[key] = dataclasses.replace(cause, checks=list(cause.checks))
        return sorted(joined.values(), key=lambda cause: -cause.count)

    @property
    def median(self) -> float:
        return statistics.median(self.totals) if self.totals else 0


def _forms(name: str) -> list[str]:
    return [form for form in dict.fromkeys((name, printable_name(name))) if form.strip()]


def names_student(message: str, name: str) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(form)}(?!\w)", message) for form in _forms(name))


def anonymised(message: str, name: str) -> str:
    """The message with the student's name taken out of paths (a traceback through their
    folder), cut to a readable length. Only path components: a name may also be a word
    ("float"), which the rest of the message needs."""
    for form in _forms(name):
        message = re.sub(rf"(?<=[/\\]){re.escape(form)}(?=[/\\])", "<student>", message)
    return message if len(message) <= EXAMPLE_CHARS else message[:EXAMPLE_CHARS] + " …"


def example(failed: list[tuple[str, str]]) -> str:
    """The group's most common message, preferring those in which the student's name does not
    appear at all."""
    clean = [(name, message) for name, message in failed if not names_student(message, name)]
    messages = collections.Counter(anonymised(message, name) for name, message in clean or failed)
    return messages.most_common(1)[0][0]


def build(record: dict, audit_rows: list[dict] | None = None, audit_note: str = "",
          waiting: dict | None = None) -> ClassReport:
    """The report of `record` (results.json); `audit_rows` are audit.csv's rows, if an audit ran;
    `waiting` the written answers nbgrader says wait for a manual grade, if there is a gradebook."""
    students = record["students"]
    names = list(students)
    known = verdict_causes()
    # The checks, their order and points as the record has them (importing the checks imports torch).
    first = next(iter(students.values()), {"notebooks": {key: {"checks": []} for key in NOTEBOOKS}})
    checks = [(key, check) for key, notebook in first["notebooks"].items() for check in notebook["checks"]]
    per_notebook = {key: [sum(c["points"] for c in s["notebooks"][key]["checks"]) for s in students.values()]
                    for key in first["notebooks"]}
    notebook_out_of = {key: sum(c["max"] for c in notebook["checks"]) for key, notebook in first["notebooks"].items()}
    return ClassReport(
        students=names,
        totals=[sum(points) for points in zip(*per_notebook.values())] if names else [],
        out_of=sum(notebook_out_of.values()),
        notebook_totals=per_notebook,
        notebook_out_of=notebook_out_of,
        tasks=[_task_scores(students, key, task) for key, task in dict.fromkeys((k, c["task"]) for k, c in checks)],
        causes=_causes(students, known, [(key, check["name"]) for key, check in checks]),
        looks=_looks(students, audit_rows or [], known),
        waiting=waiting,
        audit_note=audit_note,
    )


def _task_scores(students: dict, key: str, task: str) -> TaskScores:
    counts = collections.Counter()
    out_of = 0
    for student in students.values():
        got, out_of = task_points(student["notebooks"][key], task)
        counts["full" if got == out_of else "none" if got == 0 else "partial"] += 1
    return TaskScores(key, task, out_of, counts["full"], counts["partial"], counts["none"])


def _causes(students: dict, known: dict[str, str], checks: list[tuple[str, str]]) -> list[Cause]:
    groups: dict[tuple, list[tuple[str, str]]] = collections.defaultdict(list)  # -> [(student, message)]
    for name, student in students.items():
        for key, notebook in student["notebooks"].items():
            for check in notebook["checks"]:
                if not check["passed"]:
                    groups[(key, check["task"], check["name"], check.get("cause") or "wrong")].append(
                        (name, check["message"]))
    order = {check: number for number, check in enumerate(checks)}
    causes = []
    for (key, task, check, cause), failed in groups.items():
        causes.append(Cause(key, task, [check], cause, cause_label(cause, known), [name for name, _ in failed],
                            example(failed)))
    return sorted(causes, key=lambda c: (order.get((c.notebook, c.checks[0]), len(order)), -c.count, c.cause))


def _looks(students: dict, audit_rows: list[dict], known: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    looks: dict[str, list[tuple[str, str]]] = {name: [(_kind(reason), reason) for reason in student["needs_a_look"]]
                                                for name, student in students.items()}
    for name, student in students.items():
        for key, notebook in student["notebooks"].items():
            alarming = [c for c in notebook["checks"] if c.get("cause") in ALARMING]
            earned_nothing = any(reason.startswith(f"{key} earned nothing") for _, reason in looks[name])
            if alarming and not earned_nothing:
                looks[name].append((alarming[0]["cause"].replace("_", " "), f"{key} "
                                    f"{cause_label(alarming[0]['cause'], known)}: {first_line(alarming[0]['message'])}"))
    for name, reason in _identical(students):
        looks[name].append(("identical", reason))
    by_cell = {spreadsheet_safe(printable_name(name)): name for name in students}  # audit.csv's student column
    for row in audit_rows:
        name = by_cell.get(row.get("student", ""), row.get("student", ""))
        looks.setdefault(name, []).append(("nbgrader differs", (
            f"{row.get('notebook')} {row.get('task')}: nbgrader {row.get('nbgrader')}/{row.get('max')}, "
            f"lora-grade {row.get('lora-grade')}/{row.get('max')}")))
    return {name: reasons for name, reasons in looks.items() if reasons}


_KINDS = [(r"not handed in", "not handed in"), (r"refused", "refused"), (r"notebooks under other names", "other names"),
          (r"\d\d earned nothing", "earned nothing"), (r"\d\d integrity report", "integrity")]


def _kind(reason: str) -> str:
    return next((kind for pattern, kind in _KINDS if re.match(pattern, reason)), "other")


def _identical(students: dict, shown: int = 5):
    """(student, reason) for the handed-in notebooks byte for byte the same as another student's,
    among notebooks that earned points (an untouched release is "earned nothing" already)."""
    by_hash: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for name, student in students.items():
        for key, notebook in student["notebooks"].items():
            digest = notebook["sha256"] or ""  # None: not handed in; "unreadable: ...": no content to compare
            if re.fullmatch(r"[0-9a-f]{64}", digest) and any(check["passed"] for check in notebook["checks"]):
                by_hash[(key, digest)].append(name)
    alike: dict[tuple[str, tuple[str, ...]], list[str]] = collections.defaultdict(list)  # (student, others): keys
    for (key, _), names in sorted(by_hash.items()):
        for name in names if len(names) > 1 else ():
            alike[(name, tuple(other for other in names if other != name))].append(key)
    for (name, others), keys in alike.items():
        listed = ", ".join(map(printable_name, others[:shown]))
        more = f" and {len(others) - shown} more" if len(others) > shown else ""
        notebooks = f"{keys[0]} is" if len(keys) == 1 else f"{', '.join(keys)} are"
        yield name, f"{notebooks} identical, byte for byte, to what {listed}{more} handed in"


CSV_COLUMNS = ["task", "check", "cause", "count", "students"]


def causes_csv(report: ClassReport) -> str:
    """A row per failed check and cause: task ("02 lora_flops", as in grades.csv), check, cause
    key, how many students, and their names joined by "; "."""
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for cause in report.causes:
        writer.writerow([f"{cause.notebook} {cause.task}", cause.checks[0], spreadsheet_safe(printable_name(cause.cause)),
                         cause.count, spreadsheet_safe("; ".join(map(printable_name, cause.students)))])
    return lines.getvalue()


def summary_line(report: ClassReport) -> str:
    count = len(report.students)
    mean = sum(report.totals) / count if count else 0
    return (f"{count} students, autograded points: mean {mean:.1f}, median {report.median:g} of {report.out_of}; "
            f"full marks {report.totals.count(report.out_of)}, zero {report.totals.count(0)}; "
            f"need a look: {len(report.looks)}")

