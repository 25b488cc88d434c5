"""Checks for notebook 05: LoRA on a whole model. Injecting adapters into named modules,
counting parameters, an adapter-only checkpoint, merging every adapter, and the paper's table.

Inputs and probes only (the sandbox imports this). The models, the known weights and the readers
that see a model as nn.Module stores it are in nb05_models; the checkpoint and merge probes in
nb05_checkpoint. The verdicts are in lora_grader.verdicts.nb05 and nb05_checkpoint; the expected
values, computed in float64 from the case, in lora_grader.answers.nb05.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lora_grader.checks.core import (
    Check, hidden_cases_of, returned, tensor, true_grad, true_numel, true_parameters, true_requires_grad,
)
from lora_grader.checks.nb05_checkpoint import (
    _probe_adapter_state_dict, _probe_load_adapter, _probe_load_mismatch, _probe_merge_all,
)
from lora_grader.checks.nb05_models import (
    TIED, adapter_weights, attribute, build_model, copy, count_model, dotted_children, error_text, is_lora, kind,
    linear_names, model_input, own_dict, submodule, walk,
)

MANUAL_POINTS = {"why_lora_beats_the_head": 2}
VERDICTS, CHECKPOINT_VERDICTS = "lora_grader.verdicts.nb05", "lora_grader.verdicts.nb05_checkpoint"
ANSWERS = "lora_grader.answers.nb05"


# --- add_lora ---------------------------------------------------------------------------------

def _number(value):
    return value if type(value) in (int, float) else None


def _module_info(module) -> dict | None:
    if module is None:
        return None
    return {"type": type(module).__name__, "lora": is_lora(module),
            "rank": _number(attribute(module, "rank")), "scaling": _number(attribute(module, "scaling"))}


def _probe_add_lora(namespace, case):
    model, x = build_model(case), model_input(case)
    with torch.no_grad():
        out_before = copy(model(x))
    result = namespace["add_lora"](model, list(case["targets"]), rank=case["rank"], alpha=case["alpha"],
                                   trainable=list(case["trainable"]))
    if not isinstance(result, nn.Module):
        return {"returned": kind(result)}
    data = {
        "returned": "module", "in_place": result is model, "out_before": out_before,
        "dotted_children": dotted_children(result),
        "targets": {name: _module_info(submodule(result, name)) for name in case["targets"]},
        "lora_modules": sorted(path for path, module in walk(result) if is_lora(module)),
        "module_flags": sorted(path or "the model" for path, module in walk(result)
                               if "requires_grad" in own_dict(module)),
        "linears": {},
        "parameters": [{"name": name, "numel": true_numel(p), "requires_grad": true_requires_grad(p)}
                       for name, p in true_parameters(result)],
    }
    for name in linear_names(case):
        module = submodule(result, name)
        inner = attribute(module, "base_layer") if is_lora(module) else module
        if isinstance(inner, nn.Linear):
            data["linears"][name] = {"weight": copy(attribute(inner, "weight")), "bias": copy(attribute(inner, "bias"))}
    try:
        with torch.no_grad():
            out = result(x)
    except Exception as error:
        data["out_init_error"] = error_text(error)
        return data
    if not isinstance(out, torch.Tensor):
        data["out_init_error"] = f"it returned {kind(out)}, not a tensor"
        return data
    data["out_init"] = copy(out)
    _measure_adapters(result, case, data)
    _train_a_little(result, case, data)
    return data


def _measure_adapters(model, case, data):
    """Load known adapters into every target, record the output, and put the fresh ones back."""
    layers = {}
    for name in case["targets"]:
        module = submodule(model, name)
        if not is_lora(module):
            return
        A, B = attribute(attribute(module, "lora_A"), "weight"), attribute(attribute(module, "lora_B"), "weight")
        known = adapter_weights(case, name)
        if not all(isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(k.shape) for t, k in zip((A, B), known)):
            return
        layers[name] = (A, B)
    originals = {name: (copy(A), copy(B)) for name, (A, B) in layers.items()}
    with torch.no_grad():
        for name, (A, B) in layers.items():
            known_A, known_B = adapter_weights(case, name)
            A.copy_(known_A)
            B.copy_(known_B)
        data["out_adapted"] = copy(model(model_input(case)))
        for name, (A, B) in layers.items():
            A.copy_(originals[name][0])
            B.copy_(originals[name][1])


def _train_a_little(model, case, data):
    """A few gradient steps on what truly requires grad, as the notebook's train() takes them (by
    hand: torch.optim's first step imports torch._dynamo, seconds in every fresh probe process).
    The verdict reads which parameters moved."""
    x = model_input(case)
    weights = tensor(data["out_init"].shape, case["seed"] + 7)
    parameters = [p for _, p in true_parameters(model) if true_requires_grad(p)]
    try:
        for _ in range(3 if parameters else 0):
            for p in parameters:
                p.grad = None
            (model(x) * weights).sum().backward()
            with torch.no_grad():
                for p in parameters:
                    grad = true_grad(p)
                    if grad is not None:
                        p -= 0.05 * grad
    except Exception as error:
        data["train_error"] = error_text(error)
    data["after_training"] = {name: copy(p) for name, p in true_parameters(model)}


# --- count_parameters -------------------------------------------------------------------------

def _probe_count(namespace, case):
    value = namespace["count_parameters"](count_model(namespace, case))
    if not isinstance(value, (tuple, list)):
        return {"kind": type(value).__name__, "repr": returned(value)}
    return {"kind": "pair", "items": [returned(item) for item in value]}


# --- the paper's table ------------------------------------------------------------------------

def _probe_paper_count(namespace, case):
    return returned(namespace["lora_trainable_parameters"](case["num_layers"], case["d_model"], dict(case["ranks"])))


def _probe_paper_millions(namespace, case):
    value = namespace["paper_millions"](case["count"])
    if isinstance(value, str):
        return {"kind": "str", "value": str.__str__(value)[:40]}
    return returned(value)


# --- the cases and the checks -----------------------------------------------------------------

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
    _paper(96, 12288, {"Wq": 8, "Wk": 2, "Wv": 4}),  # one rank per type, not one for all
)
MILLION_CASES = tuple({"count": n} for n in (4_718_592, 18_874_368, 301_989_888, 37_748_736))
HIDDEN = hidden_cases_of("nb05", _case, _paper)
MODEL_HIDDEN = COUNT_HIDDEN = HIDDEN["model"]
PAPER_HIDDEN, MILLION_HIDDEN = HIDDEN["paper"], HIDDEN["millions"]


def _model_check(name, task, points, probe, verdict, expect, module=VERDICTS, cases=MODEL_CASES, hidden=MODEL_HIDDEN):
    return Check(name, task, points, probe, f"{module}:{verdict}", cases, hidden,
                 explain=f"{module}:explain_{task}", expect=f"{ANSWERS}:{expect}")


CHECKS = (
    _model_check("add_lora_wraps_targets", "add_lora", 2, _probe_add_lora, "wraps_targets", "add_lora"),
    _model_check("add_lora_starts_as_base", "add_lora", 1, _probe_add_lora, "starts_as_base", "add_lora"),
    _model_check("add_lora_trainable", "add_lora", 2, _probe_add_lora, "trainable", "add_lora"),
    _model_check("count_parameters", "count_parameters", 2, _probe_count, "count", "count_parameters",
                 cases=COUNT_CASES, hidden=COUNT_HIDDEN),
    _model_check("adapter_state_dict", "adapter_state_dict", 2, _probe_adapter_state_dict,
                 "adapter_state_dict", "adapter_state_dict", CHECKPOINT_VERDICTS),
    _model_check("load_adapter_round_trip", "load_adapter", 2, _probe_load_adapter, "load_round_trip",
                 "load_adapter", CHECKPOINT_VERDICTS),
    _model_check("load_adapter_rejects_mismatch", "load_adapter", 1, _probe_load_mismatch, "load_mismatch",
                 "load_adapter", CHECKPOINT_VERDICTS),
    _model_check("merge_all_plain_model", "merge_all", 1, _probe_merge_all, "merge_plain", "merge_all",
                 CHECKPOINT_VERDICTS),
    _model_check("merge_all_outputs", "merge_all", 2, _probe_merge_all, "merge_outputs", "merge_all",
                 CHECKPOINT_VERDICTS),
    _model_check("merge_all_leaves_model", "merge_all", 1, _probe_merge_all, "merge_leaves_model", "merge_all",
                 CHECKPOINT_VERDICTS),
    Check("paper_table_counts", "lora_trainable_parameters", 2, _probe_paper_count,
          f"{VERDICTS}:paper_count", PAPER_CASES, PAPER_HIDDEN, expect=f"{ANSWERS}:paper_count"),
    Check("paper_millions", "paper_millions", 1, _probe_paper_millions, f"{VERDICTS}:paper_millions",
          MILLION_CASES, MILLION_HIDDEN, expect=f"{ANSWERS}:paper_millions"),
)
