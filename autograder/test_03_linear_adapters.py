"""Notebook 03: LoRALinear with nn.Linear adapters, counting trainable parameters, and gradients at init."""
import pytest

from lora_grader.checks import nb03

NOTEBOOK = "03"


@pytest.mark.parametrize("check", nb03.CHECKS, ids=lambda check: check.name)
def test_check(check, graded):
    graded(NOTEBOOK, check)
