"""The closing table: each task's points, earned out of possible, and what to fix next."""
from __future__ import annotations

import shlex
from itertools import groupby

from lora_grader.checks import NOTEBOOKS


def first_line(message: str) -> str:
    line = message.splitlines()[0] if message else ""
    return line if len(line) <= 100 else line[:97] + "..."


def rerun_command(notebook: str, check_name: str, notebooks: str | None = None) -> str:
    """The command that grades one check again, of the same notebooks as the run it follows
    (check names repeat across notebooks: the notebook is part of the selection)."""
    folder = ["--notebooks", notebooks] if notebooks else []
    return shlex.join(["pytest", "autograder", *folder, "-k", f"{notebook} and {check_name}"])


def points_table(results, notebook_dir=None, notebooks_option: str | None = None) -> str:
    """A plain-text table of tasks, in notebook order, from a list of CheckResult.
    `notebooks_option` is the --notebooks value the run was given, repeated in the re-run hint."""
    rows = [("notebook", "task", "points", "next to fix")]
    earned = possible = 0
    first_failure = None
    for key, of_notebook in groupby(sorted(results, key=lambda r: r.notebook), key=lambda r: r.notebook):
        for task, of_task in groupby(of_notebook, key=lambda r: r.check.task):
            of_task = list(of_task)
            got = sum(r.points for r in of_task)
            out_of = sum(r.check.points for r in of_task)
            failed = next((r for r in of_task if not r.passed), None)
            earned, possible = earned + got, possible + out_of
            if failed and first_failure is None:
                first_failure = failed
            rows.append((key, task, f"{got}/{out_of}",
                         f"{failed.check.name}: {first_line(failed.message)}" if failed else "done"))
        for task, points in NOTEBOOKS[key].module.MANUAL_POINTS.items():
            rows.append((key, task, f"–/{points}", "written answer, graded by your instructor"))
    rows.append(("", "total (autograded)", f"{earned}/{possible}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]
             for row in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    if notebook_dir is not None:
        lines.insert(0, f"graded: {notebook_dir}")
    if first_failure is not None:
        lines.append(f"Next: notebook {first_failure.notebook}, {first_failure.check.name}. "
                     f"Re-run just that with: {rerun_command(first_failure.notebook, first_failure.check.name, notebooks_option)}")
    return "\n".join(line.rstrip() for line in lines)


def integrity_report(integrity: dict) -> str:
    """Per notebook, what the sandbox refused or put back and the code that reaches for the grader."""
    lines = []
    for key in sorted(integrity):
        found = integrity[key].lines()
        if found:
            lines.append(f"notebook {key}:")
            lines.extend(f"  {line}" for line in found)
    return "\n".join(lines)


def sandbox_deaths(deaths, name, failed=()) -> list[str]:
    """A line for each notebook that was running when a grading sandbox died, in the order it
    happened. `deaths` are grading.Death; `name(job id)` says whose notebook it is, printable;
    `failed`: the job ids the grader gave up on (graded again next run)."""
    lines = []
    for job in dict.fromkeys(death.job for death in deaths):
        mine = [death for death in deaths if death.job == job]
        line = f"the sandbox died while grading {name(job)} ({mine[0].what}) and was restarted"
        if mine[-1].culprit:
            line += f"; graded alone, {name(job)} killed it again ({mine[-1].what}): it scores 0 and needs a look"
        elif job in failed:
            line += f"; {name(job)} could not be graded again in this run (the next run grades it)"
        else:
            line += "; graded again alone, its result stands"
        lines.append(line)
    return lines
