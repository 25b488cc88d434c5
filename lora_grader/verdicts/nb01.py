"""Verdicts for notebook 01: silent_failure_case and lora_update."""
from __future__ import annotations

from lora_grader.checks.core import ProbeError
from lora_grader.checks.nb01 import read_case_spec
from lora_grader.verdicts.core import (
    HOW_AB_IS_FORMED, ORDER_HINT, expect_tensor, fail, fit_scale, is_close, max_error, numbers, shape_str,
)
from lora_grader.verdicts.expected import NotShipped, expected_for
from lora_grader.verdicts.physical import judge_large

# What a wrong shape or scale most likely means, by the name answers.nb01 gives it.
CAUSES = {
    "elementwise": "the output has x's shape: did you multiply elementwise (`*`) instead of with `@`?",
    "weight_sized": "the output is a weight-sized matrix: x was never multiplied in (or only elementwise).",
    "no_scaling": "1/scaling = {factor:.4g} times the expected one: was scaling never applied?",
    "scaling_twice": "scaling = {factor:.4g} times too big: was scaling applied twice?",
}


# --- silent_failure_case ---------------------------------------------------------------------

def silent_failure_case(case, expected, data):
    try:  # the sizes came back from the sandbox: bound them again before building anything from them
        spec = read_case_spec(data["spec"])
    except ProbeError as error:
        fail(str(error), cause="bad_sizes")
    d, k, x_shape = spec["in_features"], spec["out_features"], spec["x_shape"]
    if x_shape[-1] != d:
        fail(f"x_shape {tuple(x_shape)} is not an input to a layer with in_features={d}: "
             "the last dimension of x must be in_features, or even the base layer fails", cause="x_not_an_input")
    if data["error"]:
        fail(f"Attempt #1 raised an exception with these sizes ({data['error']}), so the bug is loud "
             "here. Find sizes where `(A @ B) * x` broadcasts: which shapes can `*` line up "
             f"against (in_features, out_features) = ({d}, {k})?", cause="attempt_raises")
    right = _correct_output(case, spec)
    if right is None:
        print("silent_failure_case: Attempt #1 runs with these sizes; whether it is wrong there is "
              "checked by your instructor's grader")
        return
    seen = data["output"]
    if seen.shape == right.shape and is_close(seen, right):
        fail(f"Attempt #1 gave the right answer for in_features={d}, out_features={k}, "
             f"x_shape={tuple(x_shape)}: that is not a failure. Look for sizes where it runs "
             "but computes something else.", cause="attempt_is_right")


def _correct_output(case, spec):
    """A correct layer's output on the sizes the student chose: expected values for the case with
    those sizes added. None in a student's install, which holds no code that computes it."""
    from lora_grader.checks.nb01 import CHECKS

    check = next(check for check in CHECKS if check.name == "silent_failure_case")
    try:
        return expected_for(check, {"seed": case["seed"], **spec})["output"]
    except NotShipped:
        return None


# --- lora_update ---------------------------------------------------------------------------

def explain_update(case, outcome) -> str | None:
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


def _shape_hint(seen, case, expected) -> tuple[str, str]:
    seen = list(seen)
    for shape, cause in expected["wrong_shapes"]:
        if seen == list(shape):
            return CAUSES[cause], cause
    if seen[-1:] == [case["rank"]]:
        return "the last dimension is the rank: the result of x @ A still needs `@ B`.", "forgot_B"
    if len(seen) != len(case["x_shape"]):
        return ("the leading dimensions of x were lost: look for a reshape or a flatten that drops them.",
                "lost_leading_dimensions")
    return "check the order of the matrix products: x (…, in) @ A (in, r) @ B (r, out).", "wrong_shape"


def update_shape(case, expected, data):
    seen = expect_tensor(data, "lora_update's result", case)
    if list(seen.shape) != list(expected["shape"]):
        hint, cause = _shape_hint(seen.shape, case, expected)
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(expected['shape'])}: {hint}", case,
             cause=cause)


def update_values(case, expected, data):
    seen = expect_tensor(data, "lora_update's result", case)
    output = expected["output"]
    if seen.shape != output.shape:
        fail(f"output shape {shape_str(seen.shape)} but expected {shape_str(output.shape)}: "
             "fix the shape first (see lora_update_shape)", case, cause="wrong_shape")
    if is_close(seen, output):
        return
    message = (f"values differ from scaling · (x @ A) @ B by up to {max_error(seen, output):.3g}: "
               f"expected {numbers(output)}, got {numbers(seen)}")
    factor, cause = fit_scale(seen, output), "wrong_values"
    if factor is not None:
        known = [key for value, key in expected["wrong_factors"] if abs(factor - value) < 1e-4 * max(1.0, abs(value))]
        if known:
            cause = known[0]
            message += ". Your result is " + CAUSES[cause].format(factor=factor)
        else:
            cause = "wrong_scale"
            message += f". Your result is {factor:.4g} times the expected one: check the scaling."
    fail(message, case, cause=cause)




def update_flops(case, expected, data):
    if "memory" in case:
        return _large(case, expected, data)
    seen = expect_tensor(data["result"], "lora_update's result", case)
    if not is_close(seen, expected["output"]):
        fail("the FLOP budget only counts for a correct result, and this one is wrong: "
             "fix lora_update_shape and lora_update_values first", case, cause="wrong_output")
    d, k = case["in_features"], case["out_features"]
    # The cases make an in × out matrix far larger than anything x @ A, then @ B allocates.
    if int(data["largest"]) >= expected["matrix"] // 4:
        fail(f"lora_update built a tensor of {int(data['largest']):,} numbers, as large as an in × out "
             f"= {d}×{k} matrix, while x, x @ A and the result hold at most {expected['small']:,} each: "
             f"did you form A @ B {HOW_AB_IS_FORMED}? " + ORDER_HINT, case, cause="forms_AB")
    if data["flops"] > expected["budget"]:
        fail(f"lora_update used {data['flops']:,} FLOPs, but (x @ A) @ B needs only {expected['budget']:,}: "
             f"did you form A @ B, a {d}×{k} matrix, first? " + ORDER_HINT, case, cause="forms_AB")


def _large(case, expected, data):
    """in = out = 200,000 under a memory limit: A @ B cannot be formed at all."""
    judge_large(case, expected, data, stage="lora_update", result="result", formula="scaling · (x @ A) @ B",
                on=f"with in_features={case['in_features']:,} and out_features={case['out_features']:,}")
