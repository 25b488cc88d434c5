"""Where a verdict's expected values come from.

In the instructor's install, the check's `expect` function in lora_grader.answers computes them
from the case. The student bundle's wheel has no lora_grader.answers: it ships, as data, the
expected values of each check's visible cases (computed by the instructor's install when the
bundle is built), so nothing in a student's install can compute what a new case expects.
"""
from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

from lora_grader.checks.core import Case, Check

SHIPPED = Path(__file__).with_name("shipped.pt")
ANSWERS = "lora_grader.answers"


class NotShipped(LookupError):
    """A case whose expected values this install does not hold."""


def case_key(case: Case) -> str:
    return json.dumps(case, sort_keys=True, default=list)


def shipped_key(check: Check, case: Case) -> str:
    return f"{check.expect}|{check.verdict}|{case_key(case)}"


def compute(check: Check, case: Case) -> dict:
    """The expected values, computed from the case (the instructor's install only)."""
    if check.expect is None:
        return {}
    module, _, name = check.expect.partition(":")
    return getattr(importlib.import_module(module), name)(case)


def has_answers() -> bool:
    try:
        importlib.import_module(ANSWERS)
    except ModuleNotFoundError as missing:
        if missing.name != ANSWERS:
            raise
        return False
    return True


def expected_for(check: Check, case: Case) -> dict:
    if has_answers():
        return compute(check, case)
    table = _shipped_table()
    key = shipped_key(check, case)
    if key not in table:
        raise NotShipped(f"{check.name}: this install holds the expected values of the visible cases only; "
                         "other cases (the hidden ones) are graded by your instructor")
    return table[key]


@functools.lru_cache(maxsize=1)
def _shipped_table() -> dict:
    if not SHIPPED.exists():
        return {}
    import torch

    return torch.load(SHIPPED, weights_only=True)


def build_table(checks) -> dict:
    """{key: expected} for every visible case of `checks`: what the student wheel ships."""
    return {shipped_key(check, case): compute(check, case) for check in checks for case in check.cases}
