"""Expected values for notebook 01's checks."""
from __future__ import annotations

import math

from lora_grader.answers.shared import matmul_flops
from lora_grader.checks import physical
from lora_grader.checks.nb01 import SIZE_KEYS, attempt_inputs, update_inputs


def silent_failure_case(case) -> dict:
    """What a correct LoRA layer (rank = rank, alpha = 1) returns on the inputs Attempt #1 ran on.
    It depends on the sizes the student chose: the check's own case ({"seed": ...}) expects
    nothing in advance, and its verdict asks again for the case with those sizes added."""
    if "x_shape" not in case:
        return {}
    spec = {key: case[key] for key in SIZE_KEYS + ("x_shape",)}
    base, x, A, B = attempt_inputs(case["seed"], spec)
    x, A, B = x.double(), A.double(), B.double()
    return {"output": x @ base.weight.double().T + base.bias.double() + (1 / spec["rank"]) * (x @ A) @ B}


def update(case) -> dict:
    """scaling · (x @ A) @ B, its shape, and the shapes and scale factors that common mistakes
    give, each with the name of its cause (verdicts.nb01)."""
    x, A, B = (t.double() for t in update_inputs(case))
    d, k, s = case["in_features"], case["out_features"], case["scaling"]
    return {
        "output": s * ((x @ A) @ B),
        "shape": [*case["x_shape"][:-1], k],
        "wrong_shapes": [[list(case["x_shape"]), "elementwise"], [[d, k], "weight_sized"], [[k, d], "weight_sized"]],
        "wrong_factors": [[1 / s, "no_scaling"], [s, "scaling_twice"]],
    }


def update_flops(case) -> dict:
    """The result, and what computing it as (x @ A) @ B costs: its FLOPs, and its largest tensor,
    at most `small` numbers while an in × out matrix holds `matrix`. For a large case, what the
    probe samples of the result (physical.sample): its shape, some columns, every row's sum."""
    d, k, r = case["in_features"], case["out_features"], case["rank"]
    tokens = math.prod(case["x_shape"][:-1])
    sizes = {"matrix": d * k, "matrix_bytes": 4 * d * k, "small": tokens * max(d, k)}
    x, A, B = (t.double() for t in update_inputs(case))
    xA = case["scaling"] * (x @ A)
    if "memory" in case:
        columns = physical.sampled_columns(case)
        return {**sizes, "shape": [*case["x_shape"][:-1], k], "columns": xA @ B[:, columns],
                "row_sums": xA @ B.sum(-1)}
    return {**sizes, "output": xA @ B, "budget": matmul_flops(tokens, d, r) + matmul_flops(tokens, r, k)}
