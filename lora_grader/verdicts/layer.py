"""Verdicts for the LoRALinear checks that notebooks 02 and 03 share (checks/layer.py).

Every check reads the same probe data (checks.layer.probe_layer), in the math's orientation
x @ A @ B; what each expects comes from lora_grader.answers.layer.
"""
from __future__ import annotations

import torch

from lora_grader.verdicts.core import (
    HOW_AB_IS_FORMED, ORDER_HINT, fail, fit_scale, is_close, max_error, numbers, shape_str,
)
from lora_grader.verdicts.physical import judge_large

# What a wrong scaling most likely means, by the name answers.layer.scalings gives it.
CAUSES = {
    "no_scaling": "no scaling at all",
    "alpha_only": "alpha instead of alpha / rank",
    "rank_over_alpha": "rank / alpha instead of alpha / rank",
    "no_alpha": "1 / rank, without alpha",
    "scaled_twice": "alpha / rank applied twice",
}


# --- what the forward did, or why it could not be measured -------------------------------------

def _measured(data, key, case):
    error = data.get("forward_error")
    if data.get("shapes_wrong") and (error or key not in data):
        fail("lora_A or lora_B has the wrong shape, so this could not be measured: "
             "fix lora_linear_parameters first", case, cause="wrong_shape")
    if error and error["type"] == "NotImplementedError":
        fail("LoRALinear.forward is not implemented yet (it still raises NotImplementedError).",
             cause="not_implemented")
    if error:
        where = f" at {error['where']}" if error["where"] else ""
        hint = forward_hint(error["message"])
        fail(f"forward raised {error['type']}{where}: {error['message']}"
             + (f"\n  Likely cause: {hint}" if hint else ""), case, cause=f"raised:{error['type']}")
    return data[key]


def forward_hint(message: str) -> str | None:
    if "must match the size" in message:
        return "`*` multiplies elementwise and only runs when shapes broadcast; a linear map needs `@`."
    if "cannot be multiplied" in message:
        return ("the adapter maps x (…, in) to (…, rank) with lora_A, then to (…, out) with lora_B: "
                "are they applied in that order, each the right way round?")
    if "object is not callable" in message:
        return ("lora_A and lora_B are nn.Parameters here, tensors rather than layers: multiply "
                "with `@` instead of calling them")
    return None


# --- lora_linear_parameters ------------------------------------------------------------------

def parameters_parameter(case, expected, data):
    _parameters("parameter", case, expected, data)


def parameters_linear(case, expected, data):
    _parameters("linear", case, expected, data)


def _parameters(layout, case, expected, data):
    as_linear = layout == "linear"
    for name, kind, shape, wanted in zip(("lora_A", "lora_B"), (data["A_kind"], data["B_kind"]),
                                         (data["A_shape"], data["B_shape"]), expected[layout]):
        what = f"{name}.weight" if as_linear else name
        if list(shape) != list(wanted):
            hint, cause = "", "wrong_shape"
            if list(shape) == list(reversed(wanted)) and as_linear:
                right = "nn.Linear(in_features, rank)" if name == "lora_A" else "nn.Linear(rank, out_features)"
                hint, cause = (f": were nn.Linear's arguments swapped? {name} is {right}, and nn.Linear "
                               "stores its weight as (out, in)"), "linear_arguments_swapped"
            elif list(shape) == list(reversed(wanted)):
                hint, cause = ": that is the transposed convention; here it is x @ A @ B's (in, r) then (r, out)", \
                    "transposed"
            fail(f"{what} has shape {shape_str(shape)} but expected {shape_str(wanted)}{hint}", case, cause=cause)
        if not as_linear and kind != "Parameter":
            fail(f"{name} is a {kind}, not an nn.Parameter: wrap it in nn.Parameter(...) so that "
                 "the module registers it and an optimizer can train it", case, cause="not_parameter")
    for name, size in data.get("adapter_biases", {}).items():
        fail(f"{name} has a bias: nn.Linear creates one unless told bias=False, and {name}.bias adds "
             f"{size} extra trainable numbers (and a shift) that the LoRA update B·A·x does not have. "
             f"Create it with nn.Linear(..., bias=False).", case, cause="adapter_bias")


# --- lora_linear_init ------------------------------------------------------------------------

def init(case, expected, data):
    B, A, A_again = data["B_init"], data["A_init"], data["A_init_again"]
    if B.count_nonzero().item() and not A.count_nonzero().item():
        fail("lora_A starts at zero and lora_B is random: the two initialisations are swapped. lora_A is "
             "drawn from a Gaussian (so that lora_B gets a gradient), and lora_B starts at zero (so that "
             "the layer starts as the base layer).", case, cause="inits_swapped")
    if B.count_nonzero().item():
        fail(f"lora_B should start at exactly zero (so the layer starts as the base layer), "
             f"but {B.count_nonzero().item()} of its {B.numel()} entries are not zero: {numbers(B)}", case,
             cause="B_not_zero")
    A = A.double()
    if not torch.isfinite(A).all() or A.abs().max().item() == 0.0:
        fail("lora_A is all zeros (or not finite): with A = 0 and B = 0 no gradient ever flows, "
             "so nothing trains. Draw A from a Gaussian.", case, cause="A_zero")
    if A.numel() > 1 and (A == A.flatten()[0]).all():
        fail(f"lora_A is filled with one constant ({A.flatten()[0].item():g}), as torch.ones or "
             "nn.init.constant_ would do: its rows are all equal, so the rank directions of the "
             "adapter collapse into one. Look at how the notebook says A is initialised.", case, cause="A_constant")
    if torch.equal(A_again, data["A_init"]):
        fail("lora_A came out identical in two new layers: it should be random, "
             "not a fixed pattern or a fixed seed inside __init__", case, cause="A_not_random")
    rank = torch.linalg.matrix_rank(A).item()
    if rank < expected["rank"]:
        fail(f"lora_A has rank {rank} but should have full rank {expected['rank']}: "
             "a constant fill makes every direction the same", case, cause="A_low_rank")


# --- the outputs ---------------------------------------------------------------------------

def output_shape(case, expected, data):
    seen = _measured(data, "out", case)
    if list(seen.shape) != list(expected["shape"]):
        elementwise = list(seen.shape) == list(case["x_shape"])
        hint = ("it has x's shape: did you multiply elementwise (`*`) instead of with `@`?" if elementwise else
                "the LoRA term must map (…, in) to (…, out) like the base layer.")
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(expected['shape'])}: {hint}", case,
             cause="elementwise" if elementwise else "wrong_shape")


def identity_at_init(case, expected, data):
    seen = _measured(data, "out_init", case)
    base_out = expected["base"]
    if not is_close(seen, base_out):
        difference = (f"by up to {max_error(seen, base_out):.3g}" if seen.shape == base_out.shape
                      else f"in shape, {shape_str(seen.shape)} against {shape_str(base_out.shape)}")
        fail(f"at initialisation the layer should equal the base layer (B = 0), but the outputs differ "
             f"{difference}: expected {numbers(base_out)}, got {numbers(seen)}. Is lora_B zero, and is nothing "
             "added besides base(x) + scaling · (x @ A) @ B?", case, cause="not_base_at_init")


def scaling_hint(measured: float, case, expected) -> tuple[str, str]:
    """(words, cause) for a LoRA term scaled by `measured` instead of alpha / rank; `expected`
    holds answers.layer.scalings(case)."""
    alpha, r, right = case["alpha"], case["rank"], expected["scaling"]
    for wrong, cause in expected["wrong_scalings"]:
        if abs(measured - wrong) < 1e-4 * max(1.0, abs(wrong)):
            return (f"the LoRA term is scaled by {measured:g} but expected alpha / rank = {right:g} "
                    f"(alpha={alpha}, rank={r}): that is {CAUSES[cause]}"), cause
    return f"the LoRA term is scaled by {measured:.4g} but expected alpha / rank = {right:g}", "wrong_scaling"


def values(case, expected, data):
    seen = _measured(data, "out", case)
    output, base_out = expected["output"], expected["base"]
    if seen.shape != output.shape:
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(output.shape)}: "
             "fix the shape first (see the output shape check)", case, cause="wrong_shape")
    if is_close(seen, output):
        return
    message = (f"with a non-zero lora_B, the output differs from base(x) + (alpha/rank) · (x @ A) @ B "
               f"by up to {max_error(seen, output):.3g}: expected {numbers(output)}, got {numbers(seen)}")
    factor, cause = fit_scale(seen.double() - base_out, expected["term"]), "wrong_values"
    if factor is not None:
        hint, cause = scaling_hint(factor, case, expected)
        message += ". " + hint[0].upper() + hint[1:]
    elif is_close(seen, base_out):
        message += ". The output is just base(x): the LoRA term is never added"
        cause = "no_lora_term"
    fail(message, case, cause=cause)


def scaling(case, expected, data):
    alpha, r, right = case["alpha"], case["rank"], expected["scaling"]
    if data["scaling"] is not None and abs(data["scaling"] - right) > 1e-9:
        fail(f"self.scaling is {data['scaling']:g} but should be alpha / rank = {right:g} "
             f"(alpha={alpha}, rank={r})", case, cause="scaling_attribute")
    seen = _measured(data, "out", case)
    base_out = expected["base"]
    if seen.shape != base_out.shape:
        fail("the output has the wrong shape, so its scaling cannot be measured: fix the shape first", case,
             cause="wrong_shape")
    factor = fit_scale(seen.double() - base_out, expected["term"])
    if factor is None:
        fail("the output minus base(x) is not a multiple of (x @ A) @ B, so there is no single scaling "
             "to measure: fix the values first", case, cause="wrong_values")
    if abs(factor - right) > 1e-4 * max(1.0, right):
        hint, cause = scaling_hint(factor, case, expected)
        fail(hint, case, cause=cause)


# --- freezing and training ---------------------------------------------------------------

def _in_adapter(parameter) -> bool:
    """lora_A and lora_B themselves, or anything else inside an nn.Linear adapter (its bias)."""
    return parameter["adapter"] or parameter["name"].split(".")[0] in ("lora_A", "lora_B")


def base_frozen(case, expected, data):
    base = [p for p in data["parameters"] if not _in_adapter(p)]
    frozen = [p["name"] for p in base if not p["requires_grad"]]
    for parameter in base:
        if parameter["requires_grad"] and frozen:
            fail(f"{parameter['name']} still requires grad, so the optimizer would train it: only part of "
                 f"the base layer was frozen ({', '.join(frozen)}). Freezing the weight alone leaves the "
                 "bias training: every parameter of the base layer must be frozen.", case,
                 cause="partly_frozen")
        if parameter["requires_grad"]:
            fail(f"{parameter['name']} still requires grad, so the optimizer would train the base layer. "
                 "Note `module.requires_grad = False` only sets an attribute of the module; look at what "
                 "each parameter's requires_grad says.", case, cause="not_frozen")
        if parameter["grad_norm"] is not None:
            fail(f"{parameter['name']} received a gradient in backward: the base must be frozen", case,
                 cause="base_gets_gradient")
    for name, norm in data.get("given_base_grads", {}).items():
        if norm is not None:
            fail(f"{name} received a gradient in backward, so the base layer is not frozen (is it kept "
                 "where the module does not register it, or not frozen at all?)",
                 case, cause="unregistered_base_trains")


def trainable(case, expected, data):
    d, k, r = case["in_features"], case["out_features"], case["rank"]
    names = ("lora_A", "lora_B")
    for name in names:
        if name not in data["registered"]:
            fail(f"{name} is not a parameter of the module (it is missing from layer.parameters()), "
                 "so an optimizer never sees it: make it an nn.Parameter (or nn.Linear) attribute", case,
                 cause="not_registered")
    for name, requires in zip(names, data["adapter_requires_grad"]):
        if not requires:
            fail(f"{name} does not require grad, so it never trains", case, cause="adapter_frozen")
    for name, norm in zip(names, _measured(data, "adapter_grad_norms", case)):
        if norm is None or norm == 0.0:
            fail(f"{name} received {'no' if norm is None else 'a zero'} gradient with a non-zero lora_B: "
                 "is it used in forward, and not detached or computed under torch.no_grad()?", case,
                 cause="no_gradient")
    found = [p for p in data["parameters"] if p["requires_grad"]]
    count = sum(p["numel"] for p in found)
    if count != expected["count"]:
        extra = [p["name"] for p in found if not p["adapter"]]
        fail(f"{count:,} trainable numbers but expected r · (in + out) = {r} · ({d} + {k}) = {expected['count']:,}"
             + (f"; also trainable: {', '.join(extra)}" if extra else ""), case, cause="wrong_count")


# --- lora_linear_flops ----------------------------------------------------------------------



def flops(case, expected, data):
    if "memory" in case:
        return _large(case, expected, data)
    flops, largest = _measured(data, "flops", case), int(_measured(data, "largest", case))
    if not is_close(_measured(data, "out", case), expected["output"]):
        fail("the FLOP budget only counts for a correct output, and this one is wrong: "
             "fix the output shape and values checks first", case, cause="wrong_output")
    d, k = case["in_features"], case["out_features"]
    # The FLOP cases make an in × out matrix far larger than anything a factored forward allocates.
    if largest >= expected["matrix"] // 4:
        fail(f"forward built a tensor of {largest:,} numbers, as large as an in × out = {d}×{k} matrix, "
             f"while x, x @ A and the output hold at most {expected['small']:,} each: is A @ B formed "
             f"{HOW_AB_IS_FORMED}? " + ORDER_HINT, case, cause="forms_AB")
    if flops > expected["budget"]:
        fail(f"forward used {flops:,} FLOPs but base + (x @ A) @ B needs only {expected['budget']:,}: "
             f"is an in × out = {d}×{k} matrix formed from A and B? " + ORDER_HINT, case,
             cause="forms_AB")


def _large(case, expected, data):
    """A layer with in = out = 200,000 under a memory limit: A @ B cannot be formed at all."""
    if data.get("shapes_wrong") and "shape" not in data and "unmeasured" not in data:
        fail("lora_A or lora_B has the wrong shape, so this could not be measured: "
             "fix lora_linear_parameters first", case, cause="wrong_shape")
    judge_large(case, expected, data, stage="forward", result="output", hint=forward_hint,
                on=f"on a layer with in_features={case['in_features']:,} and out_features={case['out_features']:,}",
                formula="base(x) + (alpha/rank) · (x @ A) @ B")
