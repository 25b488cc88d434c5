"""The `lora-grade` command: `autograde` a class, `merge` shards, `audit` nbgrader's scores, `report`."""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.audit import audit
from lora_grader.classgrade.grade import (ASSIGNMENT, find_students, grade_class, grader_fingerprint, in_shard,
                                          parse_shard)
from lora_grader.classgrade.outputs import FEEDBACK, GRADES, RESULTS, merge, read_results, spreadsheet_safe, write_outputs
from lora_grader.classgrade.outputs import _write as write_whole  # a reader never sees half a file
from lora_grader.grading import SUPPORTED, UNSUPPORTED_MESSAGE, Timeouts, printable, printable_name
from lora_grader.report import first_line, sandbox_deaths

OUT = Path("lora_grading")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as error:
        print(f"lora-grade {args.command}: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-grade", description=(
        "Grade a class with the isolated grader (the checks of `pytest autograder`), run from the "
        "course folder. Outputs go to lora_grading/ (results.json, grades.csv, feedback/)."))
    commands = parser.add_subparsers(dest="command", required=True)
    autograde = commands.add_parser("autograde", help="grade every student (only what changed since the last run)")
    _grading_options(autograde)
    autograde.add_argument("--shard", metavar="K/N", type=parse_shard,
                           help="grade only shard K of N (output: lora_grading/shard-K-of-N); `merge` joins them")
    autograde.set_defaults(run=_autograde)
    merged = commands.add_parser("merge", help="join the outputs of shards 1..N into one class's outputs")
    merged.add_argument("shards", nargs="+", type=Path, metavar="SHARD_DIR")
    merged.add_argument("--out", type=Path, default=OUT, help=f"where to write (default: {OUT})")
    merged.set_defaults(run=_merge)
    audited = commands.add_parser("audit", help="grade as `autograde` does, then list every task on which "
                                                "nbgrader's automatic score differs")
    _grading_options(audited)
    audited.add_argument("--gradebook", type=Path, default=Path("gradebook.db"),
                         help="nbgrader's database (default: gradebook.db)")
    audited.set_defaults(run=_audit, shard=None)
    status = commands.add_parser("status", help="before feedback and export: per student and notebook, what is "
                                                "autograded, what waits for a manual grade, and where nbgrader "
                                                "and lora-grade disagree; exit code 1 while anything waits")
    _grading_options(status)
    status.add_argument("--gradebook", type=Path, default=Path("gradebook.db"),
                        help="nbgrader's database (default: gradebook.db)")
    status.set_defaults(run=_status, shard=None)
    report = commands.add_parser("report", help="from autograde's outputs (no grading): one HTML page of what "
                                                "the class got wrong, report.html, and causes.csv")
    report.add_argument("--out", type=Path, default=OUT, help=f"autograde's output folder, where the report "
                                                              f"goes too (default: {OUT})")
    report.add_argument("--gradebook", type=Path, default=Path("gradebook.db"),
                        help="nbgrader's database, for the written answers waiting (default: gradebook.db; "
                             "skipped when there is none)")
    report.set_defaults(run=_report)
    return parser


def _grading_options(parser) -> None:
    parser.add_argument("submitted", nargs="?", type=Path, default=Path("submitted"),
                        help=f"folder of student folders, each with the notebooks or a {ASSIGNMENT}/ folder of "
                             "them (default: submitted, nbgrader's)")
    parser.add_argument("--out", type=Path, help=f"where to write (default: {OUT})")
    parser.add_argument("--jobs", "-j", type=int, default=max(2, os.cpu_count() or 1),
                        help="notebooks graded at once (default: one per core, at least 2)")
    parser.add_argument("--force", action="store_true", help="grade every notebook again, changed or not")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _grade(args, timeouts: Timeouts = Timeouts()):
    if not SUPPORTED:
        raise ValueError(UNSUPPORTED_MESSAGE)
    if not args.submitted.is_dir():
        raise ValueError(f"no folder {args.submitted}: run from the course folder, or name the folder of "
                         "student folders")
    out = args.out or (OUT / f"shard-{args.shard[0]}-of-{args.shard[1]}" if args.shard else OUT)
    students = [s for s in find_students(args.submitted) if not args.shard or in_shard(s.name, args.shard)]
    grader = grader_fingerprint(timeouts)
    start = time.monotonic()
    run = grade_class(students, None if args.force else read_results(out), grader, args.jobs,
                      timeouts, args.progress)
    write_outputs(out, grader, run.students, "{}/{}".format(*args.shard) if args.shard else None)
    print(_summary(run, time.monotonic() - start, out))
    return run, out


def _autograde(args) -> int:
    _grade(args)
    return 0


def _summary(run, seconds: float, out: Path) -> str:
    students = run.students
    lines = [f"{len(students)} students in {seconds:.0f} s: {run.graded} notebooks graded, "
             f"{run.reused} unchanged since the last run, {run.missing} not handed in"]
    if students:
        totals = [sum(c["points"] for n in s["notebooks"].values() for c in n["checks"]) for s in students.values()]
        out_of = sum(c["max"] for n in next(iter(students.values()))["notebooks"].values() for c in n["checks"])
        lines.append(f"autograded points: mean {sum(totals) / len(totals):.1f} of {out_of}, "
                     f"full marks {totals.count(out_of)}, zero {totals.count(0)}")
    whose = {death.job: f"{printable_name(name)}'s {key}" for name, key, death in run.deaths}
    gave_up = {death.job for name, key, death in run.deaths if students[name]["notebooks"][key].get("grader_failed")}
    lines += sandbox_deaths([death for _, _, death in run.deaths], whose.get, gave_up)
    looks = {name: s["needs_a_look"] for name, s in students.items() if s["needs_a_look"]}
    lines.append(f"need a look: {len(looks)}" + ("" if looks else " (none)"))
    # A folder name is the student's to choose: a newline or an escape code in it must not forge
    # a line of this summary or reach the terminal.
    lines += [f"  {printable_name(name)}: {printable(reason)}" for name, reasons in looks.items() for reason in reasons]
    lines.append(f"written: {out / GRADES}, {out / RESULTS}, {out / 'feedback' / '<student>' / 'lora' / FEEDBACK}")
    return "\n".join(lines)


def _merge(args) -> int:
    count = merge(args.shards, args.out)
    print(f"merged {len(args.shards)} shards, {count} students: {args.out / GRADES}, {args.out / RESULTS}, "
          f"{args.out / 'feedback'}")
    return 0


def _audit(args) -> int:
    run, out = _grade(args)
    disagreements, absent = audit(run.students, args.gradebook)
    with open(out / "audit.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["student", "notebook", "task", "nbgrader", "lora-grade", "max", "lora-grade's message"])
        writer.writerows([spreadsheet_safe(printable_name(d.student)), d.notebook, d.task, f"{d.nbgrader:g}", d.ours, d.max,
                          spreadsheet_safe(d.message)] for d in disagreements)
    print(f"\naudit against {args.gradebook}: {len(disagreements)} tasks on which nbgrader and lora-grade "
          f"disagree" + (":" if disagreements else " (none)"))
    for d in disagreements:
        why = first_line(d.message) if d.message else "every check of the task passed"
        print(f"  {printable_name(d.student)}  {d.notebook} {d.task}: nbgrader {d.nbgrader:g}/{d.max}, "
              f"lora-grade {d.ours}/{d.max}: {why}")
    if absent:
        print(f"not in nbgrader's gradebook ({len(absent)}): {', '.join(map(printable_name, absent))}")
    flagged = [(name, key, line) for name, student in run.students.items()
               for key, notebook in student["notebooks"].items() for line in notebook.get("integrity", [])]
    print(f"integrity reports, for a person to read (not a verdict): {len(flagged)} lines" + (":" if flagged else ""))
    for name, key, line in flagged:
        print(f"  {printable_name(name)}  {key}: {printable(line)}")
    print(f"written: {out / 'audit.csv'}")
    return 0


def _status(args) -> int:
    """What still needs a person before `nbgrader generate_feedback` and `nbgrader export`."""
    run, _ = _grade(args)
    disagreements, absent = audit(run.students, args.gradebook)
    waiting = manual_grades_waiting(args.gradebook)
    disagree = {(d.student, d.notebook) for d in disagreements}
    print(f"\n{'student':24} {'notebook':8} {'autograded':10} {'disagreement':22} manual grades waiting")
    for name in run.students:
        for key in run.students[name]["notebooks"]:
            handed_in = run.students[name]["notebooks"][key]["sha256"] is not None
            autograded = "no" if name in absent else "yes" if handed_in else "missing"
            disagreement = "yes: lora-grade audit" if (name, key) in disagree else "-"
            print(f"{printable_name(name):24} {key:8} {autograded:10} {disagreement:22} {', '.join(waiting.get((name, key), [])) or '-'}")
    count = sum(map(len, waiting.values()))
    if count or absent:
        print(f"\nwaiting: {count} written answers to grade in the Formgrader"
              + (f", {len(absent)} students not autograded by nbgrader" if absent else "")
              + ": feedback and export would count them as 0")
        return 1
    print("\nnothing waits for a person: generate_feedback and export are safe to run")
    return 0


def _report(args) -> int:
    from lora_grader.classgrade.class_report import build, causes_csv, summary_line
    from lora_grader.classgrade.report_page import page

    record = read_results(args.out)
    if record is None:
        raise ValueError(f"no {args.out / RESULTS}: run `lora-grade autograde` first")
    rows, note = _audit_rows(args.out)
    waiting = manual_grades_waiting(args.gradebook) if args.gradebook.is_file() else None
    report = build(record, rows, note, waiting)
    write_whole(args.out / "causes.csv", causes_csv(report))
    write_whole(args.out / "report.html", page(report))
    print(summary_line(report))
    print(f"written: {args.out / 'causes.csv'}")
    print(args.out / "report.html")
    return 0


def _audit_rows(out: Path) -> tuple[list[dict] | None, str]:
    """audit.csv's rows, if `lora-grade audit` ran, and a note on where they come from."""
    path = out / "audit.csv"
    if not path.is_file():
        return None, "No audit against nbgrader's scores: `lora-grade audit` writes audit.csv."
    with open(path, encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    stale = path.stat().st_mtime < (out / RESULTS).stat().st_mtime
    return rows, (f"nbgrader's scores as of the last `lora-grade audit` ({len(rows)} task{' differs' if len(rows) == 1 else 's differ'})"
                  + ("; autograde ran since: run the audit again to bring it up to date." if stale else "."))


def manual_grades_waiting(gradebook: Path) -> dict[tuple[str, str], list[str]]:
    """{(student, notebook key): [grade ids]} of answers nbgrader says need a manual grade."""
    from nbgrader.api import Gradebook

    keys = {Path(notebook.filename).stem: key for key, notebook in NOTEBOOKS.items()}
    waiting: dict[tuple[str, str], list[str]] = {}
    with Gradebook(f"sqlite:///{Path(gradebook).resolve()}") as book:
        for submission in book.assignment_submissions(ASSIGNMENT):
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    if grade.needs_manual_grade and grade.manual_score is None and notebook.name in keys:
                        waiting.setdefault((submission.student_id, keys[notebook.name]), []).append(grade.name)
    return waiting
