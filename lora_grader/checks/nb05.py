"""Checks for notebook 05: LoRA on a whole model. Injecting adapters into named modules,
counting parameters, an adapter-only checkpoint, merging every adapter, and the paper's table.

The probes build small ReLU MLPs whose weights depend only on the case (flat `nn.Sequential`s
and nested ones with dotted names). Where a probe needs a model that already holds adapters, it
builds one with the notebook's given `LoRALinear` and loads known adapter weights, so that each
task is checked on its own. The verdicts rebuild every weight from the case and compute outputs
and counts in float64 arithmetic; exact comparisons where the notebook promises bit-for-bit
equality (at initialisation, frozen weights, a loaded checkpoint), a tolerance where float32
rounding differs (merged weights and outputs).
"""
from __future__ import annotations

import io
from collections import OrderedDict

import torch
import torch.nn as nn

from lora_grader.checks.core import (
    Check, ProbeError, base_linear, fail, is_close, max_error, numbers, returned, safe_str, shape_str,
    tensor,
)
from lora_grader.checks.core import hidden_cases_of

MANUAL_POINTS = {"why_lora_beats_the_head": 2}


# --- the models, built the same way by probes and verdicts ------------------------------------

def linear_names(case) -> list[str]:
    """The names of the model's nn.Linear layers, input to output."""
    if case["model"] == "nested":
        return ["body.fc1", "body.fc2", "head"]
    return [str(2 * i) for i in range(len(case["widths"]) - 1)]


def _linear_shapes(case) -> dict[str, tuple[int, int]]:
    widths = case["widths"]
    return {name: (widths[i], widths[i + 1]) for i, name in enumerate(linear_names(case))}


def _base_linears(case) -> dict[str, nn.Linear]:
    return {name: base_linear(d, k, case["seed"] + 10 * i)
            for i, (name, (d, k)) in enumerate(_linear_shapes(case).items())}


def build_model(case, wrap=None) -> nn.Module:
    """The case's ReLU MLP; `wrap(name, linear)` may replace each linear as it is placed."""
    linears = {name: (wrap(name, linear) if wrap else linear) for name, linear in _base_linears(case).items()}
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
        return namespace["LoRALinear"](linear, rank=case["rank"], alpha=case["alpha"]) if name in case["targets"] else linear

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


def adapter_weights(case, name, trained=1):
    """Known, non-zero lora_A.weight (r, in) and lora_B.weight (out, r) for target `name`;
    `trained` picks another set, as if after more training."""
    d, k = _linear_shapes(case)[name]
    i = linear_names(case).index(name)
    seed = case["seed"] + 1000 * trained + 10 * i
    return tensor((case["rank"], d), seed + 5, d ** -0.5), tensor((k, case["rank"]), seed + 6, 0.5)


def trained_head(case, name, trained=1):
    """Known weight and bias for a trainable module, as if after training."""
    d, k = _linear_shapes(case)[name]
    seed = case["seed"] + 1000 * trained + 500 + 10 * linear_names(case).index(name)
    return tensor((k, d), seed + 1, d ** -0.5), tensor((k,), seed + 2)


def trainable_names(case) -> list[str]:
    """state_dict names of every parameter that trains after injection, sorted."""
    names = [f"{t}.lora_{ab}.weight" for t in case["targets"] for ab in "AB"]
    names += [f"{m}.{p}" for m in case["trainable"] for p in ("weight", "bias")]
    return sorted(names)


def frozen_names(case) -> list[str]:
    return sorted(
        (f"{name}.base_layer.{p}" if name in case["targets"] else f"{name}.{p}")
        for name in linear_names(case) if name not in case["trainable"] for p in ("weight", "bias")
    )


def _input(case):
    return tensor(case["x_shape"], case["seed"] + 4)


def forward64(case, weights: dict) -> torch.Tensor:
    """The MLP's output in float64 from {linear name: (W, b)}."""
    h = _input(case).double()
    names = linear_names(case)
    for i, name in enumerate(names):
        W, b = weights[name]
        h = h @ W.double().T + b.double()
        if i < len(names) - 1:
            h = h.clamp_min(0)
    return h


def base_weights(case) -> dict:
    return {name: (layer.weight.detach(), layer.bias.detach()) for name, layer in _base_linears(case).items()}


def merged_weights(case, trained=1) -> dict:
    """{name: (W + scaling · B @ A, b)} in float64 for the adapted model's known adapters."""
    weights = {}
    for name, (W, b) in base_weights(case).items():
        W, b = W.double(), b.double()
        if name in case["targets"]:
            A, B = (t.double() for t in adapter_weights(case, name, trained))
            W = W + case["alpha"] / case["rank"] * (B @ A)
        weights[name] = (W, b)
    return weights


def _state(module) -> dict:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _module_or_none(model, name):
    try:
        return model.get_submodule(name)
    except (AttributeError, TypeError):
        return None


def _is_lora(module) -> bool:
    return all(hasattr(module, attribute) for attribute in ("base_layer", "lora_A", "lora_B"))


def _number(value):
    return value if type(value) in (int, float) else None


# --- add_lora ---------------------------------------------------------------------------------

def _probe_add_lora(namespace, case):
    model = build_model(case)
    x = _input(case)
    with torch.no_grad():
        data = {"out_before": model(x)}
    result = namespace["add_lora"](model, list(case["targets"]), rank=case["rank"], alpha=case["alpha"],
                                   trainable=list(case["trainable"]))
    if not isinstance(result, nn.Module):
        raise ProbeError(f"add_lora returned {'None' if result is None else 'a ' + type(result).__name__}: "
                         "it should return the model, with the adapters in it")
    data["modules"] = {
        name: {"type": type(module).__name__, "lora": _is_lora(module), "rank": _number(getattr(module, "rank", None)),
               "scaling": _number(getattr(module, "scaling", None))}
        for name, module in result.named_modules() if name
    }
    data["linears"] = {}
    for name in linear_names(case):
        module = _module_or_none(result, name)
        inner = getattr(module, "base_layer", module) if module is not None else None
        if isinstance(inner, nn.Linear):
            data["linears"][name] = {"weight": inner.weight.detach().clone(),
                                     "bias": None if inner.bias is None else inner.bias.detach().clone()}
    data["parameters"] = [{"name": name, "numel": p.numel(), "requires_grad": p.requires_grad}
                          for name, p in result.named_parameters()]
    try:
        with torch.no_grad():
            data["out_init"] = result(x)
    except Exception as error:
        raise ProbeError(f"the model add_lora returned raised {type(error).__name__} when called "
                         f"({safe_str(error)}): did the new layers take the place of the old ones "
                         "(setattr on the parent module, under the child's own name)?") from None
    _measure_adapters(result, case, data)
    _train_a_little(result, case, data)
    return data


def _measure_adapters(model, case, data):
    """Load known adapters into every target and record the output."""
    for name in case["targets"]:
        module = _module_or_none(model, name)
        if not _is_lora(module):
            return
        A, B = adapter_weights(case, name)
        if not (tuple(module.lora_A.weight.shape) == tuple(A.shape) and tuple(module.lora_B.weight.shape) == tuple(B.shape)):
            return
    originals = {}
    with torch.no_grad():
        for name in case["targets"]:
            module = model.get_submodule(name)
            originals[name] = (module.lora_A.weight.clone(), module.lora_B.weight.clone())
            A, B = adapter_weights(case, name)
            module.lora_A.weight.copy_(A)
            module.lora_B.weight.copy_(B)
        data["out_adapted"] = model(_input(case))
        for name, (A, B) in originals.items():  # back to the fresh adapters for training
            model.get_submodule(name).lora_A.weight.copy_(A)
            model.get_submodule(name).lora_B.weight.copy_(B)


def _train_a_little(model, case, data):
    """A few gradient steps on what requires grad, as the notebook's train() takes them (by hand:
    torch.optim's first step imports torch._dynamo, seconds in every fresh probe process).
    Which parameters moved?"""
    before = dict((name, p.detach().clone()) for name, p in model.named_parameters())
    x = _input(case)
    weights = tensor(data["out_init"].shape, case["seed"] + 7)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for _ in range(3 if trainable else 0):
        model.zero_grad()
        (model(x) * weights).sum().backward()
        with torch.no_grad():
            for p in trainable:
                if p.grad is not None:
                    p -= 0.05 * p.grad
    data["moved"] = sorted(name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name]))


def _require_model(data, case):
    for name in case["targets"]:
        seen = data["modules"].get(name)
        if seen is None:
            fail(f"after add_lora the model has no module named {name!r}: replace the module in its parent "
                 "(for a dotted name like 'body.fc1', setattr on model.get_submodule('body')), under the same name",
                 case)
        if not seen["lora"]:
            fail(f"{name!r} is still a {seen['type']} after add_lora: replace it with LoRALinear(the module, "
                 "rank, alpha) in its parent module (setattr(parent, child_name, new_module))", case)


def verdict_wraps_targets(case, data):
    _require_model(data, case)
    r, alpha = case["rank"], case["alpha"]
    for name in case["targets"]:
        seen = data["modules"][name]
        if seen["rank"] != r or seen["scaling"] is None or abs(seen["scaling"] - alpha / r) > 1e-12:
            fail(f"{name!r} has rank {seen['rank']} and scaling {seen['scaling']} but add_lora was asked for "
                 f"rank={r}, alpha={alpha} (scaling {alpha / r:g}): are rank and alpha passed to LoRALinear in "
                 "the right order (LoRALinear(layer, rank=rank, alpha=alpha))?", case)
    wrapped = sorted(name for name, module in data["modules"].items() if module["lora"])
    extra = [name for name in wrapped if name not in case["targets"]]
    if extra:
        fail(f"add_lora also wrapped {', '.join(map(repr, extra))}, which is not in targets "
             f"{list(case['targets'])}: adapt only the modules named", case)
    for name, (W, b) in base_weights(case).items():
        seen = data["linears"].get(name)
        where = f"{name!r}" + (" (inside its LoRALinear)" if name in case["targets"] else "")
        if seen is None:
            fail(f"the nn.Linear {where} is gone after add_lora: only the targets are wrapped, the rest stays", case)
        if not (torch.equal(seen["weight"], W) and seen["bias"] is not None and torch.equal(seen["bias"], b)):
            fail(f"the pretrained weights of {where} changed: the base layer must be the model's own pretrained "
                 "nn.Linear, not a new one (a new nn.Linear starts from random weights)", case)
    if "out_adapted" not in data:
        fail("the adapters do not have the shapes LoRALinear gives them", case)
    expected = forward64(case, merged_weights(case))
    if not is_close(data["out_adapted"], expected):
        fail("with non-zero adapters loaded, the model's output differs from what the adapted layers compute "
             f"(by up to {max_error(data['out_adapted'], expected):.3g}): is the wrapped layer the one the model "
             "runs? Replace the module inside the model itself, not in a copy or a list", case)


def verdict_starts_as_base(case, data):
    _require_model(data, case)
    seen, before = data["out_init"], data["out_before"]
    if seen.shape != before.shape or not torch.equal(seen, before):
        difference = (f"by up to {max_error(seen, before):.3g}" if seen.shape == before.shape
                      else f"in shape, {shape_str(seen.shape)} against {shape_str(before.shape)}")
        fail(f"right after add_lora the model should compute exactly what the pretrained model did (lora_B = 0), "
             f"bit for bit, but the outputs differ {difference}", case)


def verdict_trainable(case, data):
    _require_model(data, case)
    expected = set(trainable_names(case))
    seen = {p["name"] for p in data["parameters"] if p["requires_grad"]}
    frozen_but_training = sorted(seen - expected)
    if frozen_but_training:
        fail(f"these parameters still train but should be frozen: {', '.join(frozen_but_training)}. "
             "Freeze the whole model first (model.requires_grad_(False)), then unfreeze what should train", case)
    missing = sorted(expected - seen)
    if missing:
        why = ("the modules named in `trainable` must train in full"
               if any(not name.split(".")[-2].startswith("lora_") for name in missing) else
               "the adapters must train: freeze the model before wrapping, or unfreeze lora_A and lora_B after")
        fail(f"these parameters should train but are frozen: {', '.join(missing)}: {why}", case)
    count = sum(p["numel"] for p in data["parameters"] if p["requires_grad"])
    shapes = _linear_shapes(case)
    lora = sum(case["rank"] * sum(shapes[t]) for t in case["targets"])
    full = sum((d + 1) * k for name, (d, k) in shapes.items() if name in case["trainable"])
    if count != lora + full:
        fail(f"{count:,} numbers train but expected {lora + full:,}", case)
    moved_frozen = [name for name in data["moved"] if name not in expected]
    if moved_frozen:
        fail(f"after a few training steps, frozen parameters changed: {', '.join(moved_frozen)}", case)


# --- count_parameters -------------------------------------------------------------------------

class _Tied(nn.Module):
    """An embedding and an output layer sharing one weight; the embedding frozen."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 5)
        self.out = nn.Linear(5, 12)
        self.out.weight = self.embed.weight
        self.norm = nn.LayerNorm(5)
        self.norm.requires_grad_(False)


TIED = "an nn.Embedding(12, 5) and an nn.Linear(5, 12) sharing one weight, and a frozen nn.LayerNorm(5)"
COUNT_MODULES = {TIED: _Tied}


def _probe_count(namespace, case):
    if case["model"] in COUNT_MODULES:
        with torch.random.fork_rng():
            model = COUNT_MODULES[case["model"]]()
    else:
        model = adapted_model(namespace, case)
    value = namespace["count_parameters"](model)
    if not isinstance(value, (tuple, list)):
        return {"kind": type(value).__name__, "repr": returned(value)}
    return {"kind": "pair", "items": [returned(item) for item in value]}


def expected_counts(case) -> tuple[int, int]:
    if case["model"] in COUNT_MODULES:
        with torch.random.fork_rng():
            module = COUNT_MODULES[case["model"]]()
        unique = list(module.parameters())
        return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
    shapes = _linear_shapes(case)
    base = sum((d + 1) * k for d, k in shapes.values())
    lora = sum(case["rank"] * sum(shapes[t]) for t in case["targets"])
    full = sum((d + 1) * k for name, (d, k) in shapes.items() if name in case["trainable"])
    return lora + full, base + lora


def verdict_count(case, data):
    trainable, total = expected_counts(case)
    if data["kind"] != "pair" or len(data["items"]) != 2:
        fail(f"count_parameters should return a pair (trainable, total) of ints, like ({trainable}, {total}), "
             f"not a {data['kind']}", case)
    values = []
    for item, what in zip(data["items"], ("trainable", "total")):
        if item["kind"] != "int":
            fail(f"the {what} count should be an int, but it is a {item['kind']}: add up p.numel()", case)
        values.append(item["value"])
    if values == [total, trainable]:
        fail(f"count_parameters returned ({values[0]:,}, {values[1]:,}): the two are swapped, "
             "the pair is (trainable, total)", case)
    for seen, expected, what in ((values[0], trainable, "trainable"), (values[1], total, "total")):
        if seen != expected:
            hint = (" (count a shared parameter once: module.parameters() lists it once)"
                    if case["model"] == TIED else "")
            fail(f"count_parameters says {seen:,} {what} numbers but the model has {expected:,}{hint}", case)


# --- adapter_state_dict and load_adapter ------------------------------------------------------

def _plain_entry(value):
    if type(value) is nn.Parameter:  # the parameters themselves are fine too
        value = value.detach()
    return returned(value)


def _probe_adapter_state_dict(namespace, case):
    model = adapted_model(namespace, case)
    for name in case["trainable"]:
        W, b = trained_head(case, name)
        with torch.no_grad():
            model.get_submodule(name).weight.copy_(W)
            model.get_submodule(name).bias.copy_(b)
    state = namespace["adapter_state_dict"](model)
    if not isinstance(state, dict):
        return {"kind": type(state).__name__}
    data = {"kind": "dict", "entries": {str(key): _plain_entry(value) for key, value in state.items()}}
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
        data["saves"] = ""
    except Exception as error:
        data["saves"] = f"{type(error).__name__}: {safe_str(error)}"
    return data


def verdict_adapter_state_dict(case, data):
    if data["kind"] != "dict":
        fail(f"adapter_state_dict returned a {data['kind']}, but should return a dict "
             "{name: tensor}, as model.state_dict() does", case)
    expected = set(trainable_names(case))
    keys = set(data["entries"])
    frozen = sorted(keys & set(frozen_names(case)))
    if frozen:
        fail(f"the checkpoint holds frozen weights ({', '.join(frozen)}): an adapter checkpoint holds only "
             "what trained, so it stays small and never overwrites the base model", case)
    if keys != expected:
        missing, unknown = sorted(expected - keys), sorted(keys - expected)
        fail("the checkpoint's keys should be exactly the trainable parameters' names as model.state_dict() "
             f"spells them, {sorted(expected)}"
             + (f"; missing: {', '.join(missing)}" if missing else "")
             + (f"; not parameters of the model: {', '.join(unknown)}" if unknown else ""), case)
    values = {}
    for t in case["targets"]:
        values[f"{t}.lora_A.weight"], values[f"{t}.lora_B.weight"] = adapter_weights(case, t)
    for m in case["trainable"]:
        values[f"{m}.weight"], values[f"{m}.bias"] = trained_head(case, m)
    for key, value in values.items():
        entry = data["entries"][key]
        if entry["kind"] != "tensor" or entry.get("subclass"):
            fail(f"the checkpoint's {key} should be a tensor, not a {entry.get('subclass') or entry['kind']}", case)
        if entry["tensor"].shape != value.shape or not torch.equal(entry["tensor"], value):
            fail(f"the checkpoint's {key} is not the model's current {key} "
                 f"(expected {numbers(value)}, got {numbers(entry['tensor'])})", case)
    if data["saves"]:
        fail(f"torch.save then torch.load(..., weights_only=True) fails on the checkpoint ({data['saves']}): "
             "keep it a plain dict of tensors", case)


def _checkpoint(case, trained=2) -> dict:
    state = {}
    for t in case["targets"]:
        state[f"{t}.lora_A.weight"], state[f"{t}.lora_B.weight"] = adapter_weights(case, t, trained)
    for m in case["trainable"]:
        state[f"{m}.weight"], state[f"{m}.bias"] = trained_head(case, m, trained)
    return state


def _probe_load_adapter(namespace, case):
    model = adapted_model(namespace, case)
    namespace["load_adapter"](model, _checkpoint(case))
    return {"state": _state(model),
            "trainable": sorted(name for name, p in model.named_parameters() if p.requires_grad)}


def verdict_load_adapter(case, data):
    state = data["state"]
    expected = _checkpoint(case)
    for key, value in expected.items():
        seen = state.get(key)
        if seen is None:
            fail(f"after load_adapter the model has no {key}: load into the model's own parameters", case)
        if seen.shape != value.shape or not torch.equal(seen, value):
            fail(f"after load_adapter, {key} is not the checkpoint's (off by up to {max_error(seen, value):.3g}): "
                 "copy every entry of the checkpoint into the parameter of the same name "
                 "(model.load_state_dict(checkpoint, strict=False) does)", case)
    for name, (W, b) in base_weights(case).items():
        prefix = f"{name}.base_layer" if name in case["targets"] else name
        if name in case["trainable"]:
            continue
        for key, value in ((f"{prefix}.weight", W), (f"{prefix}.bias", b)):
            if key not in state or not torch.equal(state[key], value):
                fail(f"load_adapter changed the frozen {key}: it should change only what the checkpoint holds", case)
    if data["trainable"] != trainable_names(case):
        fail("load_adapter changed which parameters train (requires_grad): it should only copy values in", case)


MISMATCHES = {
    "a key spelled differently": lambda state, case: {
        (key.replace("lora_A", "lora_a") if i == 0 else key): value for i, (key, value) in enumerate(state.items())},
    "a trainable key missing": lambda state, case: dict(list(state.items())[:-1]),
    "a frozen base weight too": lambda state, case: {
        **state, frozen_names(case)[-1]: torch.zeros_like(_state_of_frozen(case, frozen_names(case)[-1]))},
}


def _state_of_frozen(case, key):
    name, part = key.replace(".base_layer", "").rsplit(".", 1)
    return getattr(_base_linears(case)[name], part).detach()


def _probe_load_mismatch(namespace, case):
    outcomes = {}
    for what, change in {"a matching checkpoint": lambda state, case: state, **MISMATCHES}.items():
        model = adapted_model(namespace, case)
        try:
            namespace["load_adapter"](model, change(_checkpoint(case), case))
            outcomes[what] = ""
        except NotImplementedError:
            raise
        except Exception as error:
            outcomes[what] = f"{type(error).__name__}: {safe_str(error)}"
    return outcomes


def verdict_load_mismatch(case, data):
    if data["a matching checkpoint"]:
        fail(f"load_adapter raised {data['a matching checkpoint']} on a checkpoint that fits the model: "
             "raise only when the keys do not match", case)
    for what, raised in data.items():
        if not raised and what != "a matching checkpoint":
            fail(f"load_adapter accepted a checkpoint with {what} without an error. A typo in a key, a "
                 "checkpoint for another model or one that would overwrite the base must stop loudly: "
                 "load_state_dict(..., strict=False) reports missing and unexpected keys but does not "
                 "raise, so check what it returns (or the keys yourself) and raise", case)


# --- merge_all --------------------------------------------------------------------------------

def _probe_merge_all(namespace, case):
    model = adapted_model(namespace, case)
    x = _input(case)
    before = _state(model)
    merged = namespace["merge_all"](model)
    if not isinstance(merged, nn.Module):
        raise ProbeError(f"merge_all returned {'None' if merged is None else 'a ' + type(merged).__name__}: "
                         "it should return a new model")
    data = {
        "modules": {name: {"type": type(module).__name__, "lora": any(
            hasattr(module, a) for a in ("lora_A", "lora_B", "base_layer"))} for name, module in merged.named_modules()},
        "state": {key: value.detach().clone() for key, value in merged.state_dict().items()},
    }
    after = _state(model)
    data["left_unchanged"] = after.keys() == before.keys() and all(torch.equal(after[key], before[key]) for key in before)
    with torch.no_grad():
        data["out"] = merged(x)
        for p in model.parameters():  # as more training, or an unmerge, would change it
            p.add_(1.0)
        data["out_after_model_changed"] = merged(x)
    return data


def verdict_merge_plain(case, data):
    lora = sorted(name or "the model" for name, module in data["modules"].items() if module["lora"])
    if lora:
        fail(f"the merged model still holds LoRA parts ({', '.join(lora)}): replace every LoRALinear by a "
             "plain nn.Linear holding the merged weight", case)
    for name in linear_names(case):
        seen = data["modules"].get(name)
        if seen is None or seen["type"] != "Linear":
            fail(f"the merged model's {name!r} should be an nn.Linear, "
                 f"not {'missing' if seen is None else 'a ' + seen['type']}", case)
    expected = {f"{name}.{p}": (k, d) if p == "weight" else (k,)
                for name, (d, k) in _linear_shapes(case).items() for p in ("weight", "bias")}
    seen = {key: tuple(value.shape) for key, value in data["state"].items()}
    if seen != expected:
        fail(f"the merged model's state_dict should have exactly the pretrained model's keys and shapes "
             f"{expected}, so that it loads into the original architecture, but it has {seen}", case)


def verdict_merge_outputs(case, data):
    weights = merged_weights(case)
    for name, (W, b) in weights.items():
        seen = data["state"].get(f"{name}.weight")
        if seen is None or not is_close(seen, W):
            what = "W + scaling · lora_B.weight @ lora_A.weight" if name in case["targets"] else "the pretrained W"
            fail(f"the merged weight of {name!r} should be {what}"
                 + (f", but differs by up to {max_error(seen, W):.3g}" if seen is not None and seen.shape == W.shape else ""),
                 case)
        bias = data["state"].get(f"{name}.bias")
        if bias is None or not torch.equal(bias, b.float()):
            fail(f"the merged {name!r} should keep the pretrained bias, bit for bit", case)
    expected = forward64(case, weights)
    if not is_close(data["out"], expected):
        fail(f"the merged model's output differs from the adapted model's by up to {max_error(data['out'], expected):.3g}",
             case)


def verdict_merge_leaves_model(case, data):
    if not data["left_unchanged"]:
        fail("merge_all changed the adapted model it was given: build the merged model from a copy "
             "(copy.deepcopy) and leave the original as it was, adapters and all", case)
    if not torch.equal(data["out"], data["out_after_model_changed"]):
        fail("the merged model shares tensors with the adapted model: when the grader then changed the adapted "
             "model's parameters in place, the merged model's output changed too. Give it its own copies", case)


# --- the paper's table ------------------------------------------------------------------------

def _probe_paper_count(namespace, case):
    return returned(namespace["lora_trainable_parameters"](case["num_layers"], case["d_model"], dict(case["ranks"])))


def verdict_paper_count(case, data):
    L, d, ranks = case["num_layers"], case["d_model"], case["ranks"]
    expected = L * sum(2 * d * r for r in ranks.values())
    if data["kind"] != "int":
        fail(f"lora_trainable_parameters should return an int, not a {data['kind']} "
             f"({data.get('value', data.get('repr'))})", case)
    seen = data["value"]
    if seen == expected:
        return
    hints = (
        (expected // 2, "each adapted matrix gets two factors, A (r × d_model) and B (d_model × r)"),
        (expected // L, "every one of the num_layers layers has its own adapters"),
        (L * d * d * sum(1 for r in ranks.values() if r), "that is the size of the full matrices, not of their adapters"),
    )
    hint = next((why for count, why in hints if count == seen), "")
    fail(f"lora_trainable_parameters returned {seen:,} but expected {expected:,}" + (f": {hint}" if hint else ""), case)


def _probe_paper_millions(namespace, case):
    value = namespace["paper_millions"](case["count"])
    if isinstance(value, str):
        return {"kind": "str", "value": str.__str__(value)[:40]}
    return returned(value)


def verdict_paper_millions(case, data):
    n = case["count"]
    tenths = n // 100_000
    expected = f"{tenths // 10}.{tenths % 10}M"
    if data["kind"] != "str":
        fail(f"paper_millions should return a str like '4.7M', not a {data['kind']}", case)
    seen = data["value"]
    if seen != expected:
        rounded = f"{n / 1e6:.1f}M"
        hint = ("that is rounded; the paper truncates (18,874,368 is printed 18.8M)"
                if seen == rounded else "one decimal, truncated, then 'M'")
        fail(f"paper_millions({n:,}) returned {seen!r} but expected {expected!r}: {hint}", case)


# --- the checks -------------------------------------------------------------------------------

def _case(model, widths, targets, trainable, rank, alpha, x_shape, seed):
    return {"model": model, "widths": list(widths), "targets": list(targets), "trainable": list(trainable),
            "rank": rank, "alpha": alpha, "x_shape": list(x_shape), "seed": seed}


# Non-square layers, alpha != rank; a flat Sequential and a nested one with dotted names.
# Visible: two targets and a trainable head, one dotted target, and nothing trainable besides the
# adapters. Hidden: the same, with other sizes, ranks, targets and seeds.
MODEL_CASES = (
    _case("mlp", (12, 20, 16, 5), ("0", "2"), ("4",), 2, 6, (5, 12), 500),
    _case("nested", (9, 14, 11, 4), ("body.fc2",), ("head",), 3, 4, (2, 3, 9), 510),
    _case("mlp", (8, 15, 6), ("0", "2"), (), 3, 9, (3, 8), 540),
)
COUNT_CASES = MODEL_CASES + ({"model": TIED},)


def _paper(num_layers, d_model, ranks):
    return {"num_layers": num_layers, "d_model": d_model, "ranks": dict(ranks)}


PAPER_CASES = (
    _paper(96, 12288, {"Wq": 1, "Wv": 1}),
    _paper(96, 12288, {"Wq": 8, "Wv": 8}),
    _paper(96, 12288, {"Wq": 2, "Wk": 2, "Wv": 2, "Wo": 2}),
    _paper(96, 12288, {"Wv": 8}),
)
MILLION_CASES = tuple({"count": n} for n in (4_718_592, 18_874_368, 301_989_888, 37_748_736))
HIDDEN = hidden_cases_of("nb05", _case, _paper)
MODEL_HIDDEN = COUNT_HIDDEN = HIDDEN["model"]
PAPER_HIDDEN, MILLION_HIDDEN = HIDDEN["paper"], HIDDEN["millions"]


CHECKS = (
    Check("add_lora_wraps_targets", "add_lora", 2, _probe_add_lora, verdict_wraps_targets, MODEL_CASES, MODEL_HIDDEN),
    Check("add_lora_starts_as_base", "add_lora", 1, _probe_add_lora, verdict_starts_as_base, MODEL_CASES, MODEL_HIDDEN),
    Check("add_lora_trainable", "add_lora", 2, _probe_add_lora, verdict_trainable, MODEL_CASES, MODEL_HIDDEN),
    Check("count_parameters", "count_parameters", 2, _probe_count, verdict_count, COUNT_CASES, COUNT_HIDDEN),
    Check("adapter_state_dict", "adapter_state_dict", 2, _probe_adapter_state_dict, verdict_adapter_state_dict,
          MODEL_CASES, MODEL_HIDDEN),
    Check("load_adapter_round_trip", "load_adapter", 2, _probe_load_adapter, verdict_load_adapter,
          MODEL_CASES, MODEL_HIDDEN),
    Check("load_adapter_rejects_mismatch", "load_adapter", 1, _probe_load_mismatch, verdict_load_mismatch,
          MODEL_CASES, MODEL_HIDDEN),
    Check("merge_all_plain_model", "merge_all", 1, _probe_merge_all, verdict_merge_plain, MODEL_CASES, MODEL_HIDDEN),
    Check("merge_all_outputs", "merge_all", 2, _probe_merge_all, verdict_merge_outputs, MODEL_CASES, MODEL_HIDDEN),
    Check("merge_all_leaves_model", "merge_all", 1, _probe_merge_all, verdict_merge_leaves_model,
          MODEL_CASES, MODEL_HIDDEN),
    Check("paper_table_counts", "lora_trainable_parameters", 2, _probe_paper_count, verdict_paper_count,
          PAPER_CASES, PAPER_HIDDEN),
    Check("paper_millions", "paper_millions", 1, _probe_paper_millions, verdict_paper_millions,
          MILLION_CASES, MILLION_HIDDEN),
)
