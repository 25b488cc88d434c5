"""Checks of a LoRALinear class, written once for both ways of storing the adapter.

Notebook 02 stores A and B as nn.Parameters in the math's orientation, (in, r) and (r, out);
notebook 03 stores them as nn.Linear modules, whose weights are (r, in) and (out, r). A
`Layout` says which; every check below works in the math's orientation, x @ A @ B.

Inputs and probes only (the sandbox imports this); the verdicts are in lora_grader.verdicts.layer
and the expected values in lora_grader.answers.layer.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from lora_grader.checks import physical
from lora_grader.checks.core import (
    Check, ProbeError, base_linear, count_flops_and_largest, hidden_cases_of, safe_str, student_location,
    tensor, true_grad, true_numel, true_parameters, true_requires_grad,
)


@dataclasses.dataclass(frozen=True)
class Layout:
    as_linear: bool  # False: nn.Parameter (in, r) and (r, out); True: nn.Linear weights (r, in), (out, r)

    @property
    def name(self) -> str:
        """How answers.layer.shapes names this layout's stored shapes."""
        return "linear" if self.as_linear else "parameter"

    def wanted(self, attribute: str) -> str:
        """What the notebook asks `attribute` to be, for feedback."""
        sizes = "in_features, rank" if attribute == "lora_A" else "rank, out_features"
        return f"nn.Linear({sizes}, bias=False)" if self.as_linear else f"an nn.Parameter of shape ({sizes})"

    def tensors(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        """lora_A and lora_B as stored (the Parameter, or the nn.Linear's weight)."""
        found = []
        for attribute in ("lora_A", "lora_B"):
            value = getattr(layer, attribute, None)
            if value is None:
                raise ProbeError(f"LoRALinear has no attribute `{attribute}`: define it in __init__")
            if self.as_linear:
                if not isinstance(value, nn.Linear):
                    raise ProbeError(f"`{attribute}` should be {self.wanted(attribute)}, but it is a {type(value).__name__}")
                value = value.weight
            elif not isinstance(value, torch.Tensor):
                raise ProbeError(f"`{attribute}` should be {self.wanted(attribute)}, but it is a {type(value).__name__}")
            found.append(value)
        return found[0], found[1]

    def biases(self, layer) -> dict[str, int]:
        """Adapters that carry a bias, with its size: the LoRA update B·A·x has none, but
        nn.Linear adds one unless told bias=False."""
        if not self.as_linear:
            return {}
        found = {name: getattr(layer, name).bias for name in ("lora_A", "lora_B")}
        return {name: bias.numel() for name, bias in found.items() if bias is not None}

    def stored_shapes(self, d: int, k: int, r: int):
        return ((r, d), (k, r)) if self.as_linear else ((d, r), (r, k))

    def to_math(self, stored_A: torch.Tensor, stored_B: torch.Tensor):
        return (stored_A.T, stored_B.T) if self.as_linear else (stored_A, stored_B)


def _sizes(case):
    return case["in_features"], case["out_features"], case["rank"]


def math_adapter(case):
    """The non-zero A (in, r) and B (r, out) the probes load into the layer."""
    d, k, r = _sizes(case)
    return tensor((d, r), case["seed"] + 5, d ** -0.5), tensor((r, k), case["seed"] + 6)


def layer_input(case) -> torch.Tensor:
    return tensor(case["x_shape"], case["seed"] + 4)


def probe_layer(layout: Layout):
    """Build the student's layer on a known base, read its init, then load a known non-zero
    adapter and record outputs, gradients and FLOPs."""

    def probe(namespace, case):
        d, k, r = _sizes(case)
        torch.manual_seed(case["seed"])
        base = base_linear(d, k, case["seed"])
        layer = namespace["LoRALinear"](base, rank=r, alpha=case["alpha"])
        A, B = layout.tensors(layer)
        data = {
            "A_kind": _kind(A), "B_kind": _kind(B),
            "A_shape": list(A.shape), "B_shape": list(B.shape),
            "A_init": A.detach().clone(), "B_init": B.detach().clone(),
            "adapter_biases": layout.biases(layer),
            "scaling": getattr(layer, "scaling", None) if type(getattr(layer, "scaling", None)) in (int, float) else None,
        }
        second = namespace["LoRALinear"](base_linear(d, k, case["seed"]), rank=r, alpha=case["alpha"])
        data["A_init_again"] = layout.tensors(second)[0].detach().clone()
        # Freezing and registration do not depend on the adapters' shapes: read them first.
        _record_parameters(layer, A, B, data)
        shapes, expected = [list(A.shape), list(B.shape)], [list(s) for s in layout.stored_shapes(d, k, r)]
        transposed = shapes == [expected[0][::-1], expected[1][::-1]]
        if shapes != expected and not transposed:
            data["shapes_wrong"] = True
            return data  # the verdicts say which shape is wrong; the forward cannot be measured
        data["shapes_wrong"] = transposed
        try:
            _run_forward(layer, A, B, layout.as_linear != transposed, case, data)
        except NotImplementedError:
            data["forward_error"] = {"type": "NotImplementedError", "message": "", "where": ""}
            return data
        except Exception as error:
            data["forward_error"] = {"type": type(error).__name__, "message": safe_str(error),
                                     "where": student_location(error)}
            return data
        _record_parameters(layer, A, B, data)
        data["adapter_grad_norms"] = [_grad_norm(t) for t in (A, B)]
        # The base the grader passed in, registered or not: if backward reached it, it trains.
        data["given_base_grads"] = {f"base_layer.{name}": _grad_norm(p) for name, p in true_parameters(base)}
        return data

    return probe


def _kind(tensor) -> str:
    return "Parameter" if isinstance(tensor, nn.Parameter) else type(tensor).__name__


def _grad_norm(parameter) -> float | None:
    grad = true_grad(parameter)
    return None if grad is None else grad.double().norm().item()


def _record_parameters(layer, A, B, data: dict) -> None:
    """Every registered parameter, read through nn.Module's own dictionaries and torch's own
    descriptors: a class that overrides named_parameters() or a Parameter that reports
    requires_grad=False cannot hide an unfrozen base."""
    found, adapter = true_parameters(layer), {id(A): "lora_A", id(B): "lora_B"}
    data["parameters"] = [
        {
            "name": adapter.get(id(p), name),
            "adapter": id(p) in adapter,
            "numel": true_numel(p),
            "requires_grad": true_requires_grad(p),
            "grad_norm": _grad_norm(p),
        }
        for name, p in found
    ]
    data["registered"] = sorted(adapter[id(p)] for _, p in found if id(p) in adapter)
    data["adapter_requires_grad"] = [true_requires_grad(A), true_requires_grad(B)]


def _run_forward(layer, A, B, stored_as_rows, case, data):
    """Load the known adapter, as (r, in) and (out, r) rows when `stored_as_rows`, and record
    the outputs, FLOPs, largest allocation and gradients."""
    x = layer_input(case)
    with torch.no_grad():
        data["out_init"] = _tensor_returned(layer(x))
        A_math, B_math = math_adapter(case)
        A.copy_(A_math.T if stored_as_rows else A_math)
        B.copy_(B_math.T if stored_as_rows else B_math)
        data["flops"], data["largest"] = count_flops_and_largest(lambda: layer(x))
    out = data["out"] = _tensor_returned(layer(x))
    if out.requires_grad:
        (out * tensor(out.shape, case["seed"] + 7)).sum().backward()


def _tensor_returned(value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"forward returned a {type(value).__name__}, not a tensor")
    return value


def probe_flops(layout: Layout):
    """The FLOP cases, measured by dispatch modes (probe_layer), then the large cases: a layer
    with in = out = 200,000 under a memory limit, where A @ B (160 GB) cannot be formed at all."""
    measured = probe_layer(layout)

    def probe(namespace, case):
        return _probe_large(layout, namespace, case) if "memory" in case else measured(namespace, case)

    return probe


def _probe_large(layout: Layout, namespace, case) -> dict:
    d, k, r = _sizes(case)
    x = layer_input(case)
    A_math, B_math = math_adapter(case)
    base = physical.zero_linear(d, k, case["seed"])
    with physical.memory_limit() as limited:
        if not limited:
            return {"unmeasured": "no memory limit can be set here (RLIMIT_AS is enforced on Linux only)"}
        stage = "LoRALinear(...)"
        try:
            torch.manual_seed(case["seed"])
            layer = namespace["LoRALinear"](base, rank=r, alpha=case["alpha"])
            A, B = layout.tensors(layer)
            shapes, expected = [list(A.shape), list(B.shape)], [list(s) for s in layout.stored_shapes(d, k, r)]
            transposed = shapes == [expected[0][::-1], expected[1][::-1]]
            if shapes != expected and not transposed:
                return {"shapes_wrong": True}
            rows = layout.as_linear != transposed
            stage = "forward"
            with torch.no_grad():
                A.copy_(A_math.T if rows else A_math)
                B.copy_(B_math.T if rows else B_math)
                out = layer(x)
        except (NotImplementedError, ProbeError):
            raise
        except Exception as error:  # MemoryError, or torch's RuntimeError when an allocation does not fit
            return {"failure": physical.failure(error, stage)}
        return {"shapes_wrong": transposed, **physical.sample(out, case)}


def layer_checks(layout: Layout, cases, hidden_cases, points: dict[str, int]) -> tuple[Check, ...]:
    """The LoRALinear checks, in the order a student should fix them. The FLOP check runs on
    its own cases: larger ones for the dispatch modes' measures, and the large ones."""
    probe = probe_layer(layout)
    # check name -> (verdict in lora_grader.verdicts.layer, expect in lora_grader.answers.layer)
    named = {
        "lora_linear_parameters": (f"parameters_{layout.name}", "shapes"),
        "lora_linear_init": ("init", "init"),
        "lora_linear_output_shape": ("output_shape", "output_shape"),
        "lora_linear_identity_at_init": ("identity_at_init", "outputs"),
        "lora_linear_values": ("values", "outputs"),
        "lora_linear_scaling": ("scaling", "outputs"),
        "lora_linear_base_frozen": ("base_frozen", "frozen"),
        "lora_linear_trainable": ("trainable", "trainable"),
    }
    checks = tuple(
        Check(name, "LoRALinear", points[name], probe, f"lora_grader.verdicts.layer:{verdict}", cases, hidden_cases,
              expect=f"lora_grader.answers.layer:{expect}")
        for name, (verdict, expect) in named.items()
    )
    return checks + (
        Check("lora_linear_flops", "LoRALinear", points["lora_linear_flops"], probe_flops(layout),
              "lora_grader.verdicts.layer:flops", FLOP_CASES + LARGE_CASES, FLOP_HIDDEN,
              expect="lora_grader.answers.layer:flops"),
    )


def layer_cases(shapes, seeds):
    """Cases from (in, out, rank, alpha, x_shape) tuples: keep them non-square with alpha != rank."""
    return tuple(
        {"in_features": d, "out_features": k, "rank": r, "alpha": alpha, "x_shape": x_shape, "seed": seed}
        for (d, k, r, alpha, x_shape), seed in zip(shapes, seeds)
    )


def large_cases(shapes, seeds):
    """Layer cases run under a memory limit that leaves no room for an (in, out) matrix."""
    return tuple({**case, "memory": physical.NO_ROOM} for case in layer_cases(shapes, seeds))


CASES = layer_cases([(12, 20, 4, 6, (5, 12)), (16, 6, 2, 3, (2, 3, 16))], seeds=(100, 110))
# Few tokens and rank 2: an in × out matrix is a hundred times larger than x or the output.
FLOP_CASES = layer_cases([(512, 384, 2, 3, (3, 512)), (384, 512, 2, 5, (2, 2, 384))], seeds=(150, 160))
# A @ B would take 160 GB; (x @ A) @ B, a few megabytes.
LARGE_CASES = large_cases([(200_000, 200_000, 2, 3, (3, 200_000))], seeds=(190,))
HIDDEN = hidden_cases_of("layer", layer_cases, large_cases)
HIDDEN_CASES = HIDDEN["layer"]
FLOP_HIDDEN = HIDDEN["flops"]

