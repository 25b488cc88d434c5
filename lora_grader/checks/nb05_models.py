"""Notebook 05's inputs: the models its probes build from a case alone, the known weights they load,
and the readers that see a model as nn.Module stores it.

What the student's code leaves behind is read through nn.Module's own tables (`_modules`,
`_parameters`, `_buffers`) and torch's own descriptors, never through methods or attributes a
student's object can replace (`named_parameters()`, `state_dict()`, `parameters()`,
`requires_grad`, `__getattr__`). Inputs only: nothing here computes what a student's code should
return (that is lora_grader.answers.nb05, in the instructor's install).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from lora_grader.checks.core import _module_dict, base_linear, safe_str, tensor, true_parameters, true_requires_grad


# --- the models, built from the case alone ---------------------------------------------------

def linear_names(case) -> list[str]:
    """The names of the model's nn.Linear layers, input to output."""
    if case["model"] == "nested":
        return ["body.fc1", "body.fc2", "head"]
    return [str(2 * i) for i in range(len(case["widths"]) - 1)]


def linear_shapes(case) -> dict[str, tuple[int, int]]:
    widths = case["widths"]
    return {name: (widths[i], widths[i + 1]) for i, name in enumerate(linear_names(case))}


def base_linears(case) -> dict[str, nn.Linear]:
    return {name: base_linear(d, k, case["seed"] + 10 * i)
            for i, (name, (d, k)) in enumerate(linear_shapes(case).items())}


def build_model(case, wrap=None) -> nn.Module:
    """The case's ReLU MLP; `wrap(name, linear)` may replace each linear as it is placed."""
    linears = {name: (wrap(name, linear) if wrap else linear) for name, linear in base_linears(case).items()}
    if case["model"] == "nested":
        body = nn.Sequential(OrderedDict(fc1=linears["body.fc1"], act1=nn.ReLU(),
                                         fc2=linears["body.fc2"], act2=nn.ReLU()))
        return nn.Sequential(OrderedDict(body=body, head=linears["head"]))
    layers = []
    for name in linear_names(case):
        layers += [linears[name], nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def adapted_model(namespace, case) -> nn.Module:
    """The case's model built with the notebook's LoRALinear at its targets and its trainable
    modules unfrozen, adapters loaded with adapter_weights(case)."""
    def wrap(name, linear):
        if name not in case["targets"]:
            return linear
        return namespace["LoRALinear"](linear, rank=case["rank"], alpha=case["alpha"])

    model = build_model(case, wrap)
    model.requires_grad_(False)
    for name in case["trainable"]:
        model.get_submodule(name).requires_grad_(True)
    for name in case["targets"]:
        layer = model.get_submodule(name)
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
        A, B = adapter_weights(case, name)
        with torch.no_grad():
            layer.lora_A.weight.copy_(A)
            layer.lora_B.weight.copy_(B)
    return model


def adapter_weights(case, name, trained=1, rank=None):
    """Known, non-zero lora_A.weight (r, in) and lora_B.weight (out, r) for target `name`;
    `trained` picks another set, as if after more training; `rank` another rank."""
    d, k = linear_shapes(case)[name]
    r = case["rank"] if rank is None else rank
    seed = case["seed"] + 1000 * trained + 10 * linear_names(case).index(name)
    return tensor((r, d), seed + 5, d ** -0.5), tensor((k, r), seed + 6, 0.5)


def trained_head(case, name, trained=1):
    """Known weight and bias for a trainable module, as if after training."""
    d, k = linear_shapes(case)[name]
    seed = case["seed"] + 1000 * trained + 500 + 10 * linear_names(case).index(name)
    return tensor((k, d), seed + 1, d ** -0.5), tensor((k,), seed + 2)


def checkpoint(case, trained=2) -> dict:
    """An adapter checkpoint that fits the case's adapted model, with other values than it holds."""
    state = {}
    for t in case["targets"]:
        state[f"{t}.lora_A.weight"], state[f"{t}.lora_B.weight"] = adapter_weights(case, t, trained)
    for m in case["trainable"]:
        state[f"{m}.weight"], state[f"{m}.bias"] = trained_head(case, m, trained)
    return state


def model_input(case):
    return tensor(case["x_shape"], case["seed"] + 4)


# --- reading a model as nn.Module stores it ----------------------------------------------------

def own_dict(module) -> dict:
    """The object's own __dict__, whatever its class says ({} for None and other objects without one)."""
    try:
        own = _module_dict(module)
    except AttributeError:
        return {}
    return own if isinstance(own, dict) else {}


def _table(module, table: str) -> dict:
    own = own_dict(module).get(table)
    return dict(dict.items(own)) if isinstance(own, dict) else {}


def walk(module) -> list[tuple[str, nn.Module]]:
    """(path, module) for the module and everything below it, as named_modules() would list them
    if the student's classes left it alone; each module once."""
    found, seen, stack = [], set(), [("", module)]
    while stack:
        path, current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append((path, current))
        children = [(f"{path}.{key}" if path else key, child)
                    for key, child in _table(current, "_modules").items() if isinstance(child, nn.Module)]
        stack.extend(reversed(children))
    return found


def dotted_children(module) -> list[str]:
    """Paths of children registered under a name with a dot in it ('body.fc2' as one name)."""
    return [f"{path}.{key}" if path else key for path, current in walk(module)
            for key in _table(current, "_modules") if "." in key]


def submodule(model, path: str):
    """The module at a dotted path, child by child through the _modules tables, or None."""
    current = model
    for key in path.split(".") if path else ():
        current = _table(current, "_modules").get(key)
        if not isinstance(current, nn.Module):
            return None
    return current


def attribute(module, name):
    """module.<name> as nn.Module stores it (a child, a parameter, a buffer or a plain attribute)."""
    for table in ("_modules", "_parameters", "_buffers"):
        own = _table(module, table)
        if name in own:
            return own[name]
    return own_dict(module).get(name)


def is_lora(module) -> bool:
    children = _table(module, "_modules")
    return all(name in children for name in ("base_layer", "lora_A", "lora_B"))


def copy(value):
    """A plain snapshot of a tensor (the probe goes on changing the model after recording it)."""
    if not isinstance(value, torch.Tensor):
        return None
    with torch._C.DisableTorchFunctionSubclass():
        return torch.Tensor.as_subclass(value, torch.Tensor).detach().clone()


def state(module) -> dict[str, torch.Tensor]:
    """{name: value} of every parameter and persistent buffer, as state_dict() names them."""
    values = {}
    for path, current in walk(module):
        prefix = f"{path}." if path else ""
        skipped = own_dict(current).get("_non_persistent_buffers_set") or set()
        for table in ("_parameters", "_buffers"):
            for name, value in _table(current, table).items():
                if isinstance(value, torch.Tensor) and not (table == "_buffers" and name in skipped):
                    values[prefix + name] = copy(value)
    return values


def trainable(module) -> list[str]:
    return sorted(name for name, p in true_parameters(module) if true_requires_grad(p))


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {safe_str(error)}"


def kind(value) -> str:
    return "None" if value is None else type(value).__name__


# --- count_parameters' own model ------------------------------------------------------------

class _Tied(nn.Module):
    """An embedding and an output layer sharing one weight, and a frozen LayerNorm."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 5)
        self.out = nn.Linear(5, 12)
        self.out.weight = self.embed.weight
        self.norm = nn.LayerNorm(5)
        self.norm.requires_grad_(False)


TIED = "an nn.Embedding(12, 5) and an nn.Linear(5, 12) sharing one weight, and a frozen nn.LayerNorm(5)"
COUNT_MODULES = {TIED: _Tied}


def count_model(namespace, case) -> nn.Module:
    if case["model"] in COUNT_MODULES:
        with torch.random.fork_rng():
            return COUNT_MODULES[case["model"]]()
    return adapted_model(namespace, case)
