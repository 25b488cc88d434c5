"""What a run leaves for the instructor, all made from one record of the results (results.json):
grades.csv, and feedback/<student>/lora/lora_grader.md. The same record always makes the same
bytes, which is why merging the shards' records gives exactly a single run's outputs."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.classgrade.grade import in_shard, parse_shard
from lora_grader.grading import CheckResult, printable_name
from lora_grader.report import points_table

RESULTS, GRADES, FEEDBACK = "results.json", "grades.csv", "lora_grader.md"

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a student's folder name such as
    `=HYPERLINK(...)` would otherwise run as a formula when the instructor opens grades.csv."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def feedback_path(out: Path, student: str) -> Path:
    return Path(out) / "feedback" / student / "lora" / FEEDBACK


def read_results(out: Path) -> dict | None:
    path = Path(out) / RESULTS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise ValueError(f"{path} is damaged ({error}): grade again with --force") from None


def write_outputs(out: Path, grader: str, students: dict, shard: str | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"grader": grader, **({"shard": shard} if shard else {}),
              "students": dict(sorted(students.items()))}
    _write(out / RESULTS, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    _write(out / GRADES, grades_csv(record["students"]))
    for name, student in record["students"].items():
        _write(feedback_path(out, name), feedback(name, student))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def tasks() -> list[tuple[str, str]]:
    """(notebook key, task) in notebook order: the CSV's columns."""
    return [(key, task) for key in NOTEBOOKS for task in dict.fromkeys(c.task for c in checks_of(key))]


def task_points(notebook: dict, task: str) -> tuple[int, int]:
    checks = [check for check in notebook["checks"] if check["task"] == task]
    return sum(check["points"] for check in checks), sum(check["max"] for check in checks)


def grades_csv(students: dict) -> str:
    columns = tasks()
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(["student", *(f"{key} {task}" for key, task in columns), "total", "max"])
    for name, student in students.items():
        points = [task_points(student["notebooks"][key], task) for key, task in columns]
        writer.writerow([spreadsheet_safe(printable_name(name)), *(got for got, _ in points),
                         sum(got for got, _ in points), sum(out_of for _, out_of in points)])
    return lines.getvalue()


def check_results(student: dict) -> list[CheckResult]:
    """The stored verdicts as the grader's own results, for the report that `pytest autograder` prints."""
    results = []
    for key, notebook in student["notebooks"].items():
        by_name = {check.name: check for check in checks_of(key)}
        results.extend(CheckResult(key, by_name[c["name"]], c["message"], c.get("cause", ""))
                       for c in notebook["checks"])
    return results


def feedback(name: str, student: dict) -> str:
    """The messages and the table of points `pytest autograder` shows, as markdown."""
    lines = [f"# LoRA course: autograder feedback for {printable_name(name)}", "",
             "The same checks as `pytest autograder`, hidden cases included; written answers are "
             "graded by your instructor.", ""]
    for key, notebook in student["notebooks"].items():
        lines += [f"## {key} {NOTEBOOKS[key].title} (`{notebook['file']}`)", ""]
        if notebook["sha256"] is None:
            lines += [f"Not handed in: notebook {key} scores 0.", ""]
            continue
        for check in notebook["checks"]:
            verdict = "passed" if check["passed"] else "failed"
            lines.append(f"- `{check['name']}`: {verdict} ({check['points']}/{check['max']})")
            if not check["passed"]:
                lines += ["", *_fenced(check["message"]), ""]
        lines.append("")
    lines += ["## Points", "", *_fenced(points_table(check_results(student)))]
    return "\n".join(lines).rstrip("\n") + "\n"


def _fenced(text: str) -> list[str]:
    """A code block no backticks in the (untrusted) text can close early."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return [fence, *text.splitlines(), fence]


def merge(shard_dirs: list[Path], out: Path) -> int:
    """Merge the records of shards 1..N of one class into `out`; the number of students. Each
    shard's students must be the ones `in_shard` gives it, each in one shard only: a folder
    edited by hand or mixed up with another class's is refused, not merged."""
    records = []
    for folder in shard_dirs:
        record = read_results(folder)
        if record is None:
            raise ValueError(f"{folder} has no {RESULTS}: is it a shard's output folder?")
        records.append(record)
    graders = {record["grader"] for record in records}
    if len(graders) != 1:
        raise ValueError("the shards were graded by different versions of the grader: grade them again")
    for folder, record in zip(shard_dirs, records):
        if "shard" not in record:
            raise ValueError(f"{folder} holds a whole class's results, not a shard's")
    shards = sorted(parse_shard(record["shard"]) for record in records)
    if shards != [(k, len(shards)) for k in range(1, len(shards) + 1)]:
        found = ", ".join(record["shard"] for record in records)
        raise ValueError(f"merge needs each shard K/N of one class exactly once; found {found}")
    held_by = {}  # student -> the shard folders that hold them
    for folder, record in zip(shard_dirs, records):
        for name in record["students"]:
            held_by.setdefault(name, []).append(folder)
    for name, folders in held_by.items():
        if len(folders) > 1:
            raise ValueError(f"student {printable_name(name)} is in more than one shard: "
                             f"{', '.join(map(str, folders))}; grade the shards again")
    students = {}
    for folder, record in zip(shard_dirs, records):
        for name, student in record["students"].items():
            if not in_shard(name, parse_shard(record["shard"])):
                raise ValueError(f"{folder} holds student {printable_name(name)}, who does not belong to its "
                                 f"shard {record['shard']}: grade the shards again")
            students[name] = student
    write_outputs(out, graders.pop(), students)
    return len(students)
