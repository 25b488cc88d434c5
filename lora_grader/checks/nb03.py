"""Checks for notebook 03: LoRALinear with nn.Linear adapters, counting trainable parameters,
and predicting which gradients one backward pass produces at initialisation."""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from lora_grader.checks import layer
from lora_grader.checks.core import Check, fail, numbers, returned, tensor
from lora_grader.checks.core import hidden_cases_of

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


# --- count_trainable_parameters ---------------------------------------------------------------

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


# The case names the module in the words of the feedback; probe and verdict both build it from this.
# The visible cases hold every kind of module the notebook speaks of (frozen parts, no parameters,
# buffers, a frozen Parameter, shared weights); the hidden ones (hidden.py) are the same kinds in
# other sizes.
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


def _count_hints(module: nn.Module) -> list[tuple[int, str]]:
    """Counts the usual mistakes produce on this module, each with its cause."""
    unique = list(module.parameters())
    every = [p for _, p in module.named_parameters(remove_duplicate=False)]
    trainable = [p for p in unique if p.requires_grad]
    return [
        (sum(p.numel() for p in unique), "frozen parameters were counted too: keep only those with "
                                         "p.requires_grad"),
        (sum(p.numel() for p in unique if not p.requires_grad),
         "only the frozen parameters were counted: trainable ones have requires_grad=True"),
        (sum(p.numel() for p in every if p.requires_grad),
         "a shared parameter was counted twice: it is one tensor, and module.parameters() lists it "
         "once (walking the submodules yourself meets it in each)"),
        (sum(p.numel() for p in every), "frozen parameters were counted, and a shared one twice"),
        (len(trainable), "that is the number of trainable tensors, not of numbers: add up p.numel()"),
        (sum(p.numel() for p in trainable) + sum(b.numel() for b in module.buffers()),
         "buffers (like BatchNorm's running statistics) were counted: they are state, not parameters, "
         "and never train"),
    ]


def _verdict_count(case, data):
    module = build_module(case["module"])
    expected = sum(p.numel() for p in module.parameters() if p.requires_grad)
    kind = data["kind"]
    if kind == "tensor":
        fail(f"count_trainable_parameters returned a tensor ({numbers(data['tensor'])}) but should return "
             "a Python int: p.numel() is already an int (or convert with int(...))", case)
    if kind != "int":
        seen = data.get("value", data.get("repr"))
        why = {
            "float": ": a count of numbers is whole; add up p.numel() without dividing or float()",
            "bool": ": the count itself, not whether anything trains",
            "str": ": the number itself, not text",
        }.get(kind, "")
        fail(f"count_trainable_parameters returned a {kind} ({seen!r}) but should return an int{why}", case)
    if data["value"] == expected:
        return
    cause = next((why for count, why in _count_hints(module) if count == data["value"] != expected), None)
    fail(f"count_trainable_parameters returned {data['value']:,} but the module has {expected:,} trainable "
         "numbers" + (f": {cause}" if cause else " (count each parameter tensor once, p.numel() numbers each, "
                                                "if p.requires_grad)"), case)


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

ANSWERS = ("none", "zero", "nonzero")
BASE_KEYS = ("base_layer.weight", "base_layer.bias")
LORA_KEYS = ("lora_A.weight", "lora_B.weight")


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


def _answer(key, value) -> dict:
    return {"key": key if isinstance(key, str) else repr(key)[:60],
            "value": value if isinstance(value, str) else None,
            "kind": type(value).__name__}


def _probe_gradient_prediction(namespace, case):
    prediction = namespace["gradient_prediction"]()
    if not isinstance(prediction, dict):
        return {"kind": type(prediction).__name__}
    return {"kind": "dict", "answers": [_answer(key, value) for key, value in prediction.items()]}


def _normalised(answer) -> str | None:
    """The student's word as one of ANSWERS ('non-zero' and Python None are fine), else None."""
    if answer["kind"] == "NoneType":
        return "none"
    if answer["value"] is None:
        return None
    word = "".join(answer["value"].lower().replace("-", "").replace("_", "").split())
    return word if word in ANSWERS else None


def _read_prediction(data) -> dict[str, str]:
    keys = BASE_KEYS + LORA_KEYS
    if data["kind"] != "dict":
        fail(f"gradient_prediction() returned a {data['kind']}, but should return a dict with the keys "
             f"{', '.join(keys)}, each mapped to 'none', 'zero' or 'nonzero'.")
    answers = {answer["key"]: answer for answer in data["answers"]}
    missing = [key for key in keys if key not in answers]
    unknown = [key for key in answers if key not in keys]
    if missing:
        fail(f"gradient_prediction() has no answer for {', '.join(missing)}"
             + (f" (it has {', '.join(map(repr, unknown))} instead)" if unknown else "")
             + f". The keys are the names layer.named_parameters() gives: {', '.join(keys)}.")
    if unknown:
        fail(f"gradient_prediction() has keys that are not parameters of the layer: {', '.join(map(repr, unknown))}. "
             f"Use exactly {', '.join(keys)}.")
    prediction = {}
    for key in keys:
        word = _normalised(answers[key])
        if word is None:
            seen = repr(answers[key]["value"]) if answers[key]["value"] is not None else f"a {answers[key]['kind']}"
            fail(f"gradient_prediction()[{key!r}] is {seen}; answer with one of the strings "
                 f"{', '.join(map(repr, ANSWERS))}.")
        prediction[key] = word
    return prediction


# Where to look, the same whatever was predicted: the feedback must not hand over the answer.
LOOK_AT = {
    "base_layer.weight": "the base layer is frozen: what does autograd do for a parameter that does "
                         "not require grad, and what is its .grad before any backward pass?",
    "base_layer.bias": "the bias is frozen with the rest of the base layer: what does autograd do for a "
                       "parameter that does not require grad?",
    "lora_A.weight": "follow the chain rule from the output back to lora_A: which module does every path "
                     "pass through, and what is its weight at initialisation?",
    "lora_B.weight": "lora_B's gradient is built from its input, lora_A(x), and the gradient arriving at "
                     "the output: is either of them zero at initialisation?",
}


def verdict_gradient_prediction(keys):
    def verdict(case, data):
        prediction = _read_prediction(data)
        truth = true_gradient_kinds(case)
        wrong = [f"{key}: {prediction[key]!r} is not what one backward pass leaves. Hint: {LOOK_AT[key]}"
                 for key in keys if prediction[key] != truth[key]]
        if wrong:
            fail("\n  ".join(["a fresh layer (lora_B = 0, base frozen) after one backward pass:"] + wrong))
    return verdict


PREDICTION_CASES = layer.layer_cases([(10, 6, 3, 5, (4, 10))], seeds=(400,))
HIDDEN = hidden_cases_of("nb03", layer.layer_cases, sys.modules[__name__])
MODULES.update(HIDDEN["modules"] or {})
LAYER_HIDDEN, COUNT_HIDDEN = HIDDEN["layer"], HIDDEN["count"]
SHARED_HIDDEN, PREDICTION_HIDDEN = HIDDEN["shared"], HIDDEN["prediction"]


CHECKS = layer.layer_checks(LAYOUT, LAYER_CASES, LAYER_HIDDEN, POINTS) + (
    Check("count_trainable_parameters", "count_trainable_parameters", 2, _probe_count, _verdict_count,
          COUNT_CASES, COUNT_HIDDEN),
    Check("count_trainable_shared", "count_trainable_parameters", 1, _probe_count, _verdict_count,
          SHARED_CASES, SHARED_HIDDEN),
    Check("gradient_prediction_base", "gradient_prediction", 1, _probe_gradient_prediction,
          verdict_gradient_prediction(BASE_KEYS), PREDICTION_CASES, PREDICTION_HIDDEN),
    Check("gradient_prediction_lora", "gradient_prediction", 2, _probe_gradient_prediction,
          verdict_gradient_prediction(LORA_KEYS), PREDICTION_CASES, PREDICTION_HIDDEN),
)
