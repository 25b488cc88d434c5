"""Checks for notebook 02: LoRALinear with nn.Parameter adapters, and the FLOPs of both orders.

Inputs and probes only (the sandbox imports this); the verdicts are in lora_grader.verdicts.nb02
and the expected values in lora_grader.answers.nb02.
"""
from __future__ import annotations

from lora_grader.checks import layer
from lora_grader.checks.core import Check, hidden_cases_of, returned

MANUAL_POINTS: dict[str, int] = {}

LAYOUT = layer.Layout(as_linear=False)

POINTS = {
    "lora_linear_parameters": 1, "lora_linear_init": 1, "lora_linear_output_shape": 1,
    "lora_linear_identity_at_init": 1, "lora_linear_values": 2, "lora_linear_scaling": 1,
    "lora_linear_base_frozen": 1, "lora_linear_trainable": 1, "lora_linear_flops": 1,
}


def _probe_lora_flops(namespace, case):
    return returned(namespace["lora_flops"](
        case["num_tokens"], case["in_features"], case["out_features"], case["rank"],
        materialize=case["materialize"],
    ))


def _flop_cases(materialize, shapes):
    return tuple(
        {"num_tokens": N, "in_features": d, "out_features": k, "rank": r, "materialize": materialize}
        for N, d, k, r in shapes
    )


HIDDEN = hidden_cases_of("nb02", _flop_cases)
CHECKS = layer.layer_checks(LAYOUT, layer.CASES, layer.HIDDEN_CASES, POINTS) + (
    Check("lora_flops_factored", "lora_flops", 2, _probe_lora_flops, "lora_grader.verdicts.nb02:lora_flops",
          _flop_cases(False, [(10, 64, 32, 4), (1, 4096, 4096, 8)]), HIDDEN["factored"],
          expect="lora_grader.answers.nb02:lora_flops"),
    Check("lora_flops_materialized", "lora_flops", 1, _probe_lora_flops, "lora_grader.verdicts.nb02:lora_flops",
          _flop_cases(True, [(10, 64, 32, 4), (1, 4096, 4096, 8)]), HIDDEN["materialized"],
          expect="lora_grader.answers.nb02:lora_flops"),
)
