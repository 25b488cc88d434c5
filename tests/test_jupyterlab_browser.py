"""The course in a real JupyterLab, driven in headless Chromium as a student and an instructor would.

Each test saves a screenshot of every step; when one fails, its captured output says where they
are, so a red CI shows what the student saw.
"""
from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as error:  # a dependency of the project's tests, not of the course
    raise ImportError('the browser test needs Playwright: pip install -e ".[test]"') from error

from catalogue import complete_submission
from machine import free_ports
from lora_grader.checks import NOTEBOOKS, checks_of

ROOT = Path(__file__).resolve().parents[1]
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]
# JupyterLab settings for the test: no news pop-up over the page.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
SLOW_CELL = 120_000  # ms: a cell that times matrix products on a busy 2-core machine

pytestmark = pytest.mark.slow


def _chromium(playwright) -> str | None:
    """The system's Chromium, else the one `playwright install` downloaded; skip if neither."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if Path(playwright.chromium.executable_path).exists():
        return None
    pytest.skip("no Chromium on this machine: install one (`apt-get install -y chromium` on Debian, "
                "as .ci/run does, or `python -m playwright install chromium`)")


class Lab:
    """A JupyterLab server on a temporary copy of the course: released and source notebooks,
    and the course's nbgrader configuration (the Formgrader and Validate read it)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "course-copy"
        for folder in ("course", "solutions"):
            shutil.copytree(ROOT / folder, self.root / folder)
        shutil.copy(ROOT / "nbgrader_config.py", self.root)
        settings = root / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        self.port, self.token = free_ports(1)[0], secrets.token_hex(16)
        self.log = root / "jupyterlab.log"
        env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(root / "lab-workspaces"))
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--ip=127.0.0.1",
                 f"--port={self.port}", f"--ServerApp.token={self.token}", "--ServerApp.open_browser=False",
                 f"--ServerApp.root_dir={self.root}"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"JupyterLab exited {self.process.returncode}:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url("api/status"), timeout=2)
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"JupyterLab did not answer within {seconds} s:\n{self.log.read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def notebook_url(self, workspace: str, path: str) -> str:
        # A workspace per test: no tabs restored from another test's session.
        return self.url(f"lab/workspaces/{workspace}/tree/{path}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Steps:
    """Screenshots of a test's steps, numbered in order."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0
        folder.mkdir(parents=True)

    def shot(self, name: str) -> None:
        self.count += 1
        self.page.screenshot(path=self.folder / f"{self.count:02d}-{name}.png", full_page=True)


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):  # the browser first: no server started where the test skips
    server = Lab(tmp_path_factory.mktemp("jupyterlab"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(playwright), args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # Offline, as many classrooms are: a page that fetches from a CDN (the Formgrader's MathJax) fails at once,
    # rather than when the connection times out.
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"), lambda route: route.abort())
    yield context.new_page()
    context.close()


@pytest.fixture
def steps(page, tmp_path):
    steps = Steps(page, tmp_path / "screenshots")
    print(f"screenshots of each step: {steps.folder}")  # pytest shows it when the test fails
    yield steps
    steps.shot("last")


def open_notebook(page, lab: Lab, path: str, workspace: str):
    page.goto(lab.notebook_url(workspace, path))
    notebook = page.locator(".jp-NotebookPanel")
    expect(notebook.locator(".jp-Cell").first).to_be_visible(timeout=60_000)
    # Cells run before the kernel is connected would be lost: wait for what a student waits for.
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle", timeout=60_000)
    return notebook


def menu(page, name: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{name}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def code_cell(notebook, text: str):
    return notebook.locator(".jp-CodeCell").filter(has_text=text)


def replace_source(page, cell, source: str) -> None:
    """Select everything in a cell's editor and put `source` there, as pasting would
    (typed key by key, the editor would indent the lines a second time)."""
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(source)


def run(page, cell) -> None:
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")


def fill_answers(page, notebook, key: str) -> None:
    """Write the solution's answers into the released notebook's answer cells, code and written."""
    released = json.loads((ROOT / "course" / "lora" / NOTEBOOKS[key].filename).read_text())["cells"]
    complete = complete_submission(key)["cells"]
    for given, answer in zip(released, complete):
        if not given.get("metadata", {}).get("nbgrader", {}).get("solution"):
            continue
        source = "".join(answer["source"])
        if given["cell_type"] == "code":
            replace_source(page, code_cell(notebook, "".join(given["source"]).splitlines()[0]), source)
        else:
            written = notebook.locator(".jp-MarkdownCell").filter(has_text="YOUR ANSWER HERE").first
            written.dblclick()
            replace_source(page, written, source)
            page.keyboard.press("Shift+Enter")  # render it again


def test_a_wrong_answer_shows_the_hint_alone_and_the_right_one_a_tick(lab, page, steps):
    notebook = open_notebook(page, lab, "course/lora/01_elementwise_attempt.ipynb", "wrong-then-right")
    answer = code_cell(notebook, "def lora_update(")
    test = code_cell(notebook, 'check("01", "lora_update_values"')
    replace_source(page, answer, "def lora_update(x, lora_A, lora_B, scaling):\n    return (x @ lora_A) @ lora_B\n")
    run(page, answer)
    run(page, test)
    error = test.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    expect(error).to_contain_text("CheckFailed:", timeout=60_000)
    steps.shot("wrong-answer-hint")
    shown = error.inner_text()
    for noise in ("Traceback", "Cell In[", "File ", "lora_grader/"):  # what IPython's traceback shows
        assert noise not in shown, f"the hint should show alone, without a traceback:\n{shown}"

    replace_source(page, answer, "def lora_update(x, lora_A, lora_B, scaling):\n    return (x @ lora_A) @ lora_B * scaling\n")
    run(page, answer)
    run(page, test)
    expect(test.locator(".jp-OutputArea-output")).to_contain_text("✓ lora_update_values", timeout=60_000)
    expect(error).to_have_count(0)
    steps.shot("right-answer-tick")


def test_validate_reports_success_on_a_complete_notebook(lab, page, steps):
    notebook = open_notebook(page, lab, "course/lora/01_elementwise_attempt.ipynb", "validate")
    fill_answers(page, notebook, "01")
    steps.shot("answers-written")
    notebook.locator(".validate-button").click()  # nbgrader saves the notebook, then validates it
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Success! Your notebook passes all the tests.", timeout=SLOW_CELL)
    steps.shot("validated")


def test_running_a_complete_notebook_draws_every_plot(lab, page, steps):
    key = "02"
    path = f"complete/{NOTEBOOKS[key].filename}"
    complete = complete_submission(key)
    (lab.root / path).parent.mkdir(exist_ok=True)
    (lab.root / path).write_text(json.dumps(complete))
    plots = sum("plt.show()" in "".join(cell["source"]) for cell in complete["cells"])
    assert plots, f"notebook {key} should draw a plot"

    notebook = open_notebook(page, lab, path, "run-all")
    menu(page, "Run", "Run All Cells")
    # Every cell ran: each prompt shows its execution count, none [ ] (not run) or [*] (queued).
    page.wait_for_function("""() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
                                    .every(prompt => /^\\[\\d+\\]:$/.test(prompt.textContent.trim()))""",
                           timeout=SLOW_CELL)
    steps.shot("ran-all-cells")
    expect(notebook.locator(".jp-OutputArea-output img")).to_have_count(plots)
    expect(notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                            ).filter(has_text="Error")).to_have_count(0)


def test_formgrader_lists_the_assignment(lab, page, steps):
    page.goto(lab.url("lab/workspaces/formgrader"))
    menu(page, "Nbgrader", "Formgrader")
    formgrader = page.frame_locator("iframe")
    expect(formgrader.get_by_role("link", name="lora", exact=True)).to_be_visible(timeout=60_000)
    steps.shot("formgrader")


def _nbgrader(lab: Lab, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=lab.root, capture_output=True, text=True,
                          env=dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])))
    assert done.returncode == 0, f"nbgrader {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _wait_for_manual_grade(lab: Lab, key: str, student: str, cell: str, score: float, comment: str,
                           seconds: float = 30) -> None:
    """Until the gradebook holds what was typed into the Formgrader (it saves in the background)."""
    from nbgrader.api import Gradebook

    deadline, seen = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        with Gradebook(f"sqlite:///{lab.root / 'gradebook.db'}") as gradebook:
            notebook = gradebook.find_submission_notebook(Path(NOTEBOOKS[key].filename).stem, "lora", student)
            grade = next(grade for grade in notebook.grades if grade.name == cell)
            found = next((c for c in notebook.comments if c.name == cell), None)
            seen = (grade.manual_score, found.manual_comment if found else None)
        if seen[0] == score and comment in (seen[1] or ""):
            return
        time.sleep(0.5)
    raise AssertionError(f"the gradebook did not get the manual grade: (score, comment) = {seen}")


def test_a_written_answer_graded_by_hand_reaches_feedback_and_grades(lab, page, steps):
    from nbgrader.api import Gradebook

    key, student, written = "01", "ada", "why_zero_init_hides_the_bug"
    folder = lab.root / "submitted" / student / "lora"
    folder.mkdir(parents=True)
    (folder / NOTEBOOKS[key].filename).write_text(json.dumps(complete_submission(key)))
    _nbgrader(lab, "generate_assignment", "lora", "--force")
    _nbgrader(lab, "autograde", "lora", "--student", student)
    with Gradebook(f"sqlite:///{lab.root / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission_notebook(Path(NOTEBOOKS[key].filename).stem, "lora", student).id

    # The Formgrader's own page calls its API without the URL's token: send it with every request.
    page.context.set_extra_http_headers({"Authorization": f"token {lab.token}"})
    page.goto(lab.url(f"formgrader/submissions/{submission}/"))
    score, comment = page.locator(f"input.score[id='{written}']"), page.locator(f"textarea[id='{written}-comment']")
    expect(score).to_be_visible(timeout=60_000)
    # The inputs show before the Formgrader has fetched their grades and bound them: typing sooner is lost.
    # (Not `formgrader.loaded`: without MathJax, offline, its init stops after binding them.)
    page.wait_for_function("() => formgrader.grades?.loaded && formgrader.comments?.loaded", timeout=60_000)
    score.click()
    page.keyboard.type("2")
    score.press("Tab")  # the Formgrader saves a score, and a comment, when it changes
    comment.click()
    page.keyboard.type("Right: with B = 0 the update vanishes, whatever A @ B would broadcast to.")
    comment.press("Tab")
    steps.shot("graded-by-hand")
    _wait_for_manual_grade(lab, key, student, written, 2.0, "with B = 0 the update vanishes")
    page.reload()
    expect(score).to_have_value("2", timeout=60_000)
    expect(comment).to_have_value(re.compile("with B = 0 the update vanishes"))
    steps.shot("kept-after-reload")

    _nbgrader(lab, "generate_feedback", "lora", "--student", student)
    feedback = (lab.root / "feedback" / student / "lora" / NOTEBOOKS[key].filename.replace(".ipynb", ".html")).read_text()
    assert "with B = 0 the update vanishes" in feedback, "the comment should reach the student's feedback"
    assert "Score: 2.0 / 2.0" in feedback, "the written answer's score should reach the feedback"
    _nbgrader(lab, "export")
    with open(lab.root / "grades.csv") as file:
        row = next(row for row in csv.DictReader(file) if row["student_id"] == student)
    code_points = sum(check.points for check in checks_of(key))
    assert float(row["raw_score"]) == code_points + 2, row
