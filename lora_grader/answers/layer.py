"""Expected values for the LoRALinear checks that notebooks 02 and 03 share (checks/layer.py).

References are float64, from the case's seeded inputs: the base layer, x, and the adapter the
probes load into the student's layer (checks.layer.math_adapter)."""
from __future__ import annotations

import math

from lora_grader.answers.shared import matmul_flops
from lora_grader.checks import physical
from lora_grader.checks.core import base_linear, tensor
from lora_grader.checks.layer import layer_input, math_adapter


def _sizes(case):
    return case["in_features"], case["out_features"], case["rank"]


def shapes(case) -> dict:
    """lora_A and lora_B as each layout stores them: nn.Parameters (in, r), (r, out), or the
    weights of nn.Linear adapters, (r, in) and (out, r)."""
    d, k, r = _sizes(case)
    return {"parameter": [[d, r], [r, k]], "linear": [[r, d], [k, r]]}


def init(case) -> dict:
    return {"rank": case["rank"]}  # a Gaussian (in, r) lora_A has full rank r


def output_shape(case) -> dict:
    return {"shape": [*case["x_shape"][:-1], case["out_features"]]}


def scalings(case) -> dict:
    """alpha / rank, and the scalings that common mistakes give, each with its cause
    (verdicts.layer.CAUSES)."""
    alpha, r = case["alpha"], case["rank"]
    right = alpha / r
    wrong = [[1.0, "no_scaling"], [float(alpha), "alpha_only"], [r / alpha, "rank_over_alpha"],
             [1 / r, "no_alpha"], [right ** 2, "scaled_twice"]]
    return {"scaling": right, "wrong_scalings": wrong}


def _reference(case):
    """(base output, LoRA term without scaling), float64, for x and the probes' adapter."""
    d, k, _ = _sizes(case)
    base = base_linear(d, k, case["seed"])
    x = layer_input(case).double()
    A, B = math_adapter(case)
    return x @ base.weight.double().T + base.bias.double(), (x @ A.double()) @ B.double()


def outputs(case) -> dict:
    """The base layer's output, the LoRA term (x @ A) @ B and the layer's output
    base + alpha / rank · term, with the scalings that common mistakes give."""
    base, term = _reference(case)
    scaling = scalings(case)
    return {"base": base, "term": term, "output": base + scaling["scaling"] * term, **scaling}


def frozen(case) -> dict:
    """Nothing to compute: every parameter of the base layer must stay frozen and get no gradient."""
    return {}


def trainable(case) -> dict:
    d, k, r = _sizes(case)
    return {"count": r * (d + k)}


def flops(case) -> dict:
    """The output, and what computing it as base + (x @ A) @ B costs: its FLOPs, and its largest
    tensor, at most `small` numbers, while an in × out matrix holds `matrix`. For a large case,
    what the probe samples of the output (physical.sample): its shape, some columns, row sums."""
    d, k, r = _sizes(case)
    tokens = math.prod(case["x_shape"][:-1])
    sizes = {"matrix": d * k, "matrix_bytes": 4 * d * k, "small": tokens * max(d, k)}
    if "memory" in case:
        return {**sizes, **_large(case)}
    budget = matmul_flops(tokens, d, k) + matmul_flops(tokens, d, r) + matmul_flops(tokens, r, k)
    return {**sizes, "output": outputs(case)["output"], "budget": budget}


def _large(case) -> dict:
    """A large case's output is bias + alpha / rank · (x @ A) @ B (the base weight is zero): its
    sampled columns and the sum of each row, without forming anything of size in × out."""
    k = case["out_features"]
    x = layer_input(case).double()
    A, B = (t.double() for t in math_adapter(case))
    bias = tensor((k,), case["seed"] + 2).double()  # physical.zero_linear's bias
    scaling = case["alpha"] / case["rank"]
    xA = x @ A
    columns = physical.sampled_columns(case)
    return {
        "shape": [*case["x_shape"][:-1], k],
        "columns": bias[columns] + scaling * (xA @ B[:, columns]),
        "row_sums": bias.sum() + scaling * (xA @ B.sum(-1)),
    }
