"""Expected values for notebook 02's own checks."""
from __future__ import annotations

from lora_grader.answers.shared import matmul_flops


def lora_flops(case) -> dict:
    """FLOPs of the case's LoRA branch as FlopCounterMode counts them, and the counts that common
    mistakes give, each with the name of its cause (verdicts.nb02.CAUSES)."""
    N, d, k, r = (case[key] for key in ("num_tokens", "in_features", "out_features", "rank"))
    if case["materialize"]:  # x @ (A @ B)
        flops = matmul_flops(d, r, k) + matmul_flops(N, d, k)
    else:
        flops = matmul_flops(N, d, r) + matmul_flops(N, r, k)
    wrong = [
        [N * r * (d + k), "multiply_adds"],
        [2 * N * r * (d + k), "factored_order"],
        [2 * d * r * k + 2 * N * d * k, "materialized_order"],
        [2 * d * r * k, "product_only"],
        [2 * N * d * k, "without_forming"],
        [d * r * k + N * d * k, "materialized_multiply_adds"],
    ]
    return {"flops": flops, "wrong": wrong}
