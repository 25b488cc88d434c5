"""Checks for notebook 04: merging the adapter into the frozen weight, and exporting it.

Every probe builds the student's MergeableLoRALinear on the grader's base layer, loads a known
non-zero adapter, and records what merging, unmerging and exporting leave behind. Inputs and
probes only (the sandbox imports this): the verdicts are in lora_grader.verdicts.nb04 and
nb04_export, and lora_grader.answers.nb04 computes W, b, x and scaling · lora_B.weight @
lora_A.weight in float64 from the case alone.

The contract the notebook states: merge_lora() adds the update to the existing base weight
Parameter in place (same object, still a frozen leaf); while merged, forward is the base layer
alone; merging twice or unmerging an unmerged layer changes nothing (a no-op or an exception,
either is fine); export_merged(layer) works in either state, returns a new frozen nn.Linear that
shares no storage with the layer, and leaves the layer as it was (up to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_grader.checks.core import (
    Check, ProbeError, base_linear, hidden_cases_of, plain, returned, safe_str, storage_of, tensor,
    true_grad_fn, true_parameters, true_requires_grad,
)
from lora_grader.checks.layer import layer_cases

MANUAL_POINTS = {"why_no_grad": 2}

MISSING = object()


# --- inputs, built the same way by the probe and by lora_grader.answers.nb04 ------------------

def sizes(case):
    return case["in_features"], case["out_features"], case["rank"]


def adapter_weights(case) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-zero lora_A.weight (r, in) and lora_B.weight (out, r): as if trained."""
    d, k, r = sizes(case)
    return tensor((r, d), case["seed"] + 5, d ** -0.5), tensor((k, r), case["seed"] + 6, 0.5)


def layer_input(case) -> torch.Tensor:
    return tensor(case["x_shape"], case["seed"] + 4)


# --- probing ----------------------------------------------------------------------------------

def _build(namespace, case):
    """The student's layer on the grader's base, with the grader's adapter loaded."""
    d, k, r = sizes(case)
    torch.manual_seed(case["seed"])
    layer = namespace["MergeableLoRALinear"](base_linear(d, k, case["seed"]), rank=r, alpha=case["alpha"])
    A, B = adapter_weights(case)
    for name, value in (("lora_A", A), ("lora_B", B)):
        module = getattr(layer, name, None)
        if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != tuple(value.shape):
            raise ProbeError(f"`{name}` should be the nn.Linear the given LoRALinear creates, with weight "
                             f"of shape {tuple(value.shape)}: did __init__ call super().__init__(...)?")
        with torch.no_grad():
            module.weight.copy_(value)
    if not isinstance(getattr(layer, "base_layer", None), nn.Linear):
        raise ProbeError("`base_layer` should be the nn.Linear passed to the constructor")
    return layer, layer_input(case)


def _copy(value):
    """A snapshot: the probe goes on changing the layer after recording what it holds."""
    return value.detach().clone() if isinstance(value, torch.Tensor) else None


def _flag(layer) -> dict:
    value = getattr(layer, "merged", MISSING)
    return {"kind": "missing"} if value is MISSING else returned(value)


def _output(module, x) -> torch.Tensor:
    out = module(x)
    if not isinstance(out, torch.Tensor):
        raise ProbeError(f"forward returned a {type(out).__name__}, not a tensor")
    return _copy(out)


def _forward(layer, x) -> dict:
    """The output, or why there is none: a broken forward must not cost the weight checks."""
    try:
        return {"out": _output(layer, x)}
    except NotImplementedError:
        return {"out_error": "forward is not implemented yet (it still raises NotImplementedError)"}
    except Exception as error:
        return {"out_error": f"forward raised {_error_text(error)}"}


def _true_attribute(module, name: str):
    """module.<name> as nn.Module stores it, whatever the student's class says about it."""
    own = object.__getattribute__(module, "__dict__")
    for table in ("_parameters", "_buffers", "_modules"):
        if name in (own.get(table) or {}):
            return dict.__getitem__(own[table], name)
    return own[name] if name in own else getattr(module, name)


def _state(layer, x, original_weight) -> dict:
    """What merging or unmerging left behind: the base weight (and whether it is still the
    original frozen leaf Parameter), the bias, the flag and the output."""
    base = _true_attribute(layer, "base_layer")
    weight = _true_attribute(base, "weight")
    if not isinstance(weight, torch.Tensor):
        raise ProbeError(f"base_layer.weight is no longer a tensor but a {type(weight).__name__}")
    bias = _true_attribute(base, "bias")
    return {
        "weight": _copy(weight),
        "bias": _copy(bias),
        "plain_out": _plain_linear(weight, bias, x),
        "same_object": weight is original_weight,
        "requires_grad": true_requires_grad(weight),
        "grad_fn": true_grad_fn(weight),
        "flag": _flag(layer),
        **_forward(layer, x),
    }


def _plain_linear(weight, bias, x):
    """What a plain nn.Linear holding this weight and bias computes on x, in float64 (torch's own
    linear on plain copies, whatever the student's tensors say), or None if they do not fit x."""
    if bias is not None and not isinstance(bias, torch.Tensor):
        return None
    weight, bias = plain(weight), None if bias is None else plain(bias)
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        return None
    if bias is not None and tuple(bias.shape) != tuple(weight.shape[:1]):
        return None
    with torch.no_grad():
        return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {safe_str(error)}"


def _tolerated(step, layer, x, original_weight) -> dict:
    """Run a call that may legitimately raise; record the state it leaves either way."""
    try:
        step()
        error = None
    except Exception as raised:  # raising instead of doing nothing is allowed here
        error = _error_text(raised)
    return {**_state(layer, x, original_weight), "error": error}


def _probe_merge(namespace, case):
    layer, x = _build(namespace, case)
    original = layer.base_layer.weight
    data = {"flag_new": _flag(layer), "before": _forward(layer, x)}
    layer.merge_lora()
    data["merged"] = _state(layer, x, original)
    data["again"] = _tolerated(layer.merge_lora, layer, x, original)
    return data


def _probe_unmerge(namespace, case):
    layer, x = _build(namespace, case)
    original = layer.base_layer.weight
    layer.merge_lora()
    data = {"merged_weight": _copy(layer.base_layer.weight)}
    layer.unmerge_lora()
    data["unmerged"] = _state(layer, x, original)
    # unmerge_lora has run once without raising, so an exception from here on is a choice
    data["again"] = _tolerated(layer.unmerge_lora, layer, x, original)
    fresh, _ = _build(namespace, case)
    data["fresh_before"] = _state(fresh, x, fresh.base_layer.weight)
    data["fresh"] = _tolerated(fresh.unmerge_lora, fresh, x, fresh.base_layer.weight)
    return data


def _snapshot(layer, x) -> dict:
    return {
        "weight": _copy(layer.base_layer.weight), "bias": _copy(layer.base_layer.bias),
        "A": _copy(layer.lora_A.weight), "B": _copy(layer.lora_B.weight),
        "flag": _flag(layer), **_forward(layer, x),
    }


def _exported(exported, x, case, layer) -> dict:
    if not isinstance(exported, nn.Linear):
        return {"is_linear": False, "kind": type(exported).__name__}
    d, k, _ = sizes(case)
    weight, bias = _true_attribute(exported, "weight"), _true_attribute(exported, "bias")
    shapes_fit = tuple(weight.shape) == (k, d) and (bias is None or tuple(bias.shape) == (k,))
    layer_storage = {storage_of(p) for _, p in true_parameters(layer)}
    return {
        "is_linear": True,
        "weight": _copy(weight), "bias": _copy(bias),
        "parameters": [
            {"name": name, "requires_grad": true_requires_grad(p), "grad_fn": true_grad_fn(p)}
            for name, p in true_parameters(exported)
        ],
        "shares_storage": [name for name, p in true_parameters(exported) if storage_of(p) in layer_storage],
        "out": _output(exported, x) if shapes_fit else None,
    }


def _layer_to_export(namespace, case):
    """The student's own layer: export_merged may rely on its helpers and its merge_lora()."""
    if "MergeableLoRALinear" not in namespace:
        raise ProbeError("export_merged is tested on your MergeableLoRALinear, which is not defined: "
                         "run its cell first")
    try:
        return _build(namespace, case)
    except NotImplementedError:
        raise ProbeError("export_merged is tested on your MergeableLoRALinear, which is not implemented "
                         "yet (its __init__ still raises NotImplementedError)") from None


def _probe_export(namespace, case):
    data = {}
    for state in ("unmerged", "merged"):
        layer, x = _layer_to_export(namespace, case)
        if state == "merged":
            try:
                layer.merge_lora()
            except Exception as error:
                raise ProbeError("export_merged is also tested on a merged layer, and your merge_lora() "
                                 f"raised {_error_text(error)}: fix merge_lora first") from None
        before = _snapshot(layer, x)
        exported = namespace["export_merged"](layer)
        entry = {"before": before, "after": _snapshot(layer, x), "export": _exported(exported, x, case, layer)}
        if entry["export"].get("out") is not None:
            with torch.no_grad():  # a later unmerge or more training, in the bluntest form
                for parameter in layer.parameters():
                    parameter.add_(1.0)
            entry["export_out_after_layer_changed"] = _output(exported, x)
        data[state] = entry
    return data


# --- the checks -------------------------------------------------------------------------------

CASES = layer_cases([(12, 20, 4, 6, (5, 12)), (9, 9, 2, 5, (2, 3, 9))], seeds=(400, 410))
HIDDEN_CASES = hidden_cases_of("nb04", layer_cases)["layer"]


def _check(name, task, points, probe, verdict):
    module = "nb04_export" if task == "export_merged" else "nb04"
    return Check(name, task, points, probe, f"lora_grader.verdicts.{module}:{verdict}", CASES, HIDDEN_CASES,
                 explain="lora_grader.verdicts.nb04:explain_error", expect="lora_grader.answers.nb04:reference")


CHECKS = (
    _check("merge_lora_weight", "MergeableLoRALinear", 2, _probe_merge, "merge_weight"),
    _check("merge_lora_flag", "MergeableLoRALinear", 1, _probe_merge, "merge_flag"),
    _check("merged_forward_is_plain_linear", "MergeableLoRALinear", 2, _probe_merge, "merged_forward_is_plain_linear"),
    _check("merge_keeps_output", "MergeableLoRALinear", 1, _probe_merge, "merge_keeps_output"),
    _check("merged_weight_frozen_leaf", "MergeableLoRALinear", 1, _probe_merge, "merged_weight_frozen_leaf"),
    _check("merge_twice_changes_nothing", "MergeableLoRALinear", 1, _probe_merge, "merge_twice"),
    _check("unmerge_lora_restores_weight", "MergeableLoRALinear", 2, _probe_unmerge, "unmerge_restores"),
    _check("unmerge_lora_forward", "MergeableLoRALinear", 1, _probe_unmerge, "unmerge_forward"),
    _check("unmerge_when_not_merged", "MergeableLoRALinear", 1, _probe_unmerge, "unmerge_when_not_merged"),
    _check("export_merged_output", "export_merged", 2, _probe_export, "export_output"),
    _check("export_merged_frozen", "export_merged", 1, _probe_export, "export_frozen"),
    _check("export_merged_leaves_layer", "export_merged", 1, _probe_export, "export_leaves_layer"),
)
