"""Notebook 05: LoRA on a whole model: adapters by name, an adapter checkpoint, merging, the paper's table."""
import pytest

from lora_grader.checks import nb05

NOTEBOOK = "05"


@pytest.mark.parametrize("check", nb05.CHECKS, ids=lambda check: check.name)
def test_check(check, graded):
    graded(NOTEBOOK, check)
