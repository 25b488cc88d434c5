"""Notebook 04: merging the adapter into the frozen weight, unmerging it, exporting it."""
import pytest

from lora_grader.checks import nb04

NOTEBOOK = "04"


@pytest.mark.parametrize("check", nb04.CHECKS, ids=lambda check: check.name)
def test_check(check, graded):
    graded(NOTEBOOK, check)
