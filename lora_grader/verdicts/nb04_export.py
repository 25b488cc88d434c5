"""Verdicts for notebook 04's export_merged: a new, frozen nn.Linear holding the merged weight and
the base bias, sharing nothing with the layer, which is left as it was. The expected values come
from lora_grader.answers.nb04:reference, like the merge verdicts'."""
from __future__ import annotations

from lora_grader.verdicts.core import fail, is_close, max_error
from lora_grader.verdicts.nb04 import flag_seen, require_shape, update_diagnosis

STATES = ("unmerged", "merged")


def _what(state: str) -> str:
    return f"export_merged(layer) on {'a merged' if state == 'merged' else 'an unmerged'} layer"


def _require_linear(state: str, export: dict, case):
    if not export["is_linear"]:
        fail(f"{_what(state)} returned a {export['kind']}, not an nn.Linear: fix export_merged_output first", case,
             cause="not_linear")


def export_output(case, expected, data):
    W, b, merged_weight = expected["W"], expected["b"], expected["merged_weight"]
    for state in STATES:
        what, export = _what(state), data[state]["export"]
        if not export["is_linear"]:
            fail(f"{what} returned a {export['kind']}, but should return a new nn.Linear holding the merged "
                 "weight and the base bias", case, cause="not_linear")
        require_shape(export["weight"], merged_weight.shape, f"the weight of {what}", case)
        if not is_close(export["weight"], merged_weight):
            if export.get("shares_storage"):
                why, cause = (f"the export's {', '.join(export['shares_storage'])} share their storage with the "
                              "layer's own Parameters, so what happened to the layer after the export was built "
                              "(an unmerge_lora(), say) happened to the export too", "shares_storage")
            elif state == "merged" and is_close(export["weight"], expected["twice_weight"]):
                why, cause = ("it added the update a second time: when layer.merged is True, "
                              "layer.base_layer.weight already holds W + scaling · B @ A", "added_again")
            elif state == "merged" and not is_close(data[state]["before"]["weight"], merged_weight):
                why, cause = "your merge_lora() gives a wrong merged weight: fix merge_lora_weight first", "merge_wrong"
            else:
                why, cause = update_diagnosis(export["weight"].double() - W, expected, case)
            fail(f"the weight of {what} should be W + scaling · lora_B.weight @ lora_A.weight, but differs "
                 f"by up to {max_error(export['weight'], merged_weight):.3g}: {why}", case, cause=cause)
        if export["bias"] is None:
            fail(f"{what} has no bias: the merged layer keeps the base layer's bias", case, cause="no_bias")
        require_shape(export["bias"], b.shape, f"the bias of {what}", case)
        if not is_close(export["bias"], b):
            fail(f"the bias of {what} is not the base layer's bias (off by up to {max_error(export['bias'], b):.3g}): "
                 "a new nn.Linear starts with a random bias", case, cause="wrong_bias")
        if not is_close(export["out"], expected["out"]):
            fail(f"{what} returns a layer whose output differs from the merged layer's by up to "
                 f"{max_error(export['out'], expected['out']):.3g}", case, cause="wrong_output")


def export_frozen(case, expected, data):
    for state in STATES:
        export = data[state]["export"]
        _require_linear(state, export, case)
        for parameter in export["parameters"]:
            if parameter["requires_grad"] or parameter["grad_fn"]:
                fail(f"the {parameter['name']} of {_what(state)} requires grad: an exported model is for "
                     "inference, and nothing in it should train", case, cause="not_frozen")


def _changed(before, after) -> bool:
    if before is None or after is None:
        return before is not after
    return tuple(before.shape) != tuple(after.shape) or not is_close(after, before.double())


def export_leaves_layer(case, expected, data):
    for state in STATES:
        what, entry = _what(state), data[state]
        _require_linear(state, entry["export"], case)
        before, after = entry["before"], entry["after"]
        if flag_seen(before["flag"]) != flag_seen(after["flag"]):
            fail(f"{what} left the layer's `merged` flag at {flag_seen(after['flag'])}, but it was "
                 f"{flag_seen(before['flag'])}: the layer must be left as it was", case, cause="flag_changed")
        for key, name in (("weight", "base_layer.weight"), ("bias", "base_layer.bias"),
                          ("A", "lora_A.weight"), ("B", "lora_B.weight"), ("out", "output")):
            if _changed(before.get(key), after.get(key)):
                fail(f"{what} changed the layer's {name}: the layer must be left as it was", case,
                     cause="layer_changed")
        out = entry["export"].get("out")
        later = entry.get("export_out_after_layer_changed")
        if out is not None and later is not None and _changed(out, later):
            fail(f"{what} returned a layer that shares its numbers with the layer it came from: when the grader "
                 "then changed the layer's parameters in place, the export's output changed too. A later "
                 "unmerge_lora() or more training would silently change the exported model: the export needs "
                 "numbers of its own.", case, cause="shares_numbers")
