"""Checks for notebook 04: merging the adapter into the frozen weight, and exporting it.

Every probe builds the student's MergeableLoRALinear on the grader's base layer, loads a known
non-zero adapter, and records what merging, unmerging and exporting leave behind. The verdicts
rebuild W, b, x and scaling · lora_B.weight @ lora_A.weight in float64 from the case alone.

The contract the notebook states: merge_lora() adds the update to the existing base weight
Parameter in place (same object, still a frozen leaf); while merged, forward is the base layer
alone; merging twice or unmerging an unmerged layer changes nothing (a no-op or an exception,
either is fine); export_merged(layer) works in either state, returns a new frozen nn.Linear that
shares no storage with the layer, and leaves the layer as it was (up to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lora_grader.checks.core import (
    Check, ProbeError, base_linear, fail, fit_scale, is_close, max_error, numbers, returned,
    safe_str, shape_str, storage_of, tensor, true_grad_fn, true_parameters, true_requires_grad,
)
from lora_grader.checks.core import hidden_cases_of
from lora_grader.checks.layer import layer_cases, scaling_hint

MANUAL_POINTS = {"why_no_grad": 2}

MISSING = object()


# --- inputs, built the same way in the probe and in the verdict -------------------------------

def _sizes(case):
    return case["in_features"], case["out_features"], case["rank"]


def _scaling(case) -> float:
    return case["alpha"] / case["rank"]


def _adapter_weights(case) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-zero lora_A.weight (r, in) and lora_B.weight (out, r): as if trained."""
    d, k, r = _sizes(case)
    return tensor((r, d), case["seed"] + 5, d ** -0.5), tensor((k, r), case["seed"] + 6, 0.5)


def _input(case) -> torch.Tensor:
    return tensor(case["x_shape"], case["seed"] + 4)


def _reference(case):
    """W, b, the update scaling · B @ A (out, in), and x, all float64."""
    d, k, _ = _sizes(case)
    base = base_linear(d, k, case["seed"])
    A, B = (t.double() for t in _adapter_weights(case))
    return base.weight.double(), base.bias.double(), _scaling(case) * (B @ A), _input(case).double()


def _expected_output(case) -> torch.Tensor:
    W, b, delta, x = _reference(case)
    return x @ (W + delta).T + b


# --- probing ----------------------------------------------------------------------------------

def _build(namespace, case):
    """The student's layer on the grader's base, with the grader's adapter loaded."""
    d, k, r = _sizes(case)
    torch.manual_seed(case["seed"])
    layer = namespace["MergeableLoRALinear"](base_linear(d, k, case["seed"]), rank=r, alpha=case["alpha"])
    A, B = _adapter_weights(case)
    for name, value in (("lora_A", A), ("lora_B", B)):
        module = getattr(layer, name, None)
        if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != tuple(value.shape):
            raise ProbeError(f"`{name}` should be the nn.Linear the given LoRALinear creates, with weight "
                             f"of shape {shape_str(value.shape)}: did __init__ call super().__init__(...)?")
        with torch.no_grad():
            module.weight.copy_(value)
    if not isinstance(getattr(layer, "base_layer", None), nn.Linear):
        raise ProbeError("`base_layer` should be the nn.Linear passed to the constructor")
    return layer, _input(case)


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
    return {
        "weight": _copy(weight),
        "bias": _copy(_true_attribute(base, "bias")),
        "same_object": weight is original_weight,
        "requires_grad": true_requires_grad(weight),
        "grad_fn": true_grad_fn(weight),
        "flag": _flag(layer),
        **_forward(layer, x),
    }


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
    d, k, _ = _sizes(case)
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


# --- explaining errors ------------------------------------------------------------------------

def _explain_error(case, outcome) -> str | None:
    message = outcome.get("message", "")
    d, k, r = _sizes(case)
    if "Cannot assign non-leaf Tensor" in message:
        return ("autograd recorded the in-place add (the update comes from lora_A and lora_B, which "
                "require grad), so the weight stopped being a leaf and nn.Module refused to store it back, "
                "after it had already been changed. Do the update in place under torch.no_grad(), e.g. "
                "`with torch.no_grad(): weight.add_(update)`.")
    if "leaf Variable that requires grad" in message:
        return ("an in-place change to a Parameter that requires grad, with autograd on: do it under "
                "torch.no_grad() (and is the base layer frozen?)")
    if "cannot assign" in message and "as parameter" in message:
        return ("base_layer.weight is an nn.Parameter and will not be replaced by a plain tensor: change "
                "its values in place instead, e.g. `with torch.no_grad(): weight.add_(update)`")
    if "must match" in message and f"({d})" in message and f"({k})" in message:
        return (f"the update has the transposed shape: nn.Linear stores its weight as (out, in) = ({k}, {d}), "
                f"and lora_B.weight ({k}, {r}) @ lora_A.weight ({r}, {d}) is already ({k}, {d}); "
                "lora_A.weight.T @ lora_B.weight.T is the transposed (in, out) matrix")
    if "cannot be multiplied" in message:
        return (f"multiply in the order lora_B.weight ({k}, {r}) @ lora_A.weight ({r}, {d}), "
                f"which gives the ({k}, {d}) shape of the base weight")
    return None


# --- judging ----------------------------------------------------------------------------------

def _is_flag(flag: dict, value: bool) -> bool:
    return flag.get("kind") == "bool" and flag["value"] is value


def _flag_seen(flag: dict) -> str:
    if flag.get("kind") == "missing":
        return "missing"
    return str(flag.get("value", flag.get("repr", flag.get("kind"))))


def _update_diagnosis(seen_update: torch.Tensor, delta: torch.Tensor, case) -> str:
    """Why the weight moved by `seen_update` instead of `delta` = scaling · B @ A."""
    d, k, _ = _sizes(case)
    if is_close(seen_update, torch.zeros_like(delta)):
        return ("the weight did not change at all: the update must go into base_layer.weight itself, "
                "in place (was it added to a copy, or to a new tensor that was thrown away?)")
    if d == k and is_close(seen_update, delta.T):
        return ("the update is transposed: nn.Linear stores its weight as (out, in), and "
                "lora_B.weight @ lora_A.weight already has that shape. On a square layer the transposed "
                "update fits, and silently puts every number in the wrong place")
    if is_close(seen_update, delta.T.reshape(delta.shape)):
        return ("the update is the transposed (in, out) matrix reshaped to (out, in): reshape and view "
                "keep the numbers in memory order, they do not transpose. Use "
                "lora_B.weight @ lora_A.weight, which is (out, in) already")
    factor = fit_scale(seen_update, delta)
    if factor is None:
        return "the change to the weight is not a multiple of lora_B.weight @ lora_A.weight"
    s = _scaling(case)
    if abs(factor + 1) < 1e-4:
        return "the update was subtracted instead of added"
    if abs(factor - 2) < 1e-4:
        return "the update was added twice"
    return scaling_hint(factor * s, case).replace("the LoRA term", "the update B @ A")


def _out(state: dict, when: str, case) -> torch.Tensor:
    if "out_error" in state:
        fail(f"{when}, {state['out_error']}", case)
    return state["out"]


def _require_shape(seen: torch.Tensor, expected_shape, what: str, case):
    if tuple(seen.shape) != tuple(expected_shape):
        fail(f"{what} has shape {shape_str(seen.shape)} but expected {shape_str(expected_shape)}", case)


def _check_bias(bias, b, when: str, case):
    if bias is None:
        fail(f"{when}, base_layer.bias is gone: merging only changes the weight", case)
    if not is_close(bias, b):
        fail(f"{when}, base_layer.bias changed by up to {max_error(bias, b):.3g}: the LoRA update "
             "only touches the weight; leave the bias alone", case)


def verdict_merge_weight(case, data):
    W, b, delta, _ = _reference(case)
    seen = data["merged"]["weight"]
    _require_shape(seen, W.shape, "after merge_lora(), base_layer.weight", case)
    if not is_close(seen, W + delta):
        fail(f"after merge_lora(), base_layer.weight should be W + scaling · lora_B.weight @ lora_A.weight, "
             f"but differs from it by up to {max_error(seen, W + delta):.3g}: "
             + _update_diagnosis(seen.double() - W, delta, case), case)
    _check_bias(data["merged"]["bias"], b, "after merge_lora()", case)


def verdict_merge_flag(case, data):
    new, after = data["flag_new"], data["merged"]["flag"]
    if new.get("kind") == "missing":
        fail("a new MergeableLoRALinear has no attribute `merged`: set self.merged = False in __init__", case)
    for flag in (new, after):
        if flag.get("kind") != "bool":
            fail(f"`merged` should be True or False, but it is {_flag_seen(flag)} (a {flag.get('kind')})", case)
    if not _is_flag(new, False):
        fail("`merged` is True on a new layer, before anything was merged: start with self.merged = False", case)
    if not _is_flag(after, True):
        fail("`merged` is still False after merge_lora(): set self.merged = True once the update is in "
             "the weight, so that forward, a second merge and unmerge know it is there", case)


def verdict_merged_forward_is_plain_linear(case, data):
    merged = data["merged"]
    _, _, delta, x = _reference(case)
    weight, bias = merged["weight"].double(), merged["bias"]
    if tuple(weight.shape) != tuple(delta.shape):
        fail("base_layer.weight has the wrong shape after merge_lora(): fix merge_lora_weight first", case)
    plain = x @ weight.T + (0.0 if bias is None else bias.double())
    out = _out(merged, "while merged", case)
    if tuple(out.shape) != tuple(plain.shape):
        fail(f"while merged, the output has shape {shape_str(out.shape)} but expected {shape_str(plain.shape)}", case)
    if is_close(out, plain):
        return
    message = (f"while merged, the layer should compute exactly what a plain nn.Linear holding its merged "
               f"weight and bias computes, but differs from it by up to {max_error(out, plain):.3g}")
    term = x @ delta.T
    factor = fit_scale(out.double() - plain, term)
    if factor is not None and abs(factor - 1) < 1e-4:
        message += (": it is the merged layer's output plus the LoRA term again. forward still runs the "
                    "adapter after merge_lora(), so the update counts twice. The challenge's own merge "
                    "solution has this bug: it changes the weight and never touches forward. While "
                    "self.merged, forward should return base_layer(x) alone")
    elif factor is not None:
        message += f": it adds {factor:.4g} × the LoRA term on top of the merged weight; while merged, add nothing"
    fail(message, case)


def verdict_merge_keeps_output(case, data):
    W, _, delta, _ = _reference(case)
    expected = _expected_output(case)
    for when, state in (("before merging", data["before"]), ("after merge_lora()", data["merged"])):
        out = _out(state, when, case)
        if tuple(out.shape) != tuple(expected.shape):
            fail(f"{when}, the output has shape {shape_str(out.shape)} but expected {shape_str(expected.shape)}", case)
        if not is_close(out, expected):
            if when == "before merging":
                cause = ("the unmerged forward is already wrong: without merging it must be "
                         "base_layer(x) + scaling · lora_B(lora_A(x)), as the given LoRALinear computes it")
            elif not is_close(state["weight"], W + delta):
                cause = "the merged weight is wrong: fix merge_lora_weight first"
            else:
                cause = "merging must not change what the layer computes, beyond float32 rounding"
            fail(f"{when}, the output differs from base(x) + scaling · lora_B(lora_A(x)) by up to "
                 f"{max_error(out, expected):.3g} (expected {numbers(expected)}, got {numbers(out)}): {cause}", case)


def verdict_merged_weight_frozen_leaf(case, data):
    merged = data["merged"]
    if merged["grad_fn"]:
        fail(f"after merge_lora(), base_layer.weight has grad_fn={merged['grad_fn']}: autograd recorded the "
             "merge, so the frozen weight is no longer a leaf, now requires grad, and is wired to lora_A and "
             "lora_B (a backward pass would send gradients through the merge into them, and a second one "
             "fails). Do the update in place under torch.no_grad(), e.g. "
             "`with torch.no_grad(): self.base_layer.weight.add_(update)`.", case)
    if merged["requires_grad"]:
        fail("after merge_lora(), base_layer.weight requires grad, so the frozen base would train again"
             + ("; a new nn.Parameter(...) requires grad unless told otherwise" if not merged["same_object"] else ""),
             case)
    if not merged["same_object"]:
        fail("merge_lora() replaced base_layer.weight with a new nn.Parameter. Its values are right, but "
             "whatever still holds the old one (an optimizer built before merging, a weight tied to another "
             "module, a hook) keeps the unmerged weight. Change the existing Parameter in place, e.g. "
             "`with torch.no_grad(): self.base_layer.weight.add_(update)`.", case)


def _changes_nothing(call: str, before: dict, after: dict, update: torch.Tensor, repeated: str, case):
    """`call` on a layer already in the state it asks for must leave weight, flag and output
    as they were: judged against the layer's own state before the call, so that a mistake
    in the first merge or unmerge is not charged twice. `update` is what repeating the
    first call would add; `repeated` says so."""
    seen, was = after["weight"], before["weight"]
    _require_shape(seen, was.shape, f"after {call}, base_layer.weight", case)
    if not is_close(seen, was.double()):
        change = seen.double() - was.double()
        cause = repeated if is_close(change, update) else "it must leave the weight as it is"
        note = (f" (it raised {after['error']} after changing the weight: check the flag before touching "
                "anything)" if after["error"] else "")
        fail(f"{call} changed base_layer.weight by up to {max_error(seen, was):.3g}: {cause}{note}", case)
    if _flag_seen(after["flag"]) != _flag_seen(before["flag"]):
        fail(f"{call} changed `merged` from {_flag_seen(before['flag'])} to {_flag_seen(after['flag'])}", case)
    out, was_out = _out(after, f"after {call}", case), _out(before, f"before {call}", case)
    if tuple(out.shape) != tuple(was_out.shape) or not is_close(out, was_out.double()):
        fail(f"{call} changed the layer's output: it must change nothing", case)


def verdict_merge_twice(case, data):
    _, _, delta, _ = _reference(case)
    _changes_nothing("a second merge_lora()", data["merged"], data["again"], delta,
                     "it added the update again, so the weight is W + 2 · scaling · B @ A: when self.merged "
                     "is already True, do nothing (or raise an error)", case)


def verdict_unmerge_restores(case, data):
    W, b, delta, _ = _reference(case)
    unmerged = data["unmerged"]
    seen = unmerged["weight"]
    _require_shape(seen, W.shape, "after merge_lora() then unmerge_lora(), base_layer.weight", case)
    if not is_close(seen, W):
        merged_weight = data["merged_weight"]
        if tuple(merged_weight.shape) == tuple(W.shape) and not is_close(merged_weight, W + delta):
            undone = merged_weight.double() - seen.double()
            mirror = ("unmerge_lora() subtracts scaling · B @ A as it should, but merge_lora() added something "
                      "else" if is_close(undone, delta) else "unmerge_lora() did not undo what merge_lora() did")
            fail(f"after merge_lora() then unmerge_lora(), base_layer.weight should be the original W again, but "
                 f"differs by up to {max_error(seen, W):.3g}: {mirror}. Fix merge_lora_weight first.", case)
        left = seen.double() - W
        factor = fit_scale(left, delta)
        s = _scaling(case)
        if factor is not None and abs(factor - 1) < 1e-4:
            cause = "it is still the merged weight: unmerge_lora() did not change it"
        elif factor is not None and abs(factor - (1 - 1 / s)) < 1e-4:
            cause = (f"unmerge_lora() subtracted lora_B.weight @ lora_A.weight without scaling: merge added "
                     f"scaling · B @ A (scaling = {s:g}), so unmerge must subtract exactly that")
        elif factor is not None and abs(factor - 2) < 1e-4:
            cause = "unmerge_lora() added the update again instead of subtracting it"
        elif factor is not None:
            cause = f"W + {factor:.4g} · scaling · B @ A is left: unmerge must subtract exactly what merge added"
        else:
            cause = "unmerge must subtract exactly what merge added"
        fail(f"after merge_lora() then unmerge_lora(), base_layer.weight should be the original W again "
             f"(to float32 rounding) but differs by up to {max_error(seen, W):.3g}: {cause}", case)
    _check_bias(unmerged["bias"], b, "after unmerge_lora()", case)
    if not _is_flag(unmerged["flag"], False):
        fail(f"`merged` is still {_flag_seen(unmerged['flag'])} after unmerge_lora(): set self.merged = False", case)
    if unmerged["grad_fn"] or unmerged["requires_grad"] or not unmerged["same_object"]:
        fail("after unmerge_lora(), base_layer.weight should be the same frozen leaf Parameter as before "
             f"(grad_fn={unmerged['grad_fn']}, requires_grad={unmerged['requires_grad']}, same object: "
             f"{unmerged['same_object']}): change it in place under torch.no_grad(), like the merge", case)


def verdict_unmerge_forward(case, data):
    W, b, _, x = _reference(case)
    expected = _expected_output(case)
    out = _out(data["unmerged"], "after unmerge_lora()", case)
    if tuple(out.shape) != tuple(expected.shape):
        fail(f"after unmerge_lora(), the output has shape {shape_str(out.shape)} but expected {shape_str(expected.shape)}", case)
    if is_close(out, expected):
        return
    hint = ""
    if is_close(out, x @ W.T + b):
        hint = ": it is base(x) alone, so forward skips the adapter although nothing is merged any more"
    elif not is_close(data["unmerged"]["weight"], W):
        hint = ": the base weight was not restored (see unmerge_lora_restores_weight)"
    fail(f"after unmerge_lora(), the output should be base(x) + scaling · lora_B(lora_A(x)) again, as before "
         f"merging, but differs by up to {max_error(out, expected):.3g}{hint}", case)


def verdict_unmerge_when_not_merged(case, data):
    _, _, delta, _ = _reference(case)
    repeated = ("it subtracted the update although nothing was merged: when self.merged is False, "
                "do nothing (or raise an error)")
    _changes_nothing("unmerge_lora() on a new layer that was never merged", data["fresh_before"],
                     data["fresh"], -delta, repeated, case)
    _changes_nothing("a second unmerge_lora(), right after unmerging", data["unmerged"],
                     data["again"], -delta, repeated, case)


def _layer_state(state: str) -> str:
    return f"export_merged(layer) on {'a merged' if state == 'merged' else 'an unmerged'} layer"


def verdict_export_output(case, data):
    W, b, delta, x = _reference(case)
    expected_weight = W + delta
    for state in ("unmerged", "merged"):
        what, export = _layer_state(state), data[state]["export"]
        if not export["is_linear"]:
            fail(f"{what} returned a {export['kind']}, but should return a new nn.Linear holding the merged "
                 "weight and the base bias", case)
        _require_shape(export["weight"], expected_weight.shape, f"the weight of {what}", case)
        if not is_close(export["weight"], expected_weight):
            if export.get("shares_storage"):
                cause = (f"the export's {', '.join(export['shares_storage'])} share their storage with the "
                         "layer's own Parameters, so what happened to the layer after the export was built "
                         "(an unmerge_lora(), say) happened to the export too. Give the export its own "
                         "copies (.clone(), or copy.deepcopy)")
            elif state == "merged" and is_close(export["weight"], W + 2 * delta):
                cause = ("it added the update a second time: when layer.merged is True, "
                         "layer.base_layer.weight already holds W + scaling · B @ A")
            elif state == "merged" and not is_close(data[state]["before"]["weight"], expected_weight):
                cause = "your merge_lora() gives a wrong merged weight: fix merge_lora_weight first"
            else:
                cause = _update_diagnosis(export["weight"].double() - W, delta, case)
            fail(f"the weight of {what} should be W + scaling · lora_B.weight @ lora_A.weight, but differs "
                 f"by up to {max_error(export['weight'], expected_weight):.3g}: {cause}", case)
        if export["bias"] is None:
            fail(f"{what} has no bias: the merged layer keeps the base layer's bias, so create the "
                 "nn.Linear with bias=True and copy base_layer.bias into it", case)
        _require_shape(export["bias"], b.shape, f"the bias of {what}", case)
        if not is_close(export["bias"], b):
            fail(f"the bias of {what} is not the base layer's bias (off by up to {max_error(export['bias'], b):.3g}): "
                 "a new nn.Linear starts with a random bias; copy base_layer.bias into it", case)
        expected = x @ expected_weight.T + b
        if not is_close(export["out"], expected):
            fail(f"{what} returns a layer whose output differs from the merged layer's by up to "
                 f"{max_error(export['out'], expected):.3g}", case)


def verdict_export_frozen(case, data):
    for state in ("unmerged", "merged"):
        export = data[state]["export"]
        if not export["is_linear"]:
            fail(f"{_layer_state(state)} returned a {export['kind']}, not an nn.Linear: fix export_merged_output first", case)
        for parameter in export["parameters"]:
            if parameter["requires_grad"] or parameter["grad_fn"]:
                fail(f"the {parameter['name']} of {_layer_state(state)} requires grad: an exported model is for "
                     "inference, so freeze it, e.g. `merged.requires_grad_(False)`", case)


def _changed(before, after) -> bool:
    if before is None or after is None:
        return before is not after
    return tuple(before.shape) != tuple(after.shape) or not is_close(after, before.double())


def verdict_export_leaves_layer(case, data):
    for state in ("unmerged", "merged"):
        what, entry = _layer_state(state), data[state]
        if not entry["export"]["is_linear"]:
            fail(f"{what} returned a {entry['export']['kind']}, not an nn.Linear: fix export_merged_output first", case)
        before, after = entry["before"], entry["after"]
        if _flag_seen(before["flag"]) != _flag_seen(after["flag"]):
            fail(f"{what} left the layer's `merged` flag at {_flag_seen(after['flag'])}, but it was "
                 f"{_flag_seen(before['flag'])}: the layer must be left as it was (work on a copy, or put it back)", case)
        for key, name in (("weight", "base_layer.weight"), ("bias", "base_layer.bias"),
                          ("A", "lora_A.weight"), ("B", "lora_B.weight"), ("out", "output")):
            if _changed(before.get(key), after.get(key)):
                fail(f"{what} changed the layer's {name}: the layer must be left as it was, so build the "
                     "export from copies", case)
        out = entry["export"].get("out")
        later = entry.get("export_out_after_layer_changed")
        if out is not None and later is not None and _changed(out, later):
            fail(f"{what} returned a layer that shares its numbers with the layer it came from: when the grader "
                 "then changed the layer's parameters in place, the export's output changed too. A later "
                 "unmerge_lora() or more training would silently change the exported model. Give the export "
                 "its own copies (.clone(), or copy.deepcopy) instead of layer.base_layer or its Parameters.", case)


# --- the checks -------------------------------------------------------------------------------

CASES = layer_cases([(12, 20, 4, 6, (5, 12)), (9, 9, 2, 5, (2, 3, 9))], seeds=(400, 410))
HIDDEN_CASES = hidden_cases_of("nb04", layer_cases)["layer"]


def _check(name, task, points, probe, verdict):
    return Check(name, task, points, probe, verdict, CASES, HIDDEN_CASES, _explain_error)


CHECKS = (
    _check("merge_lora_weight", "MergeableLoRALinear", 2, _probe_merge, verdict_merge_weight),
    _check("merge_lora_flag", "MergeableLoRALinear", 1, _probe_merge, verdict_merge_flag),
    _check("merged_forward_is_plain_linear", "MergeableLoRALinear", 2, _probe_merge,
           verdict_merged_forward_is_plain_linear),
    _check("merge_keeps_output", "MergeableLoRALinear", 1, _probe_merge, verdict_merge_keeps_output),
    _check("merged_weight_frozen_leaf", "MergeableLoRALinear", 1, _probe_merge, verdict_merged_weight_frozen_leaf),
    _check("merge_twice_changes_nothing", "MergeableLoRALinear", 1, _probe_merge, verdict_merge_twice),
    _check("unmerge_lora_restores_weight", "MergeableLoRALinear", 2, _probe_unmerge, verdict_unmerge_restores),
    _check("unmerge_lora_forward", "MergeableLoRALinear", 1, _probe_unmerge, verdict_unmerge_forward),
    _check("unmerge_when_not_merged", "MergeableLoRALinear", 1, _probe_unmerge, verdict_unmerge_when_not_merged),
    _check("export_merged_output", "export_merged", 2, _probe_export, verdict_export_output),
    _check("export_merged_frozen", "export_merged", 1, _probe_export, verdict_export_frozen),
    _check("export_merged_leaves_layer", "export_merged", 1, _probe_export, verdict_export_leaves_layer),
)
