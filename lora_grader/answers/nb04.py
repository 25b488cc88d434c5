"""Expected values for notebook 04's checks: the merged layer in float64, from the case alone."""
from __future__ import annotations

import torch

from lora_grader.checks.core import base_linear
from lora_grader.checks.nb04 import adapter_weights, layer_input, sizes


def reference(case) -> dict:
    """W, b, the update delta = scaling · B @ A (out, in) and what follows from them, all float64;
    with the updates (tensors) and the multiples of delta (factors) that common mistakes leave,
    each with the name of its cause (verdicts.nb04)."""
    d, k, r = sizes(case)
    alpha = case["alpha"]
    s = alpha / r
    base = base_linear(d, k, case["seed"])
    W, b = base.weight.double().detach(), base.bias.double().detach()
    A, B = (t.double() for t in adapter_weights(case))
    delta = s * (B @ A)
    x = layer_input(case).double()
    wrong_updates = [["unchanged", torch.zeros_like(delta)]]
    if d == k:  # a transposed update only fits a square weight
        wrong_updates.append(["transposed", delta.T.contiguous()])
    wrong_updates.append(["transposed_reshaped", delta.T.reshape(delta.shape)])
    # seen update = factor · delta; a wrong scaling c in place of s is the factor c / s
    wrong_factors = [[-1.0, "subtracted"], [2.0, "added_twice"]] + [
        [c / s, name] for c, name in ((1.0, "no_scaling"), (alpha, "scaling_alpha"), (r / alpha, "scaling_inverted"),
                                      (1 / r, "scaling_without_alpha"), (s * s, "scaling_twice"))
    ]
    return {
        "scaling": s, "W": W, "b": b, "delta": delta,
        "merged_weight": W + delta, "twice_weight": W + 2 * delta,
        "out": x @ (W + delta).T + b, "base_out": x @ W.T + b, "term": x @ delta.T,
        "wrong_updates": wrong_updates, "wrong_factors": wrong_factors,
        # what merge then unmerge leaves, as W + factor · delta
        "unmerge_factors": [[1.0, "not_unmerged"], [1 - 1 / s, "unmerge_unscaled"], [2.0, "unmerge_added"]],
    }
