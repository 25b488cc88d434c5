"""What a check is, and the probe side of it: everything the sandbox needs to run student code.

A check is a probe and a verdict. The probe (here and in the notebook's module) builds its own
inputs, calls the student's code and returns only plain data (tensors, numbers, strings, lists,
dicts). The verdict (lora_grader.verdicts) judges that data against expected values that
lora_grader.answers computes in the instructor's install. This module and the notebooks' check
modules hold inputs and probes only: the sandbox imports them, and nothing here computes what a
student's code should return.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import linecache
import os
import traceback
from typing import Any, Callable, Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


class ProbeError(Exception):
    """The probe found the student's code in a state it cannot measure (a missing attribute,
    a wrong type...). Its message is written for the student."""


Case = dict
Outcome = dict


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  # also the grade_id of the nbgrader test cell that runs it
    task: str  # the name the student defines, e.g. "lora_update"
    points: int
    probe: Callable[[Mapping[str, Any], Case], dict]
    verdict: str  # "module:function" in lora_grader.verdicts: verdict(case, expected, data)
    cases: tuple[Case, ...]
    hidden_cases: tuple[Case, ...] | None = ()  # None in a student's install: see hidden_cases_of
    # "module:function" in lora_grader.verdicts that turns an exception raised by the student's
    # code into the likely cause, or None.
    explain: str | None = None
    # "module:function" in lora_grader.answers: expect(case) -> the plain data the verdict compares
    # against. Named, never imported here: the sandbox must not hold it.
    expect: str | None = None

    @property
    def all_cases(self) -> tuple[Case, ...]:
        return self.cases + (self.hidden_cases or ())


def hidden_cases_of(module: str, *builders) -> Mapping[str, tuple[Case, ...] | None]:
    """The hidden cases of a check module, by name, built with the module's own case builders.
    A student's install is built without lora_grader/checks/hidden.py: there every name is None,
    so no hidden case ever reaches a student's machine."""
    try:
        hidden = importlib.import_module("lora_grader.checks.hidden")
    except ModuleNotFoundError as missing:
        if missing.name != "lora_grader.checks.hidden":
            raise
        return collections.defaultdict(lambda: None)
    return getattr(hidden, module)(*builders)


# --- running the probe: the only place student code is called --------------------------------

_OUR_DIRS = tuple(
    os.path.dirname(os.path.abspath(module.__file__)) + os.sep
    for module in (torch, os)  # torch and the standard library
) + (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


def collect(check: Check, namespace: Mapping[str, Any], cases) -> list[Outcome]:
    """Run the check's probe on each case; one plain outcome per case."""
    if check.task not in namespace:
        return [{"status": "undefined", "name": check.task}]
    outcomes = []
    for case in cases:
        outcome = _probe_one(check, namespace, case)
        outcomes.append(outcome)
        if outcome["status"] in ("undefined", "not_implemented"):
            break  # every other case would say the same
    return outcomes


@contextlib.contextmanager
def _fresh_session():
    """Probe as in a fresh session: float32 by default, gradients on, and the student's seed left
    alone. The sandbox runs every cell before any check, so a scratch cell at the end that calls
    torch.set_default_dtype or torch.set_grad_enabled would otherwise change how work written
    before it is checked (nbgrader checks each answer right after its cell)."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(True)
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)


def _probe_one(check: Check, namespace, case) -> Outcome:
    try:
        with _fresh_session():
            data = check.probe(namespace, case)
    except NotImplementedError:
        return {"status": "not_implemented", "name": check.task}
    except ProbeError as error:
        return {"status": "probe", "message": str(error)}
    except BaseException as error:  # SystemExit and KeyboardInterrupt are student mistakes too
        return {
            "status": "raised",
            "type": type(error).__name__,
            "message": safe_str(error),
            "where": student_location(error),
        }
    try:
        return {"status": "ok", "data": plain(data)}
    except BaseException as error:  # e.g. a tensor subclass that cannot be copied into a plain tensor
        return {"status": "probe", "message": (
            f"what `{check.task}` returned could not be copied out for grading "
            f"({type(error).__name__}: {safe_str(error)}): return plain tensors and numbers")}


def safe_str(error: BaseException) -> str:
    try:
        text = str(error)
    except BaseException:
        text = "<message could not be printed>"
    return text if len(text) <= 500 else text[:500] + " ..."


def student_location(error: BaseException) -> str:
    """The deepest frame of the traceback that is the student's code, as 'cell 3, line 2: `...`'."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not os.path.abspath(frame.filename).startswith(_OUR_DIRS)
    ]
    if not frames:
        return ""
    frame = frames[-1]
    line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    place = frame.filename.strip("<>") + ", " if frame.filename.startswith("<cell") else ""
    return f"{place}line {frame.lineno}: `{line}`"


def plain(value):
    """Copy probe data into plain, picklable types: exact torch.Tensor, int, float, str, list, dict."""
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.as_subclass(value, torch.Tensor).detach().cpu().clone()
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (list, tuple, torch.Size)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    raise TypeError(f"probe returned a {type(value).__name__}")


# --- describing what student code returned -------------------------------------------------

def returned(value) -> dict:
    """Describe a value returned by student code as plain data the verdict can inspect."""
    if isinstance(value, torch.Tensor):
        subclass = None if type(value) is torch.Tensor else type(value).__name__
        return {"kind": "tensor", "tensor": value, "subclass": subclass}
    if isinstance(value, bool):
        return {"kind": "bool", "value": bool(value)}
    if isinstance(value, int):
        return {"kind": "int", "value": int.__int__(value)}
    if type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu":
        return {"kind": "int", "value": int(value)}
    if isinstance(value, float):
        return {"kind": "float", "value": float.__float__(value)}
    return {"kind": type(value).__name__, "repr": _short_repr(value)}


def _short_repr(value) -> str:
    try:
        text = repr(value)
    except BaseException:
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())  # one line, however the object prints itself
    return text if len(text) <= 80 else text[:77] + "..."


# --- measuring ---------------------------------------------------------------------------

class _Measuring(TorchDispatchMode):
    """A dispatch mode that measures and lets every operation run unchanged."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ so that torch.compile skips it, and that wrapper
        # imports torch._dynamo on the first operation: 1.3 s in every process that grades. Graded
        # code is never compiled, so the plain method is the same measurement.
        return False


def _without_dynamo(mode_class) -> None:
    """The same for FlopCounterMode's own mode: give its plain method the cache entry
    torch._disable_dynamo looks for, so the wrapper calls it as it is. Where a torch version has
    no such class or wrapper, nothing changes but the speed of the first count."""
    plain = getattr(getattr(mode_class, "__torch_dispatch__", None), "__wrapped__", None)
    if callable(plain):
        plain.__dynamo_disable = plain


_without_dynamo(getattr(flop_counter, "_FlopCounterMode", None))


def count_flops(function, *tensors) -> int:
    """FLOPs of function(*tensors) as FlopCounterMode counts them (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        function(*tensors)
    return counter.get_total_flops()


class _LargestAllocation(_Measuring):
    """Records the largest tensor any operation allocates. A view or an in-place result shares
    its input's storage and allocates nothing, so it is not counted (else a view of the base
    weight would count as an (in, out) matrix)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {_storage(t)[0] for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(result):
            if isinstance(t, torch.Tensor) and _storage(t)[0] not in inputs:
                self.largest = max(self.largest, _storage(t)[1])
        return result


def _storage(t: torch.Tensor) -> tuple[int | None, int]:
    """(address, elements) of the memory behind a tensor; (None, numel) where it has no storage
    of its own (sparse and other special layouts)."""
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes() // max(1, t.element_size())
    except (RuntimeError, NotImplementedError):
        return None, t.numel()


def count_flops_and_largest(function, *tensors) -> tuple[int, int]:
    """FLOPs of function(*tensors) as FlopCounterMode counts them, and the number of elements of
    the largest tensor it allocated: an (in, out) matrix formed by broadcasting, einsum, outer
    products or a loop costs few counted FLOPs but is still a large tensor."""
    with FlopCounterMode(display=False) as counter, _LargestAllocation() as sizes:
        function(*tensors)
    return counter.get_total_flops(), sizes.largest


# --- reading a module's state in a way its class cannot redirect ----------------------------
# A student's class may override parameters(), named_parameters(), __getattr__ or a Parameter's
# requires_grad; the grader reads nn.Module's own dictionaries and torch's own descriptors.

def _module_dict(module) -> dict:
    return object.__getattribute__(module, "__dict__")


def true_parameters(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) for every parameter registered anywhere in the module tree, each once."""
    found, seen, visited, stack = [], set(), set(), [("", module)]
    while stack:
        prefix, current = stack.pop(0)
        if id(current) in visited:
            continue
        visited.add(id(current))
        own = _module_dict(current)
        for name, parameter in dict.items(own.get("_parameters") or {}):
            if isinstance(parameter, torch.Tensor) and id(parameter) not in seen:
                seen.add(id(parameter))
                found.append((prefix + name, parameter))
        for name, child in dict.items(own.get("_modules") or {}):
            if isinstance(child, torch.nn.Module):
                stack.append((prefix + name + ".", child))
    return found


def true_requires_grad(tensor: torch.Tensor) -> bool:
    return bool(torch._C.TensorBase.requires_grad.__get__(tensor))


def true_grad(tensor: torch.Tensor):
    return torch._C.TensorBase.grad.__get__(tensor)


def true_grad_fn(tensor: torch.Tensor) -> str | None:
    grad_fn = torch._C.TensorBase.grad_fn.__get__(tensor)
    return None if grad_fn is None else type(grad_fn).__name__


def true_numel(tensor: torch.Tensor) -> int:
    with torch._C.DisableTorchFunctionSubclass():
        return int(torch._C.TensorBase.numel(tensor))


def storage_of(tensor: torch.Tensor) -> int:
    with torch._C.DisableTorchFunctionSubclass():
        return int(torch._C.TensorBase.untyped_storage(tensor).data_ptr())


# --- inputs: built the same way by the probe (in the child) and the verdict (in the grader) --

def tensor(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A float32 Gaussian tensor that depends only on shape and seed, never on global state."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32) * scale


def base_linear(in_features: int, out_features: int, seed: int) -> torch.nn.Linear:
    """A float32 nn.Linear with weights fixed by the seed."""
    # On the meta device nn.Linear draws nothing from the student's global generator, and its
    # parameters are then replaced (torch.nn.utils.skip_init would do the same, but its
    # to_empty() imports sympy: half a second in every process that grades).
    layer = torch.nn.Linear(in_features, out_features, device="meta", dtype=torch.float32)
    layer.weight = torch.nn.Parameter(tensor((out_features, in_features), seed + 1, in_features ** -0.5))
    layer.bias = torch.nn.Parameter(tensor((out_features,), seed + 2))
    return layer

