"""`lora-grade report`: the class's causes grouped and counted from results.json (fast, from a
synthetic record), names and student text escaped, and (slow) a class built from the catalogue,
graded by `lora-grade autograde`, reported, and the page opened in Chromium."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.classgrade.class_report import CSV_COLUMNS, build, causes_csv
from lora_grader.classgrade.outputs import write_outputs
from lora_grader.classgrade.report_page import page

def notebook(key: str, student: str, fails: dict | None = None, missing: bool = False) -> dict:
    """A results.json notebook entry; `fails` maps a check name to (cause, message)."""
    fails = {check.name: ("not_handed_in", f"{NOTEBOOKS[key].filename} was not handed in") for check in
             checks_of(key)} if missing else (fails or {})
    return {"file": NOTEBOOKS[key].filename,
            "sha256": None if missing else hashlib.sha256(f"{student}/{key}".encode()).hexdigest(),
            "checks": [{"name": c.name, "task": c.task, "passed": c.name not in fails,
                        "points": 0 if c.name in fails else c.points, "max": c.points,
                        "message": fails.get(c.name, ("", ""))[1], "cause": fails.get(c.name, ("", ""))[0]}
                       for c in checks_of(key)],
            "integrity": []}


def student(name: str, looks=(), **notebooks) -> dict:
    """Every notebook complete but those given as nbXX=entry."""
    return {"notebooks": {key: notebooks.get(f"nb{key}") or notebook(key, name) for key in NOTEBOOKS},
            "needs_a_look": list(looks)}


FLOPS = "lora_flops(4, 8, 6, 2, materialize=False) returned 96 but FlopCounterMode counts 192: that looks like multiply-adds"


def synthetic_class() -> dict:
    students = {f"s{n:02d}": student(f"s{n:02d}") for n in range(6)}
    for n in range(3):  # three students count multiply-adds; one returns a float
        name = f"m{n}"
        students[name] = student(name, nb02=notebook("02", name, {"lora_flops_factored": ("multiply_adds", FLOPS)}))
    students["float"] = student("float", nb02=notebook("02", "float", {
        "lora_flops_factored": ("not_int", "lora_flops(...) returned a float (96.0) but should return an int")}))
    raised = {c.name: ("raised:RuntimeError", f"lora_update raised RuntimeError in /home/raiser/x.py")
              for c in checks_of("01") if c.task == "lora_update"}
    students["raiser"] = student("raiser", nb01=notebook("01", "raiser", raised))
    students["absent"] = student("absent", ["not handed in: 04"], nb04=notebook("04", "absent", missing=True))
    return {"grader": "x", "students": students}


def test_failures_are_grouped_by_check_and_cause_and_counted():
    report = build(synthetic_class())
    groups = {(c.notebook, c.checks[0], c.cause): c for c in report.causes}
    flops = groups[("02", "lora_flops_factored", "multiply_adds")]
    assert flops.students == ["m0", "m1", "m2"] and flops.count == 3 and flops.example == FLOPS
    assert "multiply-adds" in flops.label, "the verdict module's explanation of its key"
    not_int = groups[("02", "lora_flops_factored", "not_int")]
    assert not_int.students == ["float"] and "returned a float" in not_int.example, "a name can be a word too"
    assert all(groups[("04", c.name, "not_handed_in")].students == ["absent"] for c in checks_of("04"))
    assert sum(c.count for c in report.causes) == 3 + 1 + 3 + len(checks_of("04"))
    lora_update = report.task_causes("01", "lora_update")
    assert len(lora_update) == 1 and len(lora_update[0].checks) == 3, "one cause, same students: one row"
    assert lora_update[0].label == "raised RuntimeError"
    assert "/home/<student>/x.py" in lora_update[0].example, "the example names no student"
    flops_task = report.task_causes("02", "lora_flops")
    assert [(c.cause, c.count) for c in flops_task] == [("multiply_adds", 3), ("not_int", 1)]


def test_points_per_task_and_totals():
    report = build(synthetic_class())
    scores = {(t.notebook, t.task): t for t in report.tasks}
    flops = scores[("02", "lora_flops")]
    assert (flops.full, flops.partial, flops.none) == (len(report.students) - 4, 4, 0)
    merge = scores[("04", "MergeableLoRALinear")]
    assert (merge.full, merge.partial, merge.none) == (len(report.students) - 1, 0, 1)
    assert report.totals.count(report.out_of) == 6
    assert report.totals[report.students.index("absent")] == report.out_of - report.notebook_out_of["04"]


def test_causes_csv_has_a_row_per_check_and_cause():
    rows = list(csv.DictReader(io.StringIO(causes_csv(build(synthetic_class())))))
    assert list(rows[0]) == CSV_COLUMNS
    assert {"task": "02 lora_flops", "check": "lora_flops_factored", "cause": "multiply_adds", "count": "3",
            "students": "m0; m1; m2"} in rows
    assert len(rows) == 3 + 2 + len(checks_of("04"))


def test_who_needs_a_look_and_why():
    record = synthetic_class()
    for key in ("03", "05"):  # the same bytes handed in
        record["students"]["s02"]["notebooks"][key] = json.loads(json.dumps(record["students"]["s01"]["notebooks"][key]))
    crashed = notebook("05", "s03", {"merge_all_outputs": ("crashed", "the notebook's process died (exit code 3)")})
    record["students"]["s03"]["notebooks"]["05"] = crashed
    audit = [{"student": "s04", "notebook": "01", "task": "lora_update", "nbgrader": "4", "lora-grade": "0", "max": "4"}]
    looks = build(record, audit, "from audit.csv").looks
    assert looks["absent"] == [("not handed in", "not handed in: 04")]
    assert looks["s01"] == [("identical", "03, 05 are identical, byte for byte, to what s02 handed in")]
    assert looks["s02"] == [("identical", "03, 05 are identical, byte for byte, to what s01 handed in")]
    assert looks["s03"] == [("crashed", "05 the notebook's process died: the notebook's process died (exit code 3)")]
    assert looks["s04"] == [("nbgrader differs", "01 lora_update: nbgrader 4/4, lora-grade 0/4")]
    assert "s00" not in looks and "m0" not in looks


HOSTILE = '<img src=x onerror="alert(1)">'


def test_names_and_student_text_are_escaped_in_the_page_and_safe_in_the_csv():
    record = synthetic_class()
    formula, evil = "=HYPERLINK(\"http://x\")", HOSTILE + "\n=cmd"
    cause = "raised:<script>alert(2)</script>"  # an exception type's name is the student's to choose
    for name in (formula, evil):
        record["students"][name] = student(name, [f"not handed in: {HOSTILE}"], nb01=notebook("01", name, {
            "silent_failure_case": (cause, f"<b>bold</b> {HOSTILE}")}))
    report = build(record, [{"student": HOSTILE, "notebook": "<i>", "task": "t", "nbgrader": "1",
                             "lora-grade": "0", "max": "1"}], "note <u>", {(HOSTILE, "02"): ["<answer>"]})
    html = page(report)
    for raw in (HOSTILE, "<script", "<b>bold", "<i>", "<u>", "<answer>", "onerror=\""):
        assert raw not in html, raw
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;\\n=cmd" in html, "the name on one line, escaped"
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    rows = list(csv.DictReader(io.StringIO(causes_csv(report))))
    row = next(row for row in rows if row["check"] == "silent_failure_case")
    assert row["cause"] == cause and row["count"] == "2"
    assert row["students"] == "'" + formula + "; " + HOSTILE + "\\n=cmd", "no formula, no line break"


def test_report_command_writes_the_page_and_the_csv_and_prints_the_path(tmp_path):
    record = synthetic_class()
    write_outputs(tmp_path / "lora_grading", "x", record["students"])
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "report"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(Path("lora_grading") / "report.html")
    html = (tmp_path / "lora_grading" / "report.html").read_text(encoding="utf-8")
    assert html.count('<img src="data:image/png;base64,') == 3
    assert "http:" not in html and "https:" not in html and "<script" not in html, "nothing fetched, nothing run"
    assert "No nbgrader gradebook here" in html and "No audit against nbgrader" in html
    assert (tmp_path / "lora_grading" / "causes.csv").read_text().startswith(",".join(CSV_COLUMNS))


def test_report_shows_the_audit_and_says_when_autograde_ran_after_it(tmp_path):
    import os

    out = tmp_path / "lora_grading"
    write_outputs(out, "x", synthetic_class()["students"])
    (out / "audit.csv").write_text("student,notebook,task,nbgrader,lora-grade,max,lora-grade's message\n"
                                   "m1,02,lora_flops,3,1,3,whatever\n", encoding="utf-8")
    lora_grade("report", cwd=tmp_path)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "02 lora_flops: nbgrader 3/3, lora-grade 1/3" in html and "(1 task differs)." in html
    os.utime(out / "audit.csv", (1, 1))  # older than results.json: autograde ran since the audit
    lora_grade("report", cwd=tmp_path)
    assert "autograde ran since: run the audit again" in (out / "report.html").read_text(encoding="utf-8")


def test_report_without_results_says_to_autograde_first(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "report"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "run `lora-grade autograde` first" in done.stderr


# --- a class built from the catalogue, graded, reported and opened in Chromium ------------------

CLASS_SIZE = 20  # four of each special case, eight catalogued bugs (see catalogue_class)
SCALE = 500
FLOPS_CAUSES = {"02-flops-multiply-adds": "multiply_adds", "02-flops-forget-the-product-with-x": "product_only",
                "02-flops-as-float": "not_int"}


def lora_grade(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", *args], cwd=cwd, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"lora-grade {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    from catalogue_class import plan_class, write_class

    root = tmp_path_factory.mktemp("reported")
    plans = plan_class(CLASS_SIZE)
    write_class(plans, root / "submitted")
    lora_grade("autograde", "--no-progress", cwd=root)
    return root, plans, lora_grade("report", cwd=root)


def _failures(out: Path) -> dict[tuple[str, str, str], str]:
    """{(student, notebook, check): cause} from causes.csv."""
    with open(out / "causes.csv", encoding="utf-8", newline="") as file:
        return {(student, row["task"].split()[0], row["check"]): row["cause"]
                for row in csv.DictReader(file) for student in row["students"].split("; ")}


@pytest.mark.slow
def test_the_causes_counted_per_check_are_the_catalogues(reported):
    import collections

    root, plans, summary = reported
    assert summary.splitlines()[-1] == str(Path("lora_grading") / "report.html")
    failures = _failures(root / "lora_grading")
    order = {(key, check.name): n for n, (key, check) in enumerate((k, c) for k in NOTEBOOKS for c in checks_of(k))}
    first: dict[tuple[str, str], str] = {}
    for student, key, check in sorted(failures, key=lambda f: order[f[1:]]):
        first.setdefault((student, key), check)
    first_check = {key: checks_of(key)[0].name for key in NOTEBOOKS}
    expected = {(plan.name, key): check for plan in plans for key, check in plan.first_failures(first_check).items()}
    assert first == expected, "the first failing check of each student's notebook, as the catalogue says"
    assert collections.Counter((key, check) for (_, key), check in first.items()) == collections.Counter(
        (key, check) for (_, key), check in expected.items())
    for plan in plans:
        for bug in plan.bugs:
            cause = failures[(plan.name, bug.notebook, bug.caught_by)]
            assert cause == FLOPS_CAUSES.get(bug.name, cause) and cause != "", (plan.name, bug.name, cause)
        if plan.special == "missing":
            assert all(failures[(plan.name, key, c.name)] == "not_handed_in" for key in ("04", "05") for c in checks_of(key))
        if plan.special == "patches-the-grader":
            assert failures[(plan.name, "01", "lora_update_values")] == "not_implemented"


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine (`apt-get install -y chromium` on Debian)")


def _open(page_path: Path, screenshot: Path | None = None) -> tuple[float, dict]:
    """Seconds until the page and its images are loaded in Chromium, and what the page shows."""
    import time

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        start = time.perf_counter()
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        page.wait_for_function("[...document.images].every(image => image.complete)")
        seconds = time.perf_counter() - start
        shown = page.evaluate("""() => ({
            images: [...document.images].map(image => [image.naturalWidth, image.getBoundingClientRect().height]),
            tasks: document.querySelectorAll('h3[id^="task-"]').length,
            looks: [...document.querySelectorAll('#looks + p + table tr td:first-child')].map(td => td.textContent),
            openLists: [...document.querySelectorAll('details')].filter(d => d.open).length,
            lists: document.querySelectorAll('details').length,
            scripts: document.scripts.length,
        })""")
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return seconds, shown


@pytest.mark.slow
def test_the_page_opens_in_chromium_with_its_plots_and_the_students_who_need_a_look(reported, tmp_path):
    root, plans, _ = reported
    screenshot = tmp_path / "report.png"
    seconds, shown = _open(root / "lora_grading" / "report.html", screenshot)
    print(f"\nreport of {CLASS_SIZE} students loaded in Chromium in {seconds:.2f} s; screenshot: {screenshot}")
    assert len(shown["images"]) == 3 and all(width > 0 and height > 0 for width, height in shown["images"]), shown
    assert shown["tasks"] == len({(key, c.task) for key in NOTEBOOKS for c in checks_of(key)})
    assert set(shown["looks"]) == {plan.name for plan in plans if plan.special} | {plan.copies for plan in plans if plan.copies}
    assert shown["lists"] > 0 and shown["openLists"] == 0 and shown["scripts"] == 0, "student lists folded, no script"
    assert screenshot.stat().st_size > 0


@pytest.mark.slow
def test_a_class_of_500_repeated_from_the_catalogues(reported, tmp_path):
    """Measured, not asserted: the time to build the report and to load it (printed)."""
    import time

    from catalogue_class import repeated

    root, _, _ = reported
    record = json.loads((root / "lora_grading" / "results.json").read_text(encoding="utf-8"))
    (tmp_path / "lora_grading").mkdir()
    (tmp_path / "lora_grading" / "results.json").write_text(json.dumps(repeated(record, SCALE)), encoding="utf-8")
    start = time.perf_counter()
    lora_grade("report", cwd=tmp_path)
    built = time.perf_counter() - start
    seconds, shown = _open(tmp_path / "lora_grading" / "report.html", tmp_path / "report-500.png")
    size = (tmp_path / "lora_grading" / "report.html").stat().st_size
    print(f"\n{SCALE} students: report built in {built:.1f} s, {size / 1e6:.1f} MB, loaded in Chromium in {seconds:.2f} s")
    assert len(shown["images"]) == 3 and all(width > 0 for width, _ in shown["images"])
    with open(tmp_path / "lora_grading" / "causes.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert sum(int(row["count"]) for row in rows) == SCALE // CLASS_SIZE * sum(
        1 for _ in _failures(root / "lora_grading"))
