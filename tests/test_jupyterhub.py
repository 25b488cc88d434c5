"""A semester on the course hub (deploy/jupyterhub/), played in Chromium.

install.sh makes the student and instructor installs, add-user.sh two students and an instructor
as real Unix users, and the hub starts with its systemd unit's command, on loopback, logging in with
PAM. Then, in the browser: the instructor generates and releases `lora` in the Formgrader; a student
logs in, fetches it in the Assignments tab, answers one exercise and runs its test cell, runs
`pytest autograder` in a terminal of their own server, validates and submits; the other student
submits the release untouched; the instructor collects and grades in a terminal of theirs
(`nbgrader collect`, `lora-grade autograde`, `nbgrader autograde`, `lora-grade status` and
`audit`, feedback generated and released); the student fetches the feedback and sees their points.
Last, as each student, what they must not reach: the other's home, the instructor's course folder
and install, another's submission in the exchange.

Every step leaves a screenshot; the test prints their folder, with the hub's log.
"""
from __future__ import annotations

import csv
import re
import shlex
import time
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as error:  # a dependency of the project's tests, not of the course
    raise ImportError('the hub test needs Playwright: pip install -e ".[test]"') from error

import hub_semester
from hub_semester import Hub
from lora_grader import confinement
from lora_grader.checks import NOTEBOOKS, checks_of
from test_jupyterlab_browser import BROWSER_ARGS, code_cell, menu, replace_source, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the waits below say what went wrong first

NOTEBOOK = NOTEBOOKS["01"].filename
ANSWER = "def lora_update(x, lora_A, lora_B, scaling):\n    return (x @ lora_A) @ lora_B * scaling\n"
ANSWERED = [check for check in checks_of("01") if check.task == "lora_update"]
SPAWN = 240_000  # ms: a user's server starting on a busy 2-core machine
SLOW = 600_000  # ms: grading a class in a terminal


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    why = hub_semester.ensure_installed()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("hub")
    print(f"the hub's log, the installs' logs and the screenshots of each step: {folder}")
    started = Hub(folder, students=["ada", "bob"], instructors=["carol"])
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def browser(hub):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        yield browser
        browser.close()


class Steps:
    """Screenshots of every user's pages, numbered in the order the semester took them."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def shot(self, page, who: str, name: str, full_page: bool = True) -> None:
        self.count += 1
        page.screenshot(path=self.folder / f"{self.count:02d}-{who}-{name}.png", full_page=full_page)


class Session:
    """One user's browser: logged in to the hub, in their own JupyterLab."""

    def __init__(self, browser, hub: Hub, who: str, steps: Steps) -> None:
        self.hub, self.who, self.user, self.steps = hub, who, hub.users[who], steps
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.lab = f"{hub.url}/user/{self.user.name}/lab"
        self.has_terminal = False

    def shot(self, name: str, full_page: bool = True) -> None:
        self.steps.shot(self.page, self.who, name, full_page)

    def log_in(self) -> None:
        page = self.page
        page.goto(f"{self.hub.url}/hub/login")
        page.fill("#username_input", self.user.name)
        page.fill("#password_input", self.user.password)
        self.shot("login")
        page.click("#login_submit")
        page.wait_for_url(re.compile(r"/user/[^/]+/lab"), timeout=SPAWN)
        expect(page.locator(".jp-DirListing-content")).to_be_visible(timeout=SPAWN)
        self.shot("own-jupyterlab")

    def assignments(self):
        menu(self.page, "Nbgrader", "Assignment List")
        panel = self.page.locator("#assignments")
        expect(panel).to_be_visible()
        return panel

    def fetch(self) -> None:
        panel = self.assignments()
        released = panel.locator("#released_assignments_list .list_item", has_text="lora")
        released.get_by_role("button", name="Fetch").click()
        expect(panel.locator("#fetched_assignments_list .list_item", has_text="lora").first).to_be_visible()
        self.shot("fetched")

    def submit(self) -> None:
        panel = self.assignments()
        panel.locator("#fetched_assignments_list .list_item", has_text="lora").first.get_by_role(
            "button", name="Submit").click()
        expect(panel.locator("#submitted_assignments_list .list_item", has_text="lora").first).to_be_visible()
        self.shot("submitted")

    def open_notebook(self, path: str):
        self.page.goto(f"{self.lab}/tree/{path}")
        notebook = self.page.locator(".jp-NotebookPanel")
        expect(notebook.locator(".jp-Cell").first).to_be_visible()
        expect(self.page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle", timeout=SPAWN)
        return notebook

    def terminal(self, name: str, command: str, timeout: float = SLOW / 1000) -> tuple[int, str]:
        """Type `command` in a terminal of the user's server (opened with File > New > Terminal the
        first time), as the user would; its output goes to the screen and to a log in their home.
        (exit status, output)."""
        page = self.page
        if not self.has_terminal:
            with page.expect_websocket(lambda socket: "/terminals/websocket/" in socket.url) as connecting:
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^File$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile("^New$")).hover()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Terminal$")).click()
            connecting.value.wait_for_event("framereceived")  # the shell's first prompt
            self.has_terminal = True
        page.locator(".lm-TabBar-tab", has_text=f"{self.user.name}@").last.click()
        page.locator(".jp-Terminal").last.click()
        log, status = (self.user.home / ".semester" / f"{name}.{kind}" for kind in ("log", "status"))
        if command.startswith("cd "):  # in the shell itself, not in a pipeline's subshell
            typed = f"mkdir -p ~/.semester; {command}; echo $? > ~/.semester/{name}.status"
        else:
            typed = (f"mkdir -p ~/.semester; {command} 2>&1 | tee ~/.semester/{name}.log; "
                     f"echo ${{PIPESTATUS[0]}} > ~/.semester/{name}.status")
        page.keyboard.type(typed)
        page.keyboard.press("Enter")
        deadline = time.monotonic() + timeout
        while not (status.exists() and status.read_text().strip()):
            assert time.monotonic() < deadline, f"{name}: `{command}` did not end within {timeout:.0f} s"
            time.sleep(1)
        assert status.stat().st_uid == self.user.uid, f"{name} ran as uid {status.stat().st_uid}, not {self.user.name}"
        time.sleep(1)  # the last lines reach the screen
        self.shot(f"terminal-{name}")
        return int(status.read_text()), log.read_text() if log.exists() else ""

    def close(self) -> None:
        self.context.close()


def test_the_hub_is_set_up_as_the_readme_says(hub):
    """The fixture ran the README's set-up (with paths, group names and ports of the test's own):
    install.sh, add-user.sh for each role, passwords, and the command of the systemd unit."""
    setup = hub_semester.readme_commands("install.sh")
    packages = set(re.search(r"apt-get install -y (.*)", setup[0])[1].split())
    assert {"python3-venv", "nodejs", "npm"} <= packages, setup[0]
    assert "deploy/jupyterhub/install.sh" in setup, setup
    for role in ("instructor", "student"):
        assert any(line.startswith(f"deploy/jupyterhub/add-user.sh {role} ") for line in setup), setup
    assert any(line.startswith("passwd ") for line in setup), setup
    assert "systemctl enable --now /opt/lora-course/etc/lora-hub.service" in setup, setup
    assert hub.unit["argv"][:2] == [str(hub.prefix / "instructor" / "bin" / "jupyterhub"), "-f"], hub.unit


def test_a_semester_on_the_hub(hub, browser):
    steps = Steps(hub.folder / "screenshots")
    start = time.monotonic()
    carol, ada, bob = (Session(browser, hub, who, steps) for who in ("carol", "ada", "bob"))
    try:
        release(carol)
        answer_check_and_submit(ada)
        bob.log_in()
        bob.fetch()
        bob.submit()
        grade(carol, hub)
        see_feedback(ada)
    finally:
        for session in (carol, ada, bob):
            session.close()
    confined(hub)
    hub.timings["semester"] = time.monotonic() - start
    print("timings (s):", {name: round(seconds) for name, seconds in hub.timings.items()})


def release(carol: Session) -> None:
    """The instructor generates the student version and releases it, in the Formgrader. JupyterHub
    forbids embedding a user's pages in a frame, so the Formgrader opens in a tab of its own."""
    carol.log_in()
    page = carol.page
    page.goto(f"{carol.hub.url}/user/{carol.user.name}/formgrader/manage_assignments")
    row = page.locator("tr", has=page.locator("td.name", has_text=re.compile("^lora$")))
    expect(row).to_be_visible(timeout=SPAWN)
    carol.shot("formgrader")
    for column, says in (("assign", "Successfully created the student version of 'lora'"),
                         ("release", "Successfully released 'lora'")):
        row.locator(f"td.{column} a").click()
        modal = page.locator("#success-modal, #error-modal")
        expect(modal).to_be_visible(timeout=SLOW)
        carol.shot(f"formgrader-{column}")
        expect(modal).to_contain_text(says)
        modal.locator(".modal-footer button", has_text="OK").click()
        expect(modal).to_have_count(0)
    released = sorted(path.name for path in (carol.hub.exchange / "outbound" / "lora").iterdir())
    assert released == sorted(notebook.filename for notebook in NOTEBOOKS.values()), released


def answer_check_and_submit(ada: Session) -> None:
    ada.log_in()
    ada.fetch()
    assert (ada.user.home / "course" / "lora" / NOTEBOOK).is_file(), "fetched into ~/course/lora, beside ~/autograder"
    notebook = ada.open_notebook(f"course/lora/{NOTEBOOK}")
    page = ada.page
    answer, test = code_cell(notebook, "def lora_update("), code_cell(notebook, 'check("01", "lora_update_values"')
    replace_source(page, answer, ANSWER)
    run(page, answer)
    run(page, test)
    expect(test.locator(".jp-OutputArea-output")).to_contain_text("✓ lora_update_values", timeout=SLOW)
    ada.shot("test-cell-passes")
    page.keyboard.press("Control+S")
    expect(page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(0)  # saved: the self-check reads the file

    # The self-check, as in the bundle: `pytest autograder` in the home folder, in a terminal.
    status, output = ada.terminal("selfcheck", "pytest autograder")
    lines = output.strip().splitlines()
    passed = re.fullmatch(r"=+ (\d+) failed, (\d+) passed in .* =+", lines[-1])
    assert status == 1 and passed, f"the self-check's closing line: {lines[-1]!r}\n{output[-3000:]}"
    assert int(passed[2]) == len(ANSWERED), f"only lora_update's checks pass: {lines[-1]!r}"
    # What the kernel confines, as the self-check's last line before pytest's says: as much for the
    # student's own server as for this root process (Landlock and seccomp need no privilege).
    assert confinement.describe() in lines, f"the sandbox confines the student as it does here:\n{output[-3000:]}"
    points = next(line for line in lines if re.match(r"01\s+lora_update\s", line))
    assert re.search(rf"\s{sum(check.points for check in ANSWERED)}/\d+\s+done", points), points

    page.locator(".lm-TabBar-tab", has_text=Path(NOTEBOOK).stem).click()  # back to the notebook
    notebook.locator(".validate-button").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Validation Results", timeout=SLOW)
    ada.shot("validated")
    # The exercises not answered yet: silent_failure_case, and the written answer.
    expect(dialog).to_contain_text(re.compile(r"The following cell failed:.*silent_failure_case.*is not implemented yet"))
    expect(dialog).to_contain_text("You did not provide a response.")
    expect(dialog).not_to_contain_text("lora_update")
    dialog.get_by_role("button", name="Ok").click()
    ada.submit()


def grade(carol: Session, hub: Hub) -> None:
    """The README's grading commands, one after the other, in the instructor's terminal, each
    checked by what it leaves behind."""
    from nbgrader.api import Gradebook

    ada, bob = hub.users["ada"], hub.users["bob"]
    course = carol.user.home / "lora-course"
    points = sum(check.points for check in ANSWERED)

    def collected(output: str) -> None:
        for student in (ada, bob):
            assert (course / "submitted" / student.name / "lora" / NOTEBOOK).is_file(), output

    def graded(output: str) -> None:
        with open(course / "lora_grading" / "grades.csv") as file:
            totals = {row["student"]: float(row["total"]) for row in csv.DictReader(file)}
        assert totals == {ada.name: points, bob.name: 0}, totals

    def autograded(output: str) -> None:
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
            scores = {student.name: gradebook.find_submission_notebook(Path(NOTEBOOK).stem, "lora", student.name).score
                      for student in (ada, bob)}
        assert scores == {ada.name: points, bob.name: 0}, scores

    def nothing_waits(output: str) -> None:
        assert "nothing waits for a person" in output and "yes: lora-grade audit" not in output, output

    def agreed(output: str) -> None:
        assert "disagree (none)" in output, output

    def feedback(output: str) -> None:
        for student in (ada, bob):
            assert (course / "feedback" / student.name / "lora" / f"{Path(NOTEBOOK).stem}.html").is_file(), output

    def released(output: str) -> None:
        assert len(list((hub.exchange / "feedback").glob("*.html"))) == 2 * len(NOTEBOOKS), output

    checks = {"cd ~/lora-course": lambda output: None, "nbgrader collect lora": collected,
              "lora-grade autograde": graded, "nbgrader autograde lora": autograded,
              "lora-grade status": nothing_waits, "lora-grade audit": agreed,
              "nbgrader generate_feedback lora": feedback, "nbgrader release_feedback lora": released}
    commands = hub_semester.readme_commands("nbgrader collect")
    assert commands == list(checks), f"the README's grading commands, which this test runs and checks: {commands}"
    carol.page.goto(carol.lab)
    for command in commands:
        status, output = carol.terminal(re.sub(r"[^a-z0-9]+", "-", command).strip("-"), command)
        assert status == 0, f"`{command}` exited {status}:\n{output[-5000:]}"
        checks[command](output)


def see_feedback(ada: Session) -> None:
    page = ada.page
    page.goto(ada.lab)
    panel = ada.assignments()
    submitted = panel.locator("#submitted_assignments_list .list_item", has_text="lora").first
    submitted.get_by_role("button", name="Fetch Feedback").click()
    view = submitted.get_by_text("(view feedback)")
    expect(view).to_be_visible(timeout=SLOW)
    ada.shot("feedback-fetched")
    [html] = (ada.user.home / "course" / "lora" / "feedback").glob(f"*/{Path(NOTEBOOK).stem}.html")
    relative = html.relative_to(ada.user.home)
    view.click()  # the file browser opens the feedback's folder: a page per notebook
    expect(page.locator(".jp-DirListing-item", has_text=html.name)).to_be_visible()
    ada.shot("feedback-folder")
    # Opened as the file browser's "Open in New Browser Tab" does.
    page.goto(f"{ada.hub.url}/user/{ada.user.name}/files/{relative}")
    points = sum(check.points for check in ANSWERED)
    out_of = sum(check.points for check in checks_of("01")) + 2  # the written answer's 2
    expect(page.locator("body")).to_contain_text(f"Score: {points:.1f} / {out_of:.1f}")
    ada.shot("feedback", full_page=False)  # its top: the notebook's score and each cell's


def confined(hub: Hub) -> None:
    """As each student, in a shell of their own: what belongs to the other student and to the
    instructor stays out of reach, and the other's submission is left as it was."""
    ada, bob, carol = hub.users["ada"], hub.users["bob"], hub.users["carol"]
    q = shlex.quote
    instructors = hub.prefix / "instructor"
    hidden = next(instructors.glob("lib/python3*/site-packages")) / "lora_grader" / "checks" / "hidden.py"
    course = carol.home / "lora-course"
    for student, other in ((bob, ada), (ada, bob)):
        [submission] = [path for path in (hub.exchange / "inbound").iterdir() if path.name.startswith(f"{other.name}+")]
        refused = {
            "the other student's home": f"ls {q(str(other.home))}",
            "the other student's notebook": f"cat {q(str(other.home / 'course' / 'lora' / NOTEBOOK))}",
            "the instructor's course folder": f"ls {q(str(course))}",
            "the instructor's gradebook": f"cat {q(str(course / 'gradebook.db'))}",
            "lora-grade's verdicts": f"cat {q(str(course / 'lora_grading' / 'results.json'))}",
            "the instructor's install": f"ls {q(str(instructors))}",
            "the hidden cases": f"cat {q(str(hidden))}",
            "the submissions in the exchange": f"ls {q(str(hub.exchange / 'inbound'))}",
            "the feedback in the exchange": f"ls {q(str(hub.exchange / 'feedback'))}",
            "a file in the other's submission": f"touch {q(str(submission / 'extra.txt'))}",
            "the other's submitted notebook": f"echo '{{}}' > {q(str(submission / NOTEBOOK))}",
            "renaming the other's submission": f"mv {q(str(submission))} {q(str(hub.exchange / 'inbound' / 'taken'))}",
            "deleting the other's submission": f"rm -rf {q(str(submission))}",
        }
        before = {path: path.read_bytes() for path in submission.iterdir()}
        for what, command in refused.items():
            done = hub.run_as(student, command)
            said = done.stdout + done.stderr
            assert done.returncode != 0 and ("Permission denied" in said or "Operation not permitted" in said), (
                f"{student.name} reached {what}: `{command}` exited {done.returncode}\n{said}")
        after = {path: path.read_bytes() for path in submission.iterdir()}
        assert after == before, f"{other.name}'s submission is as they left it"
    # What they may read, so that the refusals above come from the permissions, not from missing files.
    assert hub.run_as(carol, f"cat {q(str(hidden))} {q(str(course / 'gradebook.db'))} > /dev/null").returncode == 0, \
        "the instructor reads the hidden cases and the gradebook"
    for student in (ada, bob):
        done = hub.run_as(student, f"ls {q(str(hub.prefix / 'student' / 'bin' / 'pytest'))} ~/course/lora/{NOTEBOOK}")
        assert done.returncode == 0, f"{student.name} reads the shared install and their own notebooks: {done.stderr}"
