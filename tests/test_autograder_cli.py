"""`pytest autograder` as a student runs it: full marks for the solutions, zero for the
untouched release, and a summary and points table either way."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_grader.checks import NOTEBOOKS, checks_of

pytestmark = pytest.mark.slow  # each test runs `pytest autograder` in a process of its own

ROOT = Path(__file__).resolve().parents[1]
CHECK_COUNT = sum(len(checks_of(key)) for key in NOTEBOOKS)


def run_autograder(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "autograder", "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_solutions_get_every_check():
    run = run_autograder("--notebooks", "solutions/lora")
    assert run.returncode == 0, f"the solutions failed checks:\n{run.stdout[-4000:]}"
    assert re.search(rf"\b{CHECK_COUNT} passed\b", run.stdout), run.stdout[-2000:]
    total = sum(check.points for key in NOTEBOOKS for check in checks_of(key))
    assert f"{total}/{total}" in run.stdout, f"the points table should show {total}/{total}:\n{run.stdout[-2000:]}"


def test_untouched_release_fails_every_check_as_not_yet_implemented():
    run = run_autograder("-q")
    assert run.returncode == 1, f"expected failures, exit code {run.returncode}:\n{run.stdout[-3000:]}"
    assert re.search(rf"\b{CHECK_COUNT} failed\b", run.stdout), run.stdout[-3000:]
    failures = re.findall(r"^_+ test_check\[(\w+)\] _+\n(.*)$", run.stdout, flags=re.MULTILINE)
    assert len(failures) == CHECK_COUNT, run.stdout[-3000:]
    for check, first_line in failures:
        assert "not implemented yet" in first_line, f"{check}: {first_line}"
    assert "Traceback" not in run.stdout, "a student should not meet a traceback first"


def test_one_notebook_can_be_checked_alone():
    run = run_autograder("--notebooks", "solutions/lora", "-k", "01")
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(rf"\b{len(checks_of('01'))} passed\b", run.stdout), run.stdout[-2000:]
    table = run.stdout.split("LoRA course: points")[-1]
    assert "lora_update" in table and "LoRALinear" not in table, f"only notebook 01's tasks expected:\n{table}"


def test_rerun_hint_grades_the_same_folder(tmp_path):
    folder = tmp_path / "my notebooks"  # a space, as in many home folders
    shutil.copytree(ROOT / "course" / "lora", folder)
    run = run_autograder("--notebooks", str(folder), "-k", "01")
    hint = re.search(r"Re-run just that with: (.*)$", run.stdout, flags=re.MULTILINE)
    assert hint, run.stdout[-2000:]
    command = shlex.split(hint.group(1))
    assert command[:2] == ["pytest", "autograder"] and "--notebooks" in command, hint.group(0)
    rerun = run_autograder(*command[2:])
    assert f"graded: {folder}" in rerun.stdout, rerun.stdout[-2000:]
    assert re.search(r"\b1 failed\b", rerun.stdout), rerun.stdout[-2000:]
