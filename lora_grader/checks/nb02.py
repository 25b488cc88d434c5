"""Checks for notebook 02: LoRALinear with nn.Parameter adapters, and the FLOPs of both orders."""
from __future__ import annotations

from lora_grader.checks import layer
from lora_grader.checks.core import Check, fail, matmul_flops, returned
from lora_grader.checks.core import hidden_cases_of

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


def expected_flops(case) -> int:
    """FLOPs of the case's LoRA branch as FlopCounterMode counts them (read from the case, so
    that nothing here can stand in for the student's lora_flops)."""
    N, d, k, r = (case[key] for key in ("num_tokens", "in_features", "out_features", "rank"))
    if case["materialize"]:  # x @ (A @ B)
        return matmul_flops(d, r, k) + matmul_flops(N, d, k)
    return matmul_flops(N, d, r) + matmul_flops(N, r, k)


def _verdict_lora_flops(case, data):
    N, d, k, r, materialize = (case[key] for key in
                               ("num_tokens", "in_features", "out_features", "rank", "materialize"))
    call = f"lora_flops({N}, {d}, {k}, {r}, materialize={materialize})"
    if data["kind"] != "int":
        seen = data.get("value", data.get("repr"))
        hint = " (use int(...) or integer arithmetic)" if data["kind"] == "float" else ""
        fail(f"{call} returned a {data['kind']} ({seen}) but should return an int{hint}")
    expected = expected_flops(case)
    if data["value"] != expected:
        cause = {
            N * r * (d + k): "multiply-adds: FlopCounterMode counts 2 FLOPs for each",
            2 * N * r * (d + k): "the factored order; materialize=True forms A @ B first",
            2 * d * r * k + 2 * N * d * k: "the materialized order; materialize=False is x @ A, then @ B",
            2 * d * r * k: "only A @ B, without the product with x",
            2 * N * d * k: "only x @ (A @ B): forming A @ B, an (in, rank) @ (rank, out) product, costs FLOPs too",
            d * r * k + N * d * k: "multiply-adds of the materialized order: count 2 FLOPs each",
        }.get(data["value"])
        why = f"that looks like {cause}" if cause else "count 2·m·n·p for each (m×n) @ (n×p) product"
        fail(f"{call} returned {data['value']:,} but FlopCounterMode counts {expected:,}: {why}")


def _flop_cases(materialize, shapes):
    return tuple(
        {"num_tokens": N, "in_features": d, "out_features": k, "rank": r, "materialize": materialize}
        for N, d, k, r in shapes
    )


HIDDEN = hidden_cases_of("nb02", _flop_cases)
CHECKS = layer.layer_checks(LAYOUT, layer.CASES, layer.HIDDEN_CASES, POINTS) + (
    Check("lora_flops_factored", "lora_flops", 2, _probe_lora_flops, _verdict_lora_flops,
          _flop_cases(False, [(10, 64, 32, 4), (1, 4096, 4096, 8)]), HIDDEN["factored"]),
    Check("lora_flops_materialized", "lora_flops", 1, _probe_lora_flops, _verdict_lora_flops,
          _flop_cases(True, [(10, 64, 32, 4), (1, 4096, 4096, 8)]), HIDDEN["materialized"]),
)
