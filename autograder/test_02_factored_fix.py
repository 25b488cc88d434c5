"""Notebook 02: LoRALinear with nn.Parameter adapters, and the FLOPs of both orders."""
import pytest

from lora_grader.checks import nb02

NOTEBOOK = "02"


@pytest.mark.parametrize("check", nb02.CHECKS, ids=lambda check: check.name)
def test_check(check, graded):
    graded(NOTEBOOK, check)
