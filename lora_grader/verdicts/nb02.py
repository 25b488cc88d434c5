"""Verdicts for notebook 02's own checks (its LoRALinear checks are in verdicts/layer.py)."""
from __future__ import annotations

from lora_grader.verdicts.core import fail

# What a wrong count most likely means, by the name answers.nb02 gives each wrong value.
CAUSES = {
    "multiply_adds": "multiply-adds: FlopCounterMode counts 2 FLOPs for each",
    "factored_order": "the factored order; materialize=True forms A @ B first",
    "materialized_order": "the materialized order; materialize=False is x @ A, then @ B",
    "product_only": "only A @ B, without the product with x",
    "without_forming": "only x @ (A @ B): forming A @ B, an (in, rank) @ (rank, out) product, costs FLOPs too",
    "materialized_multiply_adds": "multiply-adds of the materialized order: count 2 FLOPs each",
}


def lora_flops(case, expected, data):
    N, d, k, r, materialize = (case[key] for key in
                               ("num_tokens", "in_features", "out_features", "rank", "materialize"))
    call = f"lora_flops({N}, {d}, {k}, {r}, materialize={materialize})"
    if data["kind"] != "int":
        seen = data.get("value", data.get("repr"))
        hint = " (a FLOP count is a whole number: where does a float come in?)" if data["kind"] == "float" else ""
        fail(f"{call} returned a {data['kind']} ({seen}) but should return an int{hint}", cause="not_int")
    if data["value"] != expected["flops"]:
        key = dict(expected["wrong"]).get(data["value"])
        why = f"that looks like {CAUSES[key]}" if key in CAUSES else "count 2·m·n·p for each (m×n) @ (n×p) product"
        fail(f"{call} returned {data['value']:,} but FlopCounterMode counts {expected['flops']:,}: {why}",
             cause=key if key in CAUSES else "wrong_count")
