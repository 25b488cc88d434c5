"""How a failed check reads where a student meets it: in a notebook's test cell and in nbgrader's
feedback page, both of which show what `_render_traceback_` returns."""
import re

from lora_grader.verdicts.core import CheckFailed, wrapped

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_a_failed_check_renders_as_its_hint_alone():
    lines = CheckFailed("`lora_update` returned the wrong values\n  Likely cause: scaling").\
        _render_traceback_()
    text = ANSI.sub("", "\n".join(lines))
    assert text.startswith("CheckFailed: `lora_update` returned the wrong values")
    assert "Likely cause: scaling" in text and "Traceback" not in text


def test_long_lines_wrap_and_keep_their_indent():
    message = "first line\n  Likely cause: " + " ".join(["word"] * 60)
    lines = wrapped(message).splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0] == "first line"
    assert all(line.startswith("  ") for line in lines[1:]), lines
    assert " ".join(part.strip() for part in lines[1:]) == message.splitlines()[1].strip()
