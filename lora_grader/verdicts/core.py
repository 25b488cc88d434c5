"""Judging: what the verdicts share, and the loop that judges a check's outcomes.

A verdict receives a case, the values expected for it (`expected.expected_for`) and the plain data
the probe sent back, and raises `CheckFailed` with feedback when the data is wrong. It computes no
expected value itself: those come from lora_grader.answers in the instructor's install, and from a
table shipped with the student bundle's wheel for the visible cases. The sandbox, where student
code runs, never imports this package.
"""
from __future__ import annotations

import importlib
import textwrap
from typing import Any, Mapping

import torch

from lora_grader.checks.core import Case, Check, Outcome, collect
from lora_grader.verdicts.expected import NotShipped, expected_for


class CheckFailed(AssertionError):
    """A failed check. Its message is the feedback a student reads; its `cause` is a short key
    naming the explanation the verdict chose ("forms_AB", "not_frozen"...), or how the code
    failed to run ("raised:ValueError", "undefined"...), so that a class's failures can be
    counted by cause without reading messages."""

    def __init__(self, message: str = "", cause: str = ""):
        super().__init__(message)
        self.cause = cause

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback, in the notebook and in the error
        # output that nbgrader keeps for its feedback: the hint alone, no path of the grader,
        # in lines short enough that the feedback page does not cut them off at its right edge.
        return [f"\x1b[1;31m{type(self).__name__}\x1b[0m: " + wrapped(str(self))]


# Forming A @ B: how it happens, and the question that leads to the fix without stating it.
HOW_AB_IS_FORMED = "(with @, einsum, torch.outer, or broadcasting and sum)"
ORDER_HINT = "Which order of the two products keeps every intermediate result no larger than x?"


def wrapped(message: str, width: int = 100) -> str:
    """A message in lines of at most `width` characters, each continuation indented like its line."""
    lines = []
    for line in message.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        lines.extend(textwrap.wrap(line, width, subsequent_indent=indent + "  ", break_on_hyphens=False) or [""])
    return "\n".join(lines)


def resolve(reference: str):
    """The function a check names as 'module:function'."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


# --- judging ---------------------------------------------------------------------------------

def judge(check: Check, cases, outcomes: list[Outcome], notes: str = "") -> None:
    """Raise CheckFailed with feedback unless every case's outcome passes the verdict."""
    if not outcomes:
        raise CheckFailed(f"no result came back for `{check.task}`{notes}", cause="no_result")
    legacy = callable(check.verdict)  # transitional: a check module not yet split
    verdict = check.verdict if legacy else resolve(check.verdict)
    for case, outcome in zip(cases, outcomes):
        status = outcome.get("status") if isinstance(outcome, dict) else None
        if status != "ok":
            # cell errors explain a missing name or a dead process, and are noise otherwise
            context = notes if status in ("undefined", "crashed", "timeout") else ""
            raise CheckFailed(_explain_status(check, case, outcome) + context, cause=_status_cause(outcome))
        try:
            expected = {} if legacy else expected_for(check, case)
        except NotShipped as missing:
            raise CheckFailed(str(missing), cause="not_shipped") from None
        try:
            verdict(case, outcome["data"]) if legacy else verdict(case, expected, outcome["data"])
        except CheckFailed as failure:
            failure.cause = failure.cause or "wrong"
            raise
        except Exception as error:  # data that is not what the probe returns: someone tampered
            raise CheckFailed(
                f"the grader could not read what `{check.task}` produced "
                f"({type(error).__name__}: {error})", cause="unreadable"
            ) from None
    if len(outcomes) < len(cases):
        raise CheckFailed(f"only {len(outcomes)} of {len(cases)} results came back for `{check.task}`",
                          cause="no_result")


def _status_cause(outcome) -> str:
    status = outcome.get("status") if isinstance(outcome, dict) else None
    if status == "raised":
        return f"raised:{outcome.get('type')}"
    return status if status in ("undefined", "not_implemented", "probe", "timeout", "crashed") else "unreadable"


# Exceptions whose cause is the same whichever function raised them.
_GENERIC_HINTS = {
    "SystemExit": "exit(), sys.exit() and os._exit() end the whole program: a function should return its result",
    "EOFError": "input() gets no answer when the autograder calls your code: take values as arguments",
}


def _explain_status(check: Check, case: Case, outcome) -> str:
    status = outcome.get("status") if isinstance(outcome, dict) else None
    task = f"`{check.task}`"
    if status == "undefined":
        return f"{task} is not defined: run the cell that defines it (or restore it if it was deleted)."
    if status == "not_implemented":
        return f"{task} is not implemented yet (it still raises NotImplementedError)."
    if status == "probe":
        return f"{outcome.get('message')} ({describe(case)})"
    if status == "raised":
        where = f" at {outcome['where']}" if outcome.get("where") else ""
        text = f"{task} raised {outcome.get('type')}{where}: {outcome.get('message')} ({describe(case)})"
        explain = resolve(check.explain) if isinstance(check.explain, str) else check.explain
        hint = (explain(case, outcome) if explain else None) or _GENERIC_HINTS.get(outcome.get("type"))
        return text + (f"\n  Likely cause: {hint}" if hint else "")
    if status in ("timeout", "crashed"):
        return f"{task}: {outcome.get('message')}"
    return f"{task}: unreadable result from the sandbox"


def describe(case: Case) -> str:
    """A case in the words a student knows: 'in_features=24, out_features=40, rank=4, x (5, 24)'."""
    parts = []
    for key, value in case.items():
        if key == "seed":
            continue
        if key.endswith("_shape"):
            parts.append(f"{key[:-6]} of shape {tuple(value)}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def fail(message: str, case: Case | None = None, cause: str = ""):
    """Fail the check with feedback; `cause` names the explanation chosen (see CheckFailed)."""
    raise CheckFailed(message + (f"\n  Probe: {describe(case)}" if case else ""), cause=cause)


# --- comparing what came back with what was expected ------------------------------------------

def shape_str(shape) -> str:
    return str(tuple(shape))


def expect_tensor(data: dict, what: str, case: Case) -> torch.Tensor:
    """The tensor inside a `returned` description, or a failure naming what came back instead."""
    if data.get("kind") != "tensor":
        seen = data.get("value", data.get("repr", data.get("kind")))
        fail(f"{what} should be a tensor, but it is a {data.get('kind')}: {seen}", case)
    if data.get("subclass"):
        fail(f"{what} is a {data['subclass']}, a tensor subclass: return a plain torch.Tensor", case)
    return data["tensor"]


def max_error(seen: torch.Tensor, expected: torch.Tensor) -> float:
    return (seen.double() - expected.double()).abs().max().item() if seen.numel() else 0.0


def is_close(seen: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> bool:
    """float32 results against a float64 reference, with a tolerance scaled to the values' size."""
    if seen.shape != expected.shape or not torch.isfinite(seen).all():
        return False
    expected = expected.double()
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    return bool(((seen.double() - expected).abs() <= rtol * scale + rtol * expected.abs()).all())


def numbers(tensor: torch.Tensor, count: int = 4) -> str:
    """The first few numbers of a tensor, for feedback."""
    values = tensor.detach().double().flatten()[:count].tolist()
    return "[" + ", ".join(f"{value:.4g}" for value in values) + (", ...]" if tensor.numel() > count else "]")


def fit_scale(seen: torch.Tensor, expected: torch.Tensor) -> float | None:
    """The factor c that best explains seen ≈ c·expected, if one does (to spot wrong scalings)."""
    seen, expected = seen.double().flatten(), expected.double().flatten()
    norm = (expected @ expected).item()
    if seen.shape != expected.shape or norm == 0.0:
        return None
    factor = (seen @ expected).item() / norm
    residual = (seen - factor * expected).norm().item()
    return factor if residual <= 1e-4 * max(1.0, seen.norm().item()) else None


# --- the nbgrader side -----------------------------------------------------------------------

def run_check(check: Check, namespace: Mapping[str, Any], hidden: bool = False) -> None:
    """Probe and judge in this process: what an nbgrader test cell (or a student) calls. Unlike
    the isolated grader, this runs in the student's own kernel (see the README's threat model)."""
    __tracebackhide__ = True
    if hidden and check.hidden_cases is None:
        raise CheckFailed(f"{check.name}: hidden cases are graded by your instructor; "
                          "this install of lora_grader holds only the visible ones")
    cases = check.hidden_cases if hidden else check.cases
    try:
        judge(check, cases, collect(check, namespace, cases))
    except CheckFailed as failure:
        raise CheckFailed(str(failure), failure.cause) from None
    kind = "hidden case" if hidden else "case"
    print(f"✓ {check.name}: {len(cases)} {kind}{'s' if len(cases) != 1 else ''} passed")
