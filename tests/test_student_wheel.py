"""The student's install judges the visible cases it was shipped with, and nothing else.

The wheel of the student bundle holds no lora_grader/answers/ and no hidden cases, only a table of
the visible cases' expected values. With that wheel alone, every visible case of every check can
be judged, and a case that was not shipped (another size, another seed) cannot: nothing in the
wheel computes what a check expects.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from catalogue import ROOT
from lora_grader.bundle import build_student_wheel

pytestmark = pytest.mark.slow  # builds the student wheel and grades in a process of its own

IN_THE_WHEEL = r'''
import json, sys
# This venv also holds the course installed in editable mode, whose finder would serve
# lora_grader.answers from the repository; a student's venv has only the wheel.
sys.meta_path[:] = [finder for finder in sys.meta_path
                    if not getattr(finder, "__module__", "").startswith("__editable__")
                    and not type(finder).__module__.startswith("__editable__")]
import lora_grader
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.verdicts.expected import NotShipped, expected_for

assert lora_grader.__file__.startswith(sys.argv[1]), lora_grader.__file__


def another(case):
    """The same case with its first number changed: what a hidden case looks like."""
    changed = dict(case)
    for key, value in case.items():
        if type(value) is int:
            changed[key] = value + 1
            return changed
    changed["seed"] = 12345
    return changed


report = {"answers_importable": True, "judged": 0, "computed": [], "hidden": []}
try:
    import lora_grader.answers  # noqa: F401
except ModuleNotFoundError:
    report["answers_importable"] = False
for key in NOTEBOOKS:
    for check in checks_of(key):
        if check.hidden_cases is not None:
            report["hidden"].append(check.name)
        for case in check.cases:
            expected_for(check, case)
            report["judged"] += 1
        try:
            expected_for(check, another(check.cases[0]))
            report["computed"].append(check.name)
        except NotShipped:
            pass
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def student_install(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    wheel = build_student_wheel(ROOT, folder)
    site = folder / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_student_wheel_judges_its_visible_cases_and_cannot_judge_any_other(student_install):
    env = dict(os.environ, PYTHONPATH=str(student_install), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", IN_THE_WHEEL, str(student_install)], env=env, cwd=student_install,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert not report["answers_importable"], "the student wheel holds lora_grader.answers"
    assert not report["hidden"], f"hidden cases in the student wheel: {report['hidden']}"
    assert report["judged"] > 0
    assert not report["computed"], f"the student wheel computed expected values of new cases for {report['computed']}"
