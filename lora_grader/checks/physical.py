"""Inputs too large for an (in, out) matrix: the measure of "never forms A @ B" that no trick
inside the student's process can switch off.

FlopCounterMode and the allocation tracker are dispatch modes, and code can pop them
(`torch.utils._python_dispatch._disable_current_modes()`) and form A @ B out of their sight. These
probes need no mode: the layer has in_features = out_features = 200,000, so A @ B would take
160 GB, while (x @ A) @ B takes a few megabytes. The forward runs under a memory limit of this
process (and the sandbox's own, which student code cannot lift), so forming the matrix fails at
once with an allocation error, whatever the code does to torch's dispatch.

The base layer is an nn.Linear whose weight is a `ZeroWeight`: (out, in) zeros held in no memory.
Its own forward, F.linear(x, weight, bias) and x @ weight.T work on it as on any weight, and cost
no more than the output they produce.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from lora_grader.checks.core import safe_str, student_location, tensor

NO_ROOM = "too little for an (in, out) matrix"  # a large case's "memory", as feedback shows it
HEADROOM = 2 * 2**30  # bytes of address space the probe leaves the student's code
UNKNOWN_USE_LIMIT = 32 * 2**30  # the limit where this process's use cannot be read: far below 160 GB
SAMPLED_COLUMNS = 32

_aten = torch.ops.aten
# Views: their shape comes from running them on an expanded zero, which holds no memory either.
_VIEWS = {
    _aten.t.default, _aten.transpose.int, _aten.permute.default, _aten.view.default,
    _aten._unsafe_view.default, _aten.expand.default, _aten.unsqueeze.default, _aten.squeeze.dim,
    _aten.squeeze.default, _aten.squeeze.dims, _aten.slice.Tensor, _aten.select.int,
}
# Zeros in, zeros of the same shape out (or of the broadcast shape, for mul and div).
_SAME = {_aten.detach.default, _aten.alias.default, _aten.clone.default, _aten.contiguous.default,
         _aten._to_copy.default, _aten.neg.default, _aten.lift_fresh.default}
_SCALED = {_aten.mul.Tensor, _aten.mul.Scalar, _aten.div.Tensor, _aten.div.Scalar}


class ZeroWeight(torch.Tensor):
    """An all-zero tensor of any size that holds no memory. Views and copies of it are zeros
    again, and a product with it is zeros of the product's shape, computed from shapes alone;
    any other use materialises it (and, at the sizes used here, fails for want of memory, as
    forming A @ B does)."""

    @staticmethod
    def __new__(cls, shape, dtype=torch.float32):
        return torch.Tensor._make_wrapper_subclass(cls, tuple(shape), dtype=dtype, device="cpu")

    def __repr__(self):
        return f"ZeroWeight(shape={tuple(self.shape)})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if func in _VIEWS and isinstance(first, ZeroWeight):
            view = func(_expanded(first), *args[1:], **kwargs)
            return ZeroWeight(view.shape, first.dtype)
        if func in _SAME and isinstance(first, ZeroWeight):
            return ZeroWeight(first.shape, kwargs.get("dtype") or first.dtype)
        if func in _SCALED and (isinstance(first, ZeroWeight) or func is _aten.mul.Tensor and _zero_in(args[1:2])):
            return ZeroWeight(torch.broadcast_shapes(*(_shape(a) for a in args[:2])), _dtype(args[:2]))
        if func in (_aten.mm.default, _aten.bmm.default, _aten.mv.default, _aten.dot.default) and _zero_in(args[:2]):
            a, b = args[:2]
            shape = {_aten.mm.default: a.shape[:1] + b.shape[1:], _aten.bmm.default: a.shape[:2] + b.shape[2:],
                     _aten.mv.default: a.shape[:1], _aten.dot.default: ()}[func]
            if func is not _aten.dot.default and a.shape[-1] != b.shape[-2 if func is not _aten.mv.default else 0]:
                raise RuntimeError(f"{func}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
            return torch.zeros(shape, dtype=_dtype(args[:2]))
        if func is _aten.addmm.default and _zero_in(args[1:3]):  # bias + x @ weight.T: the bias, broadcast
            bias, a, b = args[:3]
            if a.shape[1] != b.shape[0]:
                raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a.shape[0]}x{a.shape[1]} "
                                   f"and {b.shape[0]}x{b.shape[1]})")
            beta = kwargs.get("beta", args[3] if len(args) > 3 else 1)
            return (beta * torch.zeros(bias.shape, dtype=bias.dtype) if isinstance(bias, ZeroWeight)
                    else beta * bias).expand(a.shape[0], b.shape[1]).clone()
        real = tree_map(lambda t: torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, ZeroWeight) else t,
                        (args, kwargs))
        return func(*real[0], **real[1])


def _zero_in(args) -> bool:
    return any(isinstance(arg, ZeroWeight) for arg in args)


def _expanded(zero: ZeroWeight) -> torch.Tensor:
    return torch.zeros((), dtype=zero.dtype).expand(zero.shape)


def _shape(value):
    return value.shape if isinstance(value, torch.Tensor) else ()


def _dtype(values):
    return torch.result_type(*(_expanded(v) if isinstance(v, ZeroWeight) else v for v in values))


def zero_linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """An nn.Linear(in_features, out_features) whose weight is zeros in no memory and whose bias is
    the one core.base_linear gives the same seed: its output is its bias, at any size."""
    layer = nn.Linear.__new__(nn.Linear)  # nn.Linear's __init__ would draw a weight of that size
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = in_features, out_features
    layer.weight = nn.Parameter(ZeroWeight((out_features, in_features)))
    layer.bias = nn.Parameter(tensor((out_features,), seed + 2))
    return layer


def sampled_columns(case) -> torch.Tensor:
    """The output columns a probe sends back (with every row's sum): the case fixes them."""
    generator = torch.Generator().manual_seed(case["seed"] + 9)
    return torch.randperm(case["out_features"], generator=generator)[:SAMPLED_COLUMNS].sort().values


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_limit(headroom: int = HEADROOM):
    """Limit this process's address space (Linux's RLIMIT_AS) to what it uses now plus
    `headroom`, or to UNKNOWN_USE_LIMIT where /proc is out of reach (the sandbox, whose own
    hard limit is lower still), then restore it. No large case's (in, out) matrix fits. Yields
    whether a limit is in force: elsewhere (macOS ignores RLIMIT_AS, Windows has none) the large
    cases are not run, since forming A @ B there could take the machine's memory."""
    if not sys.platform.startswith("linux"):
        yield False
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        limit = _address_space() + headroom
    except (OSError, ValueError):
        limit = UNKNOWN_USE_LIMIT
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield True  # already at most that
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError):
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError, ValueError):  # student code may have lowered the hard limit
            resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))


def out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = safe_str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in text for words in ("can't allocate memory", "cannot allocate memory", "out of memory",
                                    "not enough memory"))


def failure(error: BaseException, stage: str) -> dict:
    """What went wrong, as plain data: an allocation that did not fit, or another exception."""
    return {"stage": stage, "out_of_memory": out_of_memory(error), "type": type(error).__name__,
            "message": safe_str(error), "where": student_location(error)}


def sample(out, case) -> dict:
    """A large output as a few of its columns and the sum of every row, as float64."""
    if not isinstance(out, torch.Tensor) or isinstance(out, ZeroWeight):
        return {"kind": type(out).__name__}
    with torch._C.DisableTorchFunctionSubclass():
        out = torch.Tensor.as_subclass(out, torch.Tensor).detach()
    shape = list(out.shape)
    if not shape or shape[-1] != case["out_features"]:
        return {"kind": "tensor", "shape": shape}
    return {"kind": "tensor", "shape": shape, "columns": out[..., sampled_columns(case)].double().clone(),
            "row_sums": out.double().sum(-1)}
