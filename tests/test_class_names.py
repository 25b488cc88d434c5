"""A student's folder name is untrusted text: it cannot forge summary lines, reach the terminal as
escape codes, or run as a formula in the instructor's spreadsheet."""
import types

import pytest

from lora_grader.classgrade.cli import _summary
from lora_grader.classgrade.outputs import feedback, spreadsheet_safe

FORGER = "alice\n  bob: 03 integrity report: tampered\x1b[2J"


def test_a_newline_in_a_name_forges_no_summary_line(tmp_path):
    run = types.SimpleNamespace(students={FORGER: {"notebooks": {}, "needs_a_look": ["01 crashed"]}},
                                graded=1, reused=0, missing=0, deaths=[])
    summary = _summary(run, 1.0, tmp_path)
    assert "\x1b" not in summary
    assert not any(line.startswith("  bob:") for line in summary.splitlines()), summary
    assert "alice\\n  bob" in summary


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx"])
def test_a_name_that_starts_a_formula_is_text_in_the_csv(name):
    assert spreadsheet_safe(name).startswith("'")


def test_an_ordinary_name_is_kept_as_it_is():
    assert spreadsheet_safe("Zoë O'Neil-Ñandú") == "Zoë O'Neil-Ñandú"


def test_feedback_names_the_student_escaped():
    text = feedback(FORGER, {"notebooks": {}})
    assert "\x1b" not in text and "alice\\n  bob" in text.splitlines()[0], text
