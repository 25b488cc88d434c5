"""Checks of a LoRALinear class, written once for both ways of storing the adapter.

Notebook 02 stores A and B as nn.Parameters in the math's orientation, (in, r) and (r, out);
notebook 03 stores them as nn.Linear modules, whose weights are (r, in) and (out, r). A
`Layout` says which; every check below works in the math's orientation, x @ A @ B.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from lora_grader.checks.core import (
    Check, ProbeError, base_linear, count_flops_and_largest, fail, fit_scale, is_close, matmul_flops,
    max_error, numbers, safe_str, shape_str, student_location, tensor, true_grad, true_numel,
    true_parameters, true_requires_grad,
)
from lora_grader.checks.core import hidden_cases_of


@dataclasses.dataclass(frozen=True)
class Layout:
    as_linear: bool  # False: nn.Parameter (in, r) and (r, out); True: nn.Linear weights (r, in), (out, r)

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


def _math_adapter(case):
    """The non-zero A (in, r) and B (r, out) the probes load into the layer."""
    d, k, r = _sizes(case)
    return tensor((d, r), case["seed"] + 5, d ** -0.5), tensor((r, k), case["seed"] + 6)


def _expected(case, A=None, B=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(base output, LoRA term without scaling), float64, for x and the probes' adapter."""
    d, k, r = _sizes(case)
    base = base_linear(d, k, case["seed"])
    x = tensor(case["x_shape"], case["seed"] + 4).double()
    if A is None:
        A, B = _math_adapter(case)
    base_out = x @ base.weight.double().T + base.bias.double()
    return base_out, (x @ A.double()) @ B.double()


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
    x = tensor(case["x_shape"], case["seed"] + 4)
    with torch.no_grad():
        data["out_init"] = _tensor_returned(layer(x))
        A_math, B_math = _math_adapter(case)
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


def _measured(data, key, case):
    error = data.get("forward_error")
    if data.get("shapes_wrong") and (error or key not in data):
        fail("lora_A or lora_B has the wrong shape, so this could not be measured: "
             "fix lora_linear_parameters first", case)
    if error and error["type"] == "NotImplementedError":
        fail("LoRALinear.forward is not implemented yet (it still raises NotImplementedError).")
    if error:
        where = f" at {error['where']}" if error["where"] else ""
        hint = _forward_hint(error["message"])
        fail(f"forward raised {error['type']}{where}: {error['message']}"
             + (f"\n  Likely cause: {hint}" if hint else ""), case)
    return data[key]


def _forward_hint(message: str) -> str | None:
    if "must match the size" in message:
        return "`*` multiplies elementwise and only runs when shapes broadcast; a linear map needs `@`."
    if "cannot be multiplied" in message:
        return ("the adapter maps x (…, in) to (…, rank) with lora_A, then to (…, out) with lora_B: "
                "are they applied in that order, each the right way round?")
    if "object is not callable" in message:
        return ("lora_A and lora_B are nn.Parameters here, tensors rather than layers: multiply "
                "with `@` instead of calling them")
    return None


def verdict_parameters(layout: Layout):
    def verdict(case, data):
        d, k, r = _sizes(case)
        for name, kind, shape, expected in zip(
            ("lora_A", "lora_B"), (data["A_kind"], data["B_kind"]),
            (data["A_shape"], data["B_shape"]), layout.stored_shapes(d, k, r),
        ):
            what = f"{name}.weight" if layout.as_linear else name
            if tuple(shape) != tuple(expected):
                hint = ""
                if tuple(shape) == tuple(reversed(expected)) and layout.as_linear:
                    right = "nn.Linear(in_features, rank)" if name == "lora_A" else "nn.Linear(rank, out_features)"
                    hint = (f": were nn.Linear's arguments swapped? {name} is {right}, and nn.Linear "
                            "stores its weight as (out, in)")
                elif tuple(shape) == tuple(reversed(expected)):
                    hint = ": that is the transposed convention; here it is x @ A @ B's (in, r) then (r, out)"
                fail(f"{what} has shape {shape_str(shape)} but expected {shape_str(expected)}{hint}", case)
            if not layout.as_linear and kind != "Parameter":
                fail(f"{name} is a {kind}, not an nn.Parameter: wrap it in nn.Parameter(...) so that "
                     "the module registers it and an optimizer can train it", case)
        for name, size in data.get("adapter_biases", {}).items():
            fail(f"{name} has a bias: nn.Linear creates one unless told bias=False, and {name}.bias adds "
                 f"{size} extra trainable numbers (and a shift) that the LoRA update B·A·x does not have. "
                 f"Create it with nn.Linear(..., bias=False).", case)
    return verdict


def verdict_init(case, data):
    B, A, A_again = data["B_init"], data["A_init"], data["A_init_again"]
    if B.count_nonzero().item() and not A.count_nonzero().item():
        fail("lora_A starts at zero and lora_B is random: the two initialisations are swapped. lora_A is "
             "drawn from a Gaussian (so that lora_B gets a gradient), and lora_B starts at zero (so that "
             "the layer starts as the base layer).", case)
    if B.count_nonzero().item():
        fail(f"lora_B should start at exactly zero (so the layer starts as the base layer), "
             f"but {B.count_nonzero().item()} of its {B.numel()} entries are not zero: {numbers(B)}", case)
    A = A.double()
    if not torch.isfinite(A).all() or A.abs().max().item() == 0.0:
        fail("lora_A is all zeros (or not finite): with A = 0 and B = 0 no gradient ever flows, "
             "so nothing trains. Draw A from a Gaussian.", case)
    if A.numel() > 1 and (A == A.flatten()[0]).all():
        fail(f"lora_A is filled with one constant ({A.flatten()[0].item():g}), as torch.ones or "
             "nn.init.constant_ would do: its rows are all equal, so the rank directions of the "
             "adapter collapse into one. Draw A from a Gaussian (nn.init.normal_).", case)
    if torch.equal(A_again, data["A_init"]):
        fail("lora_A came out identical in two new layers: it should be random, e.g. nn.init.normal_ "
             "or torch.randn, not a fixed pattern or a fixed seed inside __init__", case)
    rank = min(A.shape)
    if torch.linalg.matrix_rank(A).item() < rank:
        fail(f"lora_A has rank {torch.linalg.matrix_rank(A).item()} but should have full rank {rank}: "
             "a constant fill (e.g. torch.ones) makes every direction the same", case)


def verdict_output_shape(case, data):
    seen = _measured(data, "out", case)
    expected = (*case["x_shape"][:-1], case["out_features"])
    if tuple(seen.shape) != expected:
        hint = ("it has x's shape: did you multiply elementwise (`*`) instead of with `@`?"
                if tuple(seen.shape) == tuple(case["x_shape"]) else
                "the LoRA term must map (…, in) to (…, out) like the base layer.")
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(expected)}: {hint}", case)


def verdict_identity_at_init(case, data):
    seen = _measured(data, "out_init", case)
    base_out, _ = _expected(case)
    if not is_close(seen, base_out):
        difference = (f"by up to {max_error(seen, base_out):.3g}" if seen.shape == base_out.shape
                      else f"in shape, {shape_str(seen.shape)} against {shape_str(base_out.shape)}")
        fail(f"at initialisation the layer should equal the base layer (B = 0), but the outputs differ "
             f"{difference}: expected {numbers(base_out)}, got {numbers(seen)}. Is lora_B zero, and is nothing "
             "added besides base(x) + scaling · (x @ A) @ B?", case)


def scaling_hint(measured: float, case) -> str:
    """Name the mistake that scales the LoRA term by `measured` instead of alpha / rank."""
    alpha, r = case["alpha"], case["rank"]
    right = alpha / r
    for wrong, cause in ((1.0, "no scaling at all"), (alpha, "alpha instead of alpha / rank"),
                         (r / alpha, "rank / alpha instead of alpha / rank"), (1 / r, "1 / rank, without alpha"),
                         (right ** 2, "alpha / rank applied twice")):
        if abs(measured - wrong) < 1e-4 * max(1.0, abs(wrong)):
            return (f"the LoRA term is scaled by {measured:g} but expected alpha / rank = {right:g} "
                    f"(alpha={alpha}, rank={r}): that is {cause}")
    return f"the LoRA term is scaled by {measured:.4g} but expected alpha / rank = {right:g}"


def verdict_values(case, data):
    seen = _measured(data, "out", case)
    base_out, term = _expected(case)
    expected = base_out + case["alpha"] / case["rank"] * term
    if seen.shape != expected.shape:
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(expected.shape)}: "
             "fix the shape first (see the output shape check)", case)
    if is_close(seen, expected):
        return
    message = (f"with a non-zero lora_B, the output differs from base(x) + (alpha/rank) · (x @ A) @ B "
               f"by up to {max_error(seen, expected):.3g}: expected {numbers(expected)}, got {numbers(seen)}")
    factor = fit_scale(seen.double() - base_out, term)
    if factor is not None:
        hint = scaling_hint(factor, case)
        message += ". " + hint[0].upper() + hint[1:]
    elif is_close(seen, base_out):
        message += ". The output is just base(x): the LoRA term is never added"
    fail(message, case)


def verdict_scaling(case, data):
    alpha, r = case["alpha"], case["rank"]
    if data["scaling"] is not None and abs(data["scaling"] - alpha / r) > 1e-9:
        fail(f"self.scaling is {data['scaling']:g} but should be alpha / rank = {alpha / r:g} "
             f"(alpha={alpha}, rank={r})", case)
    seen = _measured(data, "out", case)
    base_out, term = _expected(case)
    if seen.shape != base_out.shape:
        fail("the output has the wrong shape, so its scaling cannot be measured: fix the shape first", case)
    factor = fit_scale(seen.double() - base_out, term)
    if factor is None:
        fail("the output minus base(x) is not a multiple of (x @ A) @ B, so there is no single scaling "
             "to measure: fix the values first", case)
    if abs(factor - alpha / r) > 1e-4 * max(1.0, alpha / r):
        fail(scaling_hint(factor, case), case)


def _in_adapter(parameter) -> bool:
    """lora_A and lora_B themselves, or anything else inside an nn.Linear adapter (its bias)."""
    return parameter["adapter"] or parameter["name"].split(".")[0] in ("lora_A", "lora_B")


def verdict_base_frozen(case, data):
    base = [p for p in data["parameters"] if not _in_adapter(p)]
    frozen = [p["name"] for p in base if not p["requires_grad"]]
    for parameter in base:
        if parameter["requires_grad"] and frozen:
            fail(f"{parameter['name']} still requires grad, so the optimizer would train it: only part of "
                 f"the base layer was frozen ({', '.join(frozen)}). Freezing the weight alone leaves the "
                 "bias training; freeze every parameter with `base_layer.requires_grad_(False)`.", case)
        if parameter["requires_grad"]:
            fail(f"{parameter['name']} still requires grad, so the optimizer would train the base layer. "
                 "Note `module.requires_grad = False` only sets an attribute; use "
                 "`base_layer.requires_grad_(False)` or set it on every parameter.", case)
        if parameter["grad_norm"] is not None:
            fail(f"{parameter['name']} received a gradient in backward: the base must be frozen", case)
    for name, norm in data.get("given_base_grads", {}).items():
        if norm is not None:
            fail(f"{name} received a gradient in backward, so the base layer is not frozen (is it kept "
                 "where the module does not register it?): freeze it with `base_layer.requires_grad_(False)`",
                 case)


def verdict_trainable(case, data):
    d, k, r = _sizes(case)
    names = ("lora_A", "lora_B")
    registered = data["registered"]
    for name in names:
        if name not in registered:
            fail(f"{name} is not a parameter of the module (it is missing from layer.parameters()), "
                 "so an optimizer never sees it: make it an nn.Parameter (or nn.Linear) attribute", case)
    for name, requires in zip(names, data["adapter_requires_grad"]):
        if not requires:
            fail(f"{name} does not require grad, so it never trains", case)
    for name, norm in zip(names, _measured(data, "adapter_grad_norms", case)):
        if norm is None or norm == 0.0:
            fail(f"{name} received {'no' if norm is None else 'a zero'} gradient with a non-zero lora_B: "
                 "is it used in forward, and not detached or computed under torch.no_grad()?", case)
    trainable = [p for p in data["parameters"] if p["requires_grad"]]
    count = sum(p["numel"] for p in trainable)
    if count != r * (d + k):
        extra = [p["name"] for p in trainable if not p["adapter"]]
        fail(f"{count:,} trainable numbers but expected r · (in + out) = {r} · ({d} + {k}) = {r * (d + k):,}"
             + (f"; also trainable: {', '.join(extra)}" if extra else ""), case)


def verdict_flops(case, data):
    flops, largest = _measured(data, "flops", case), int(_measured(data, "largest", case))
    base_out, term = _expected(case)
    if not is_close(_measured(data, "out", case), base_out + case["alpha"] / case["rank"] * term):
        fail("the FLOP budget only counts for a correct output, and this one is wrong: "
             "fix the output shape and values checks first", case)
    d, k, r = _sizes(case)
    tokens = math.prod(case["x_shape"][:-1])
    # FLOP_CASES make an in × out matrix far larger than anything a factored forward allocates.
    if largest >= d * k // 4:
        fail(f"forward built a tensor of {largest:,} numbers, as large as an in × out = {d}×{k} matrix, "
             f"while x, x @ A and the output hold at most {tokens * max(d, k):,} each: is A @ B formed "
             "(with @, einsum, torch.outer, or broadcasting and sum)? Apply A, then B, to x.", case)
    budget = matmul_flops(tokens, d, k) + matmul_flops(tokens, d, r) + matmul_flops(tokens, r, k)
    if flops > budget:
        fail(f"forward used {flops:,} FLOPs but base + (x @ A) @ B needs only {budget:,}: "
             f"is an in × out = {d}×{k} matrix formed from A and B? Apply A, then B, to x.", case)


def layer_checks(layout: Layout, cases, hidden_cases, points: dict[str, int]) -> tuple[Check, ...]:
    """The LoRALinear checks, in the order a student should fix them. The FLOP check runs on
    its own, larger cases."""
    probe = probe_layer(layout)
    verdicts = {
        "lora_linear_parameters": verdict_parameters(layout),
        "lora_linear_init": verdict_init,
        "lora_linear_output_shape": verdict_output_shape,
        "lora_linear_identity_at_init": verdict_identity_at_init,
        "lora_linear_values": verdict_values,
        "lora_linear_scaling": verdict_scaling,
        "lora_linear_base_frozen": verdict_base_frozen,
        "lora_linear_trainable": verdict_trainable,
        "lora_linear_flops": verdict_flops,
    }
    flops = (FLOP_CASES, FLOP_HIDDEN)
    return tuple(
        Check(name, "LoRALinear", points[name], probe, verdict,
              *(flops if name == "lora_linear_flops" else (cases, hidden_cases)))
        for name, verdict in verdicts.items()
    )


def layer_cases(shapes, seeds):
    """Cases from (in, out, rank, alpha, x_shape) tuples: keep them non-square with alpha != rank."""
    return tuple(
        {"in_features": d, "out_features": k, "rank": r, "alpha": alpha, "x_shape": x_shape, "seed": seed}
        for (d, k, r, alpha, x_shape), seed in zip(shapes, seeds)
    )


CASES = layer_cases([(12, 20, 4, 6, (5, 12)), (16, 6, 2, 3, (2, 3, 16))], seeds=(100, 110))
# Few tokens and rank 2: an in × out matrix is a hundred times larger than x or the output.
FLOP_CASES = layer_cases([(512, 384, 2, 3, (3, 512)), (384, 512, 2, 5, (2, 2, 384))], seeds=(150, 160))
HIDDEN = hidden_cases_of("layer", layer_cases)
HIDDEN_CASES = HIDDEN["layer"]
FLOP_HIDDEN = HIDDEN["flops"]
