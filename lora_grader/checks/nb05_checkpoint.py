"""Notebook 05's probes of the adapter checkpoint and the merge: adapter_state_dict, load_adapter
and merge_all, each given a model built with the notebook's LoRALinear and known adapters.

Inputs and probes only: each probe sends back what the student's function returned and the state
it left the model in, read as nn.Module stores it (nb05_models.state); the verdicts
(lora_grader.verdicts.nb05_checkpoint) compare that with values lora_grader.answers.nb05 computes
from the case.
"""
from __future__ import annotations

import io

import torch
import torch.nn as nn

from lora_grader.checks.core import returned, true_parameters
from lora_grader.checks.nb05_models import (
    adapted_model, adapter_weights, attribute, checkpoint, copy, error_text, kind, linear_shapes, model_input,
    state, submodule, trainable, trained_head, walk,
)

_LINEAR = nn.Linear  # as torch defines it, whatever a cell later assigns to torch.nn.Linear


# --- adapter_state_dict -----------------------------------------------------------------------

def _key(key) -> str:
    return str.__str__(key) if isinstance(key, str) else f"<{type(key).__name__} {returned(key).get('value', '')}>"


def _entry(value):
    if type(value) is nn.Parameter:  # the parameters themselves are fine too
        value = copy(value)
    return returned(value)


def _saves(value) -> str:
    """'' if torch.save then torch.load(..., weights_only=True) round-trips the value, else why not."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as error:
        return error_text(error)
    return ""


def _probe_adapter_state_dict(namespace, case):
    model = adapted_model(namespace, case)
    for name in case["trainable"]:
        layer = submodule(model, name)
        with torch.no_grad():
            for part, value in zip(("weight", "bias"), trained_head(case, name)):
                attribute(layer, part).copy_(value)
    result = namespace["adapter_state_dict"](model)
    if not isinstance(result, dict):
        return {"kind": kind(result)}
    # the dict's own entries, whatever its class says its items are
    return {"kind": "dict", "type": type(result).__name__,
            "entries": {_key(key): _entry(value) for key, value in dict.items(result)},
            "saves": _saves(result)}


# --- load_adapter -----------------------------------------------------------------------------

def _probe_load_adapter(namespace, case):
    model = adapted_model(namespace, case)
    namespace["load_adapter"](model, checkpoint(case))
    return {"state": state(model), "trainable": trainable(model)}


def mismatched(case, what: str) -> dict:
    """The case's checkpoint, changed as `what` says ('fits' leaves it as it is)."""
    entries = checkpoint(case)
    first, last = case["targets"][0], case["targets"][-1]
    if what == "misspelled":
        key = f"{first}.lora_A.weight"
        entries = {(name.replace("lora_A", "lora_a") if name == key else name): value
                   for name, value in entries.items()}
    elif what == "missing":
        entries = dict(list(entries.items())[:-1])
    elif what == "frozen":
        d, k = linear_shapes(case)[last]
        entries[f"{last}.base_layer.weight"] = torch.zeros(k, d)
    elif what == "wrong_shape":  # an adapter saved at another rank; rank 1 broadcasts into any rank
        rank = 1 if case["rank"] > 1 else 2
        entries[f"{first}.lora_A.weight"], entries[f"{first}.lora_B.weight"] = adapter_weights(case, first, 2, rank)
    return entries


MISMATCHES = ("fits", "misspelled", "missing", "frozen", "wrong_shape")


def _probe_load_mismatch(namespace, case):
    """For each checkpoint: the error load_adapter raised ('' if none) and the state it left."""
    outcomes = []
    for what in MISMATCHES:
        model = adapted_model(namespace, case)
        try:
            namespace["load_adapter"](model, mismatched(case, what))
            raised = ""
        except NotImplementedError:
            raise
        except Exception as error:
            raised = error_text(error)
        outcomes.append({"what": what, "raised": raised, "state": state(model)})
    return outcomes


# --- merge_all --------------------------------------------------------------------------------

def _probe_merge_all(namespace, case):
    model, x = adapted_model(namespace, case), model_input(case)
    merged = namespace["merge_all"](model)
    if not isinstance(merged, nn.Module):
        return {"returned": kind(merged)}
    data = {
        "returned": "module",
        "modules": {path: {"type": type(module).__name__, "linear": type(module) is _LINEAR,
                           "lora": any(attribute(module, part) is not None
                                       for part in ("lora_A", "lora_B", "base_layer"))}
                    for path, module in walk(merged)},
        "state": state(merged),
        "model_after": state(model),
    }
    with torch.no_grad():
        try:
            data["out"] = copy(merged(x))
        except Exception as error:
            data["out_error"] = error_text(error)
            return data
        for _, p in true_parameters(model):  # as more training, or an unmerge, would change it
            p.add_(1.0)
        data["out_after_model_changed"] = copy(merged(x))
    return data
