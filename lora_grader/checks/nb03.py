"""Checks for notebook 03: LoRALinear with nn.Linear adapters, counting trainable parameters,
and predicting which gradients one backward pass produces at initialisation.

Inputs and probes only (the sandbox imports this); the verdicts are in lora_grader.verdicts.nb03
and the expected values in lora_grader.answers.nb03.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from lora_grader.checks import layer
from lora_grader.checks.core import Check, hidden_cases_of, returned

MANUAL_POINTS = {"why_lora_A_gets_zero_gradient": 2}

LAYOUT = layer.Layout(as_linear=True)

POINTS = {
    "lora_linear_parameters": 1, "lora_linear_init": 2, "lora_linear_output_shape": 1,
    "lora_linear_identity_at_init": 1, "lora_linear_values": 2, "lora_linear_scaling": 1,
    "lora_linear_base_frozen": 2, "lora_linear_trainable": 2, "lora_linear_flops": 1,
}

# Square layers hide transposes, and alpha == rank (or alpha == 1) makes wrong scalings look
# alike or right: neither appears here.
LAYER_CASES = layer.layer_cases([(12, 20, 4, 6, (5, 12)), (16, 6, 2, 3, (2, 3, 16))], seeds=(300, 310))


# --- count_trainable_parameters: the modules it is called on ----------------------------------

class _FrozenBaseWithAdapter(nn.Module):
    def __init__(self, d=16, k=9, r=2):
        super().__init__()
        self.base = nn.Linear(d, k).requires_grad_(False)
        self.down = nn.Linear(d, r, bias=False)
        self.up = nn.Linear(r, k, bias=False)


class _TiedEmbedding(nn.Module):
    """An embedding and an output head sharing one weight, as language models tie them."""

    def __init__(self, vocab: int, width: int, freeze_shared: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)
        self.head.weight = self.embed.weight
        if freeze_shared:
            self.embed.weight.requires_grad_(False)


class _FrozenGate(nn.Module):
    def __init__(self, width=4, out=2):
        super().__init__()
        self.gate = nn.Parameter(torch.ones(width), requires_grad=False)
        self.proj = nn.Linear(width, out)


def _partly_frozen_sequential(d=10, h=6, k=3):
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))
    model[0].requires_grad_(False)
    return model


def _bias_frozen_linear(d=5, k=3):
    linear = nn.Linear(d, k)
    linear.bias.requires_grad_(False)
    return linear


def _one_linear_twice(width=6):
    linear = nn.Linear(width, width)
    return nn.Sequential(linear, nn.Tanh(), linear)


# The case names the module in the words of the feedback; the probe (and lora_grader.answers)
# build it from this. The visible cases hold every kind of module the notebook speaks of (frozen
# parts, no parameters, buffers, a frozen Parameter, shared weights); the hidden ones (hidden.py)
# are the same kinds in other sizes.
MODULES = {
    "nn.Linear(12, 7)": lambda: nn.Linear(12, 7),
    "nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3)) with the first Linear frozen":
        _partly_frozen_sequential,
    "a module holding a frozen nn.Linear(16, 9) and trainable nn.Linear(16, 2, bias=False), "
    "nn.Linear(2, 9, bias=False)": _FrozenBaseWithAdapter,
    "nn.Sequential(nn.ReLU(), nn.Dropout(0.1)), which has no parameters":
        lambda: nn.Sequential(nn.ReLU(), nn.Dropout(0.1)),
    "nn.Sequential(nn.Linear(8, 5), nn.BatchNorm1d(5)); BatchNorm also holds buffers":
        lambda: nn.Sequential(nn.Linear(8, 5), nn.BatchNorm1d(5)),
    "nn.Linear(5, 3) with only its bias frozen": _bias_frozen_linear,
    "a module with a frozen nn.Parameter of 4 numbers and an nn.Linear(4, 2)": _FrozenGate,
    "a fully frozen nn.Linear(9, 4)": lambda: nn.Linear(9, 4).requires_grad_(False),
    "nn.Embedding(10, 4) and nn.Linear(4, 10) sharing one (10, 4) weight": lambda: _TiedEmbedding(10, 4),
    "nn.Sequential(linear, nn.Tanh(), linear) with one nn.Linear(6, 6) used twice": _one_linear_twice,
    "nn.Embedding(7, 3) and nn.Linear(3, 7) sharing one frozen (7, 3) weight":
        lambda: _TiedEmbedding(7, 3, freeze_shared=True),
}


def build_module(name: str) -> nn.Module:
    with torch.random.fork_rng():  # building draws random weights; nobody's seed should notice
        return MODULES[name]()


def _probe_count(namespace, case):
    return returned(namespace["count_trainable_parameters"](build_module(case["module"])))


def _count_cases(*names):
    return tuple({"module": name} for name in names)


COUNT_CASES = _count_cases(
    "nn.Linear(12, 7)",
    "nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3)) with the first Linear frozen",
    "a module holding a frozen nn.Linear(16, 9) and trainable nn.Linear(16, 2, bias=False), "
    "nn.Linear(2, 9, bias=False)",
    "nn.Sequential(nn.ReLU(), nn.Dropout(0.1)), which has no parameters",
    "nn.Sequential(nn.Linear(8, 5), nn.BatchNorm1d(5)); BatchNorm also holds buffers",
    "nn.Linear(5, 3) with only its bias frozen",
    "a module with a frozen nn.Parameter of 4 numbers and an nn.Linear(4, 2)",
    "a fully frozen nn.Linear(9, 4)",
)
SHARED_CASES = _count_cases(
    "nn.Embedding(10, 4) and nn.Linear(4, 10) sharing one (10, 4) weight",
    "nn.Sequential(linear, nn.Tanh(), linear) with one nn.Linear(6, 6) used twice",
    "nn.Embedding(7, 3) and nn.Linear(3, 7) sharing one frozen (7, 3) weight",
)


# --- gradient_prediction ----------------------------------------------------------------------

def _answer(key, value) -> dict:
    return {"key": key if isinstance(key, str) else repr(key)[:60],
            "value": value if isinstance(value, str) else None,
            "kind": type(value).__name__}


def _probe_gradient_prediction(namespace, case):
    prediction = namespace["gradient_prediction"]()
    if not isinstance(prediction, dict):
        return {"kind": type(prediction).__name__}
    return {"kind": "dict", "answers": [_answer(key, value) for key, value in prediction.items()]}


PREDICTION_CASES = layer.layer_cases([(10, 6, 3, 5, (4, 10))], seeds=(400,))
HIDDEN = hidden_cases_of("nb03", layer.layer_cases, sys.modules[__name__])
MODULES.update(HIDDEN["modules"] or {})
LAYER_HIDDEN, COUNT_HIDDEN = HIDDEN["layer"], HIDDEN["count"]
SHARED_HIDDEN, PREDICTION_HIDDEN = HIDDEN["shared"], HIDDEN["prediction"]

VERDICTS, ANSWERS = "lora_grader.verdicts.nb03", "lora_grader.answers.nb03"

CHECKS = layer.layer_checks(LAYOUT, LAYER_CASES, LAYER_HIDDEN, POINTS) + (
    Check("count_trainable_parameters", "count_trainable_parameters", 2, _probe_count,
          f"{VERDICTS}:count_trainable_parameters", COUNT_CASES, COUNT_HIDDEN,
          expect=f"{ANSWERS}:count_trainable_parameters"),
    Check("count_trainable_shared", "count_trainable_parameters", 1, _probe_count,
          f"{VERDICTS}:count_trainable_parameters", SHARED_CASES, SHARED_HIDDEN,
          expect=f"{ANSWERS}:count_trainable_parameters"),
    Check("gradient_prediction_base", "gradient_prediction", 1, _probe_gradient_prediction,
          f"{VERDICTS}:gradient_prediction_base", PREDICTION_CASES, PREDICTION_HIDDEN,
          expect=f"{ANSWERS}:gradient_prediction"),
    Check("gradient_prediction_lora", "gradient_prediction", 2, _probe_gradient_prediction,
          f"{VERDICTS}:gradient_prediction_lora", PREDICTION_CASES, PREDICTION_HIDDEN,
          expect=f"{ANSWERS}:gradient_prediction"),
)
