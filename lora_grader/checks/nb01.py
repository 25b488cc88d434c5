"""Checks for notebook 01: the elementwise attempt, and the LoRA term done right.

Attempt #1 is given code in the notebook; the grader computes what it does with plain tensor
math, so that nothing here can be imported as a LoRALinear."""
from __future__ import annotations

import math

import torch

from lora_grader.checks.core import (
    Check, ProbeError, base_linear, count_flops_and_largest, expect_tensor, fail, fit_scale, is_close,
    matmul_flops, max_error, numbers, returned, shape_str, tensor,
)
from lora_grader.checks.core import hidden_cases_of

MANUAL_POINTS = {"why_zero_init_hides_the_bug": 2}


# --- silent_failure_case ---------------------------------------------------------------------

SIZE_KEYS = ("in_features", "out_features", "rank")
MAX_ELEMENTS = 1_000_000


def _read_case_spec(spec) -> dict:
    if not isinstance(spec, dict):
        raise ProbeError(f"silent_failure_case() should return a dict, but returned a {type(spec).__name__}")
    missing = [key for key in SIZE_KEYS + ("x_shape",) if key not in spec]
    if missing:
        raise ProbeError(f"silent_failure_case() returned a dict without {', '.join(missing)}")
    sizes = {}
    for key in SIZE_KEYS:
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ProbeError(f"{key} should be a whole number from 1 to 4096, not {value!r}")
        sizes[key] = int(value)
    shape = spec["x_shape"]
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ProbeError(f"x_shape should be a tuple of positive whole numbers, like (5, 8), not {shape!r}")
    if torch.Size(shape).numel() > MAX_ELEMENTS:
        raise ProbeError(f"x_shape {tuple(shape)} is too big: keep x under {MAX_ELEMENTS:,} numbers")
    return {**sizes, "x_shape": [int(n) for n in shape]}


def _attempt_1(x, base, A, B, rank):
    """What Attempt #1's forward computes (rank=rank, alpha=1), the elementwise bug included."""
    return base(x) + (1 / rank) * (A @ B) * x


def _probe_silent_failure_case(namespace, case):
    spec = _read_case_spec(namespace["silent_failure_case"]())
    d, k, r = spec["in_features"], spec["out_features"], spec["rank"]
    A = tensor((d, r), case["seed"] + 5)  # Attempt #1 draws A from a Gaussian
    B = tensor((r, k), case["seed"] + 3)  # and B as if trained
    x = tensor(spec["x_shape"], case["seed"] + 4)
    try:
        with torch.no_grad():
            output, error = _attempt_1(x, base_linear(d, k, case["seed"]), A, B, r), ""
    except Exception as exception:
        output, error = None, f"{type(exception).__name__}: {exception}"
    return {"spec": spec, "output": output, "error": error}


def _verdict_silent_failure_case(case, data):
    try:  # the sizes came back from the sandbox: bound them again before building anything from them
        spec = _read_case_spec(data["spec"])
    except ProbeError as error:
        fail(str(error), case)
    d, k, r, x_shape = spec["in_features"], spec["out_features"], spec["rank"], spec["x_shape"]
    if x_shape[-1] != d:
        fail(f"x_shape {tuple(x_shape)} is not an input to a layer with in_features={d}: "
             "the last dimension of x must be in_features, or even the base layer fails")
    if data["error"]:
        fail(f"Attempt #1 raised an exception with these sizes ({data['error']}), so the bug is loud "
             "here. Find sizes where `(A @ B) * x` broadcasts: which shapes can `*` line up "
             f"against (in_features, out_features) = ({d}, {k})?")
    seed = case["seed"]
    base = base_linear(d, k, seed)
    x = tensor(x_shape, seed + 4).double()
    A, B = tensor((d, r), seed + 5).double(), tensor((r, k), seed + 3).double()
    expected = x @ base.weight.double().T + base.bias.double() + (1 / r) * (x @ A) @ B
    seen = data["output"]
    if seen.shape == expected.shape and is_close(seen, expected):
        fail(f"Attempt #1 gave the right answer for in_features={d}, out_features={k}, "
             f"x_shape={tuple(x_shape)}: that is not a failure. Look for sizes where it runs "
             "but computes something else.")


# --- lora_update ---------------------------------------------------------------------------

def _inputs(case):
    d, k, r, seed = case["in_features"], case["out_features"], case["rank"], case["seed"]
    x = tensor(case["x_shape"], seed)
    return x, tensor((d, r), seed + 1), tensor((r, k), seed + 2)


def _expected_update(case) -> torch.Tensor:
    x, A, B = (t.double() for t in _inputs(case))
    return case["scaling"] * ((x @ A) @ B)


def _probe_lora_update(namespace, case):
    x, A, B = _inputs(case)
    return returned(namespace["lora_update"](x, A, B, case["scaling"]))


def _shape_hint(seen, case) -> str:
    x_shape = tuple(case["x_shape"])
    d, k = case["in_features"], case["out_features"]
    if tuple(seen) == x_shape:
        return "the output has x's shape: did you multiply elementwise (`*`) instead of with `@`?"
    if tuple(seen) in ((d, k), (k, d)):
        return "the output is a weight-sized matrix: x was never multiplied in (or only elementwise)."
    if tuple(seen[-1:]) == (case["rank"],):
        return "the last dimension is the rank: the result of x @ A still needs `@ B`."
    if len(seen) != len(x_shape):
        return "the leading dimensions of x were lost: use `@`, which keeps them, rather than reshaping."
    return "check the order of the matrix products: x (…, in) @ A (in, r) @ B (r, out)."


def _explain_update_error(case, outcome) -> str | None:
    message = outcome.get("message", "")
    if "must match the size" in message or "broadcast" in message:
        return "`*` is elementwise and needs broadcastable shapes; a linear map needs `@`."
    if "must be a matrix" in message or "2D" in message:
        return "torch.mm only takes 2-D matrices; `@` (torch.matmul) keeps any leading dimensions."
    if "object is not callable" in message:
        return "lora_A and lora_B are tensors, not layers: multiply with `@`, (x @ lora_A) @ lora_B."
    if "cannot be multiplied" in message or "mat1 and mat2" in message:
        return "the inner sizes must agree: (x @ A) is (…, r), and (…, r) @ B (r, out) gives (…, out)."
    return None


def _verdict_lora_update_shape(case, data):
    seen = expect_tensor(data, "lora_update's result", case)
    expected = (*case["x_shape"][:-1], case["out_features"])
    if tuple(seen.shape) != expected:
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(expected)}: "
             + _shape_hint(seen.shape, case), case)


def _verdict_lora_update_values(case, data):
    seen = expect_tensor(data, "lora_update's result", case)
    expected = _expected_update(case)
    if seen.shape != expected.shape:
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(expected.shape)}: "
             "fix the shape first (see lora_update_shape)", case)
    if is_close(seen, expected):
        return
    message = (f"values differ from scaling · (x @ A) @ B by up to {max_error(seen, expected):.3g}: "
               f"expected {numbers(expected)}, got {numbers(seen)}")
    factor = fit_scale(seen, expected)
    if factor is not None:
        s = case["scaling"]
        if abs(factor * s - 1) < 1e-4:
            message += f". Your result is 1/scaling = {1 / s:g} times the expected one: was scaling never applied?"
        elif abs(factor - s) < 1e-4:
            message += f". Your result is scaling = {s:g} times too big: was scaling applied twice?"
        else:
            message += f". Your result is {factor:.4g} times the expected one: check the scaling."
    fail(message, case)


def _probe_lora_update_flops(namespace, case):
    x, A, B = _inputs(case)
    update, results = namespace["lora_update"], []
    flops, largest = count_flops_and_largest(lambda: results.append(update(x, A, B, case["scaling"])))
    return {"flops": flops, "largest": largest, "result": returned(results[0])}


def _verdict_lora_update_flops(case, data):
    seen = expect_tensor(data["result"], "lora_update's result", case)
    if not is_close(seen, _expected_update(case)):
        fail("the FLOP budget only counts for a correct result, and this one is wrong: "
             "fix lora_update_shape and lora_update_values first", case)
    d, k, r = case["in_features"], case["out_features"], case["rank"]
    tokens = math.prod(case["x_shape"][:-1])
    # The cases make an in × out matrix far larger than anything x @ A, then @ B allocates.
    if int(data["largest"]) >= d * k // 4:
        fail(f"lora_update built a tensor of {int(data['largest']):,} numbers, as large as an in × out "
             f"= {d}×{k} matrix, while x, x @ A and the result hold at most {tokens * max(d, k):,} each: "
             "did you form A @ B (with @, einsum, torch.outer, or broadcasting and sum)? "
             "Multiply x by A, then by B.", case)
    factored = matmul_flops(tokens, d, r) + matmul_flops(tokens, r, k)
    if data["flops"] > factored:
        fail(f"lora_update used {data['flops']:,} FLOPs, but (x @ A) @ B needs only {factored:,}: "
             f"did you form A @ B, a {d}×{k} matrix, first? Multiply x by A, then by B.", case)


def _cases(shapes, seeds, scalings):
    return tuple(
        {"in_features": d, "out_features": k, "rank": r, "scaling": s, "x_shape": x_shape, "seed": seed}
        for (d, k, r, x_shape), seed, s in zip(shapes, seeds, scalings)
    )


UPDATE_CASES = _cases(
    [(12, 20, 4, (5, 12)), (16, 6, 2, (2, 3, 16)), (8, 24, 3, (2, 2, 3, 8))],
    seeds=(0, 10, 20), scalings=(0.375, 2.5, 1.75),
)
# An in × out matrix is a hundred times larger than x, x @ A or the result: however A @ B is
# formed, its size shows. Both kinds of input, (tokens, in) and (batch, seq, in), are visible.
FLOP_CASES = _cases([(512, 384, 2, (3, 512)), (384, 512, 2, (2, 2, 384))], seeds=(60, 65), scalings=(0.5, 1.5))
HIDDEN = hidden_cases_of("nb01", _cases)
UPDATE_HIDDEN = HIDDEN["update"]
FLOP_HIDDEN = HIDDEN["flops"]

CHECKS = (
    Check("silent_failure_case", "silent_failure_case", 2,
          _probe_silent_failure_case, _verdict_silent_failure_case,
          cases=({"seed": 0},), hidden_cases=HIDDEN["silent_failure_case"]),
    Check("lora_update_shape", "lora_update", 1, _probe_lora_update, _verdict_lora_update_shape,
          UPDATE_CASES, UPDATE_HIDDEN, _explain_update_error),
    Check("lora_update_values", "lora_update", 2, _probe_lora_update, _verdict_lora_update_values,
          UPDATE_CASES, UPDATE_HIDDEN, _explain_update_error),
    Check("lora_update_never_forms_AB", "lora_update", 1,
          _probe_lora_update_flops, _verdict_lora_update_flops, FLOP_CASES, FLOP_HIDDEN,
          _explain_update_error),
)
