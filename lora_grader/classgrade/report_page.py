"""`lora-grade report`'s page: one self-contained HTML file, its plots embedded as PNG, no script
and nothing fetched from the network. Every name and every text that came from student code
(messages, cause keys such as an exception's type name) is escaped."""
from __future__ import annotations

import base64
import collections
import html
import io

from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.class_report import Cause, ClassReport, summary_line
from lora_grader.grading import printable, printable_name

# Okabe-Ito colours, readable when colour-blind
KINDS = {"full": ("full points", "#009E73"), "partial": ("some points", "#E69F00"), "none": ("no points", "#D55E00")}


def text(value) -> str:
    """Anything for the page: control characters shown, markup escaped."""
    return html.escape(printable(str(value)), quote=True)


def name(student: str) -> str:
    return html.escape(printable_name(student), quote=True)


def page(report: ClassReport) -> str:
    count = len(report.students)
    parts = [_HEAD, "<h1>LoRA course: what the class got wrong</h1>",
             f"<p class=lead>{text(summary_line(report))}.</p>",
             "<p>Autograded points only (the checks of <code>pytest autograder</code>, hidden cases included); "
             "written answers are graded in nbgrader's formgrader. From <code>results.json</code>: run "
             "<code>lora-grade autograde</code>, then <code>lora-grade report</code> again, to bring it up to date.</p>",
             _nav(report)]
    if not count:
        return "\n".join(parts + ["<p>No students in results.json.</p></body></html>\n"])
    parts += ["<h2 id=points>Points</h2>",
              _image(_totals_plot(report), "histogram of the autograded totals", 720),
              _image(_notebooks_plot(report), "histograms of the points per notebook", 1000),
              "<h2 id=tasks>Tasks</h2>",
              _image(_tasks_plot(report), "per task, students with full, partial and no points", 820),
              _task_table(report),
              "<h2 id=looks>Students who need a look</h2>", _looks(report),
              "<h2 id=causes>Why points were lost, task by task</h2>",
              "<p>Grouped by the check that failed and the cause it named (the explanation its verdict chose, "
              "or how the code failed to run); checks that failed the same students for the same cause share "
              "a row. Each group shows one of its messages, the student's name taken out. Also in "
              "<code>causes.csv</code>.</p>"]
    parts += [_task_causes(report, task) for task in report.tasks]
    parts += ["<h2 id=written>Written answers waiting for a manual grade</h2>", _waiting(report), "</body></html>\n"]
    return "\n".join(parts)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LoRA course: class report</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1080px; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin: 1.4em 0 .3em; }
.lead { font-size: 1.15em; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
table { border-collapse: collapse; width: 100%; margin: .4em 0; }
table.causes { table-layout: fixed; }
td code { word-break: break-word; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .25em .5em; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; white-space: nowrap; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .4em; margin: .2em 0;
      max-height: 14em; overflow: auto; font-size: 13px; }
.kind { display: inline-block; border-radius: 3px; padding: 0 .4em; margin-right: .4em; font-size: 12px;
        background: #eee; white-space: nowrap; }
.names { font-size: 13px; }
summary { cursor: pointer; }
nav a { margin-right: 1em; }
.muted { color: #666; }
</style></head><body>"""


def _nav(report: ClassReport) -> str:
    links = [("points", "Points"), ("tasks", "Tasks"), ("looks", f"Need a look ({len(report.looks)})"),
             ("causes", "Causes"), ("written", "Written answers")]
    return "<nav>" + "".join(f'<a href="#{anchor}">{text(label)}</a>' for anchor, label in links) + "</nav>"


def _image(png: bytes, alt: str, width: int) -> str:
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{text(alt)}" '
            f'width="{width}">')


def _figure(width: float, height: float, left: float = 0.6, bottom: float = 0.5, right: float = 0.15,
            top: float = 0.3, wspace: float = 0.2):
    """A figure with margins in inches (a layout engine would cost seconds of drawing)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height,
                           wspace=wspace)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _histogram(axes, values: list[int], out_of: int, title: str) -> None:
    width = max(1, round(out_of / 24))
    axes.hist(values, bins=range(0, out_of + width + 1, width), color="#4477AA", edgecolor="white")
    axes.set_title(title, fontsize=10)
    axes.set_xlim(0, out_of + width)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.xaxis.get_major_locator().set_params(integer=True)


def _totals_plot(report: ClassReport) -> bytes:
    figure = _figure(7.2, 2.6)
    axes = figure.subplots()
    _histogram(axes, report.totals, report.out_of, f"autograded total, out of {report.out_of}")
    axes.set_xlabel("points")
    axes.set_ylabel("students")
    return _png(figure)


def _notebooks_plot(report: ClassReport) -> bytes:
    figure = _figure(10, 2.2, left=0.4, bottom=0.3, wspace=0.25)
    for axes, key in zip(figure.subplots(1, len(NOTEBOOKS)), NOTEBOOKS):
        _histogram(axes, report.notebook_totals[key], report.notebook_out_of[key],
                   f"{key}, out of {report.notebook_out_of[key]}")
    return _png(figure)


def _tasks_plot(report: ClassReport) -> bytes:
    rows = list(reversed(report.tasks))  # the first task at the top
    figure = _figure(8.2, 1.0 + 0.28 * len(rows), left=2.4, top=0.4)
    axes = figure.subplots()
    labels = [f"{task.notebook} {task.task}" for task in rows]
    left = [0] * len(rows)
    for kind, (label, colour) in KINDS.items():
        counts = [getattr(task, kind) for task in rows]
        axes.barh(labels, counts, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, counts)]
    axes.set_xlim(0, max(left, default=1))
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("students")
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9)
    axes.tick_params(axis="y", labelsize=9)
    return _png(figure)


def _task_table(report: ClassReport) -> str:
    rows = ["<table><tr><th>task, most missed first</th><th class=n>points</th><th class=n>full</th>"
            "<th class=n>some</th><th class=n>none</th><th>largest cause</th></tr>"]
    for task in sorted(report.tasks, key=lambda task: -task.lost):
        causes = report.task_causes(task.notebook, task.task)
        top = f"{causes[0].count}: {text(causes[0].label)}" if causes else ""
        rows.append(f'<tr><td><a href="#task-{text(task.notebook)}-{text(task.task)}">{text(task.notebook)} {text(task.task)}</a>'
                    f"</td><td class=n>{task.out_of}</td><td class=n>{task.full}</td><td class=n>{task.partial}</td>"
                    f"<td class=n>{task.none}</td><td>{top}</td></tr>")
    return "\n".join(rows + ["</table>"])


def _looks(report: ClassReport) -> str:
    if not report.looks:
        return f"<p>Nobody. {text(report.audit_note)}</p>"
    kinds = collections.Counter(kind for reasons in report.looks.values() for kind in dict.fromkeys(k for k, _ in reasons))
    rows = [f"<p>{len(report.looks)} student{'s' if len(report.looks) != 1 else ''}: "
            + ", ".join(f"{count} {text(kind)}" for kind, count in kinds.most_common()) + f". {text(report.audit_note)}</p>",
            "<table><tr><th>student</th><th>why</th></tr>"]
    for student, reasons in report.looks.items():
        why = "<br>".join(f"<span class=kind>{text(kind)}</span>{text(reason)}" for kind, reason in reasons)
        rows.append(f"<tr><td>{name(student)}</td><td>{why}</td></tr>")
    return "\n".join(rows + ["</table>"])


def _task_causes(report: ClassReport, task) -> str:
    causes = report.task_causes(task.notebook, task.task)
    head = (f'<h3 id="task-{text(task.notebook)}-{text(task.task)}">{text(task.notebook)} {text(task.task)} '
            f'<span class=muted>({text(NOTEBOOKS[task.notebook].title)})</span></h3>'
            + (f"<p>{task.lost} of {len(report.students)} students lost points: {task.partial} some, {task.none} "
               f"all {task.out_of}.</p>" if task.lost else "<p>Every student got full points.</p>"))
    if not causes:
        return head
    rows = ["<table class=causes><colgroup><col style='width:6em'><col style='width:22%'><col style='width:24%'><col>"
            "</colgroup><tr><th class=n>students</th><th>cause</th><th>check</th><th>example message, and who</th></tr>"]
    rows += [_cause_row(cause) for cause in causes]
    return head + "\n".join(rows + ["</table>"])


def _cause_row(cause: Cause) -> str:
    checks = ", ".join(f"<code>{text(check)}</code>" for check in cause.checks)
    students = ", ".join(map(name, cause.students))
    return (f"<tr><td class=n><b>{cause.count}</b></td><td>{text(cause.label)}<br><code class=muted>"
            f"{text(cause.cause)}</code></td><td>{checks}</td><td><pre>{text(cause.example)}</pre>"
            f"<details><summary>{cause.count} student{'s' if cause.count != 1 else ''}</summary>"
            f"<div class=names>{students}</div></details></td></tr>")


def _waiting(report: ClassReport) -> str:
    if report.waiting is None:
        return ("<p>No nbgrader gradebook here (<code>--gradebook</code>, default <code>gradebook.db</code>): "
                "grade the written answers in nbgrader's formgrader.</p>")
    answers: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for (student, key), ids in sorted(report.waiting.items()):
        for answer in ids:
            answers[(key, answer)].append(student)
    if not answers:
        return "<p>None: every written answer in the gradebook has a grade.</p>"
    rows = [f"<p>{sum(map(len, answers.values()))} answers of {len(set(s for s, _ in report.waiting))} students "
            "wait in nbgrader's formgrader; feedback and export would count them as 0.</p>",
            "<table><tr><th>notebook</th><th>answer</th><th class=n>waiting</th><th>students</th></tr>"]
    for (key, answer), students in sorted(answers.items()):
        rows.append(f"<tr><td>{text(key)}</td><td><code>{text(answer)}</code></td><td class=n>{len(students)}</td>"
                    f"<td><details><summary>{len(students)} students</summary><div class=names>"
                    f"{', '.join(map(name, students))}</div></details></td></tr>")
    return "\n".join(rows + ["</table>"])
