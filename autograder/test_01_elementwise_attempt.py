"""Notebook 01: the elementwise attempt, and the LoRA term done right."""
import pytest

from lora_grader.checks import nb01

NOTEBOOK = "01"


@pytest.mark.parametrize("check", nb01.CHECKS, ids=lambda check: check.name)
def test_check(check, graded):
    graded(NOTEBOOK, check)
