"""Checks for notebook 02: LoRALinear with nn.Parameter adapters, and the FLOPs of both orders."""
from __future__ import annotations

from lora_grader.checks import layer
from lora_grader.checks.core import Check, fail, matmul_flops, returned

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


def reference_flops(num_tokens: int, in_features: int, out_features: int, rank: int, materialize: bool) -> int:
    """FLOPs of the LoRA branch as FlopCounterMode counts them."""
    if materialize:  # x @ (A @ B)
        return matmul_flops(in_features, rank, out_features) + matmul_flops(num_tokens, in_features, out_features)
    return matmul_flops(num_tokens, in_features, rank) + matmul_flops(num_tokens, rank, out_features)


def _verdict_lora_flops(case, data):
    N, d, k, r, materialize = (case[key] for key in
                               ("num_tokens", "in_features", "out_features", "rank", "materialize"))
    call = f"lora_flops({N}, {d}, {k}, {r}, materialize={materialize})"
    if data["kind"] != "int":
        seen = data.get("value", data.get("repr"))
        hint = " (use int(...) or integer arithmetic)" if data["kind"] == "float" else ""
        fail(f"{call} returned a {data['kind']} ({seen}) but should return an int{hint}")
    expected = reference_flops(N, d, k, r, materialize)
    if data["value"] != expected:
        cause = {
            N * r * (d + k): "multiply-adds: FlopCounterMode counts 2 FLOPs for each",
            2 * N * r * (d + k): "the factored order; materialize=True forms A @ B first",
            2 * d * r * k + 2 * N * d * k: "the materialized order; materialize=False is x @ A, then @ B",
            2 * d * r * k: "only A @ B, without the product with x",
            d * r * k + N * d * k: "multiply-adds of the materialized order: count 2 FLOPs each",
        }.get(data["value"])
        why = f"that looks like {cause}" if cause else "count 2·m·n·p for each (m×n) @ (n×p) product"
        fail(f"{call} returned {data['value']:,} but FlopCounterMode counts {expected:,}: {why}")


def _flop_cases(materialize, shapes):
    return tuple(
        {"num_tokens": N, "in_features": d, "out_features": k, "rank": r, "materialize": materialize}
        for N, d, k, r in shapes
    )


CHECKS = layer.layer_checks(LAYOUT, layer.CASES, layer.HIDDEN_CASES, POINTS) + (
    Check("lora_flops_factored", "lora_flops", 2, _probe_lora_flops, _verdict_lora_flops,
          _flop_cases(False, [(10, 64, 32, 4), (1, 4096, 4096, 8)]),
          _flop_cases(False, [(3, 7, 5, 1), (512, 768, 3072, 16)])),
    Check("lora_flops_materialized", "lora_flops", 1, _probe_lora_flops, _verdict_lora_flops,
          _flop_cases(True, [(10, 64, 32, 4), (1, 4096, 4096, 8)]),
          _flop_cases(True, [(3, 7, 5, 1), (512, 768, 3072, 16)])),
)
