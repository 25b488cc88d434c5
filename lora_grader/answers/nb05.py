"""Expected values for notebook 05's checks, from the case alone: the models' weights as the probes
build them (lora_grader.checks.nb05_models), outputs in float64, names, counts, and the values that
common mistakes give, each with the name of its cause (verdicts.nb05 and nb05_checkpoint)."""
from __future__ import annotations

import torch

from lora_grader.checks.nb05_models import (
    COUNT_MODULES, adapter_weights, base_linears, checkpoint, linear_names, linear_shapes, model_input, trained_head,
)


def _base(case) -> dict:
    """{linear name: (W, b)} of the pretrained model, float32 as the probes build it."""
    return {name: (layer.weight.detach(), layer.bias.detach()) for name, layer in base_linears(case).items()}


def _forward64(case, weights: dict) -> torch.Tensor:
    """The MLP's output in float64 from {linear name: (W, b)}."""
    h = model_input(case).double()
    names = linear_names(case)
    for i, name in enumerate(names):
        W, b = weights[name]
        h = h @ W.double().T + b.double()
        if i < len(names) - 1:
            h = h.clamp_min(0)
    return h


def _merged64(case) -> dict:
    """{name: (W + scaling · B @ A, b)} in float64 for the adapted model's known adapters."""
    weights = {}
    for name, (W, b) in _base(case).items():
        W, b = W.double(), b.double()
        if name in case["targets"]:
            A, B = (t.double() for t in adapter_weights(case, name))
            W = W + case["alpha"] / case["rank"] * (B @ A)
        weights[name] = (W, b)
    return weights


def _trainable_names(case) -> list[str]:
    """state_dict names of every parameter that trains after injection, sorted."""
    names = [f"{t}.lora_{ab}.weight" for t in case["targets"] for ab in "AB"]
    names += [f"{m}.{p}" for m in case["trainable"] for p in ("weight", "bias")]
    return sorted(names)


def _frozen(case) -> dict:
    """{state_dict name: pretrained value} of every frozen parameter of the adapted model."""
    frozen = {}
    for name, (W, b) in _base(case).items():
        if name in case["trainable"]:
            continue
        prefix = f"{name}.base_layer" if name in case["targets"] else name
        frozen[f"{prefix}.weight"], frozen[f"{prefix}.bias"] = W, b
    return frozen


def _adapted_state(case) -> dict:
    """The state of the model the checkpoint and merge probes build (checks.nb05_models.adapted_model)."""
    values = {}
    for name, (W, b) in _base(case).items():
        prefix = f"{name}.base_layer" if name in case["targets"] else name
        values[f"{prefix}.weight"], values[f"{prefix}.bias"] = W, b
        if name in case["targets"]:
            values[f"{name}.lora_A.weight"], values[f"{name}.lora_B.weight"] = adapter_weights(case, name)
    return values


def _counts(case) -> tuple[int, int]:
    shapes = linear_shapes(case)
    base = sum((d + 1) * k for d, k in shapes.values())
    lora = sum(case["rank"] * sum(shapes[t]) for t in case["targets"])
    full = sum((d + 1) * k for name, (d, k) in shapes.items() if name in case["trainable"])
    return lora + full, base + lora


def add_lora(case) -> dict:
    base = _base(case)
    return {
        "rank": case["rank"], "scaling": case["alpha"] / case["rank"],
        "base": {name: [W, b] for name, (W, b) in base.items()},
        "out_base": _forward64(case, base),
        "out_adapted": _forward64(case, _merged64(case)),
        "trainable": _trainable_names(case),
        "frozen": sorted(_frozen(case)),
        "count": _counts(case)[0],
    }


def count_parameters(case) -> dict:
    """(trainable, total) and the pairs common mistakes give."""
    if case["model"] in COUNT_MODULES:
        with torch.random.fork_rng():
            module = COUNT_MODULES[case["model"]]()
        unique = list(module.parameters())
        every = [p for _, p in module.named_parameters(remove_duplicate=False)]
        trainable, total = sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
        twice = [sum(p.numel() for p in every if p.requires_grad), sum(p.numel() for p in every)]
    else:
        trainable, total = _counts(case)
        twice = [trainable, total]
    wrong = [[[total, trainable], "swapped"], [twice, "shared_twice"]]
    return {"trainable": trainable, "total": total,
            "wrong": [[pair, cause] for pair, cause in wrong if pair != [trainable, total]]}


def adapter_state_dict(case) -> dict:
    values = {}
    for t in case["targets"]:
        values[f"{t}.lora_A.weight"], values[f"{t}.lora_B.weight"] = adapter_weights(case, t)
    for m in case["trainable"]:
        values[f"{m}.weight"], values[f"{m}.bias"] = trained_head(case, m)
    return {"trainable": _trainable_names(case), "frozen": sorted(_frozen(case)), "values": values}


def load_adapter(case) -> dict:
    """The state after loading the probe's checkpoint, the state before it (which a refused
    checkpoint must leave as it was), and what trains."""
    before = _adapted_state(case)
    return {"before": before, "after": {**before, **checkpoint(case)}, "trainable": _trainable_names(case)}


def merge_all(case) -> dict:
    shapes = {}
    for name, (d, k) in linear_shapes(case).items():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = [k, d], [k]
    weights = _merged64(case)
    return {
        "shapes": shapes,
        "weights": {name: [W, b.float()] for name, (W, b) in weights.items()},
        "out": _forward64(case, weights),
        "adapted_state": _adapted_state(case),
    }


def paper_count(case) -> dict:
    L, d, ranks = case["num_layers"], case["d_model"], case["ranks"]
    count = L * sum(2 * d * r for r in ranks.values())
    wrong = [[count // 2, "one_factor"], [count // L, "one_layer"],
             [L * d * d * sum(1 for r in ranks.values() if r), "full_matrices"]]
    wrong += [[L * len(ranks) * 2 * d * r, "one_rank"] for r in sorted(set(ranks.values()))]
    return {"count": count, "wrong": [[value, cause] for value, cause in wrong if value != count]}


def paper_millions(case) -> dict:
    n = case["count"]
    tenths = n // 100_000
    text = f"{tenths // 10}.{tenths % 10}M"
    wrong = [[f"{n / 1e6:.1f}M", "rounded"], [f"{n / 1e6:.2f}M", "two_decimals"], [f"{n / 1e6}M", "unformatted"]]
    return {"text": text, "wrong": [[value, cause] for value, cause in wrong if value != text]}
