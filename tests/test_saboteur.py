"""A class with saboteurs in it, graded by `lora-grade autograde` as an instructor does: whatever
they try on the sandbox and on the notebooks graded beside theirs, every honest student keeps
full marks, in this run and in the next incremental one, and each saboteur needs a look."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from catalogue import complete_submission
from hostile import CONFINED_FILES, CONFINED_OTHER_PROCESSES, CONFINED_SIGNALS, edited
from hostile.payloads import RAW_SYSTEM_CALLS_THROUGH_A_LIBRARY, READS_THE_SANDBOX, SABOTAGES_OTHER_PROCESSES
from lora_grader.checks import NOTEBOOKS
from lora_grader.grading import MODES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CONFINED_FILES and CONFINED_SIGNALS and CONFINED_OTHER_PROCESSES),
                       reason="without Landlock (ABI 6) and seccomp, sabotage would reach this machine's processes"),
]

HONEST = ("alice", "bob", "carol", "dan")
SABOTEURS = {"mallory": SABOTAGES_OTHER_PROCESSES, "oscar": RAW_SYSTEM_CALLS_THROUGH_A_LIBRARY,
             "trudy": READS_THE_SANDBOX}
HANDED_IN = ("01", "02")


def _hand_in(folder, key: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / NOTEBOOKS[key].filename).write_bytes(data)


def _class(root) -> None:
    for name in HONEST:
        for key in HANDED_IN:
            _hand_in(root / "submitted" / name / "lora", key, json.dumps(complete_submission(key), indent=1).encode())
    for name, attack in SABOTEURS.items():
        _hand_in(root / "submitted" / name / "lora", "01", json.dumps(complete_submission("01")).encode())
        _hand_in(root / "submitted" / name / "lora", "02", edited("02", at_end=[attack])(root))
    # A saboteur's notebook that is a link to an honest student's: refused, never followed.
    (root / "submitted" / "eve" / "lora").mkdir(parents=True)
    os.symlink(root / "submitted" / "alice" / "lora" / NOTEBOOKS["02"].filename,
               root / "submitted" / "eve" / "lora" / NOTEBOOKS["02"].filename)


def _grade(root, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "autograde", "--no-progress"],
                          cwd=root, env=dict(os.environ, LORA_GRADER_SANDBOX=mode), capture_output=True, text=True)
    assert done.returncode == 0, f"lora-grade exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    results = json.loads((root / "lora_grading" / "results.json").read_text(encoding="utf-8"))["students"]
    return {"summary": done.stdout, "students": results}


def _lost(student: dict) -> list[str]:
    return [f"{key} {check['name']}: {check['message'][:200]}"
            for key in HANDED_IN for check in student["notebooks"][key]["checks"] if not check["passed"]]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", MODES)
def test_saboteurs_cost_the_honest_students_nothing_now_or_in_the_next_run(mode, tmp_path):
    _class(tmp_path)
    for run in ("first run", "incremental run"):
        graded = _grade(tmp_path, mode)
        students = graded["students"]
        for name in HONEST:
            assert not _lost(students[name]), f"{run}: {name} lost points:\n" + "\n".join(_lost(students[name]))
        for name in SABOTEURS:
            looks = students[name]["needs_a_look"]
            assert any("02 integrity report" in reason for reason in looks), f"{run}: {name} not flagged: {looks}"
        assert any("symbolic link" in reason for reason in students["eve"]["needs_a_look"]), students["eve"]
        assert students["eve"]["notebooks"]["02"]["sha256"] is None
    handed_in = (len(HONEST) + len(SABOTEURS)) * len(HANDED_IN)
    assert f"0 notebooks graded, {handed_in} unchanged" in graded["summary"], graded["summary"]
