"""Expected values for notebook 03's own checks."""
from __future__ import annotations

import torch

from lora_grader.checks.core import tensor
from lora_grader.checks.nb03 import build_module
from lora_grader.verdicts.nb03 import BASE_KEYS, digest


def count_trainable_parameters(case) -> dict:
    """The number of trainable numbers in the case's module, each parameter tensor counted once,
    and the counts the usual mistakes give, each with the name of its cause (verdicts.nb03)."""
    module = build_module(case["module"])
    unique = list(module.parameters())
    every = [p for _, p in module.named_parameters(remove_duplicate=False)]
    trainable = [p for p in unique if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    wrong = [
        [sum(p.numel() for p in unique), "counted_frozen"],
        [sum(p.numel() for p in unique if not p.requires_grad), "only_frozen"],
        [sum(p.numel() for p in every if p.requires_grad), "shared_twice"],
        [sum(p.numel() for p in every), "frozen_and_shared_twice"],
        [len(trainable), "counted_tensors"],
        [count + sum(b.numel() for b in module.buffers()), "counted_buffers"],
    ]
    return {"count": count, "wrong": [[value, key] for value, key in wrong if value != count]}


def _kind(grad: torch.Tensor | None) -> str:
    return "none" if grad is None else "zero" if grad.count_nonzero().item() == 0 else "nonzero"


def true_gradient_kinds(case) -> dict[str, str]:
    """'none', 'zero' or 'nonzero' for each parameter of a fresh layer after one backward pass,
    from the chain rule in float64: out = base(x) + s · (x Aᵀ) Bᵀ with a random A (r, in), B = 0,
    and an upstream gradient g. The frozen base gets no .grad at all."""
    d, k, r, seed = case["in_features"], case["out_features"], case["rank"], case["seed"]
    x = tensor(case["x_shape"], seed + 4).double().reshape(-1, d)
    g = tensor((*case["x_shape"][:-1], k), seed + 7).double().reshape(-1, k)
    A, B = tensor((r, d), seed + 5).double(), torch.zeros(k, r, dtype=torch.float64)
    s = case["alpha"] / r
    grad_B = s * g.T @ (x @ A.T)  # (out, r)
    grad_A = s * (g @ B).T @ x  # (r, in): every path to A passes through B
    return {**{key: _kind(None) for key in BASE_KEYS}, "lora_A.weight": _kind(grad_A), "lora_B.weight": _kind(grad_B)}


def gradient_prediction(case) -> dict:
    """A digest of each parameter's true answer: the student wheel ships these, not the words."""
    return {"kinds": {key: digest(case, key, word) for key, word in true_gradient_kinds(case).items()}}
