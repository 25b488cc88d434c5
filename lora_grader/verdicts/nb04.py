"""Verdicts for notebook 04's MergeableLoRALinear: merging, the merged forward, unmerging
(export_merged's are in nb04_export.py), and the likely cause of an error the student's code raised.

Every expected value comes from lora_grader.answers.nb04:reference: W, b, the update
delta = scaling · B @ A, the outputs, and the wrong updates the hints recognise. A hint names what
is wrong and where to look; the fix is the student's to write.
"""
from __future__ import annotations

import torch

from lora_grader.verdicts.core import fail, fit_scale, is_close, max_error, numbers, shape_str

# Why a merge changed the weight by something other than delta, by the names answers.nb04 gives
# the wrong updates (as tensors) and the wrong multiples of delta.
UPDATE_CAUSES = {
    "unchanged": "the weight did not change at all: the update must go into base_layer.weight itself, in place "
                 "(was it added to a copy, or to a new tensor that was thrown away?)",
    "transposed": "the update is transposed: nn.Linear stores its weight as (out, in). On a square layer the "
                  "transposed update fits, and silently puts every number in the wrong place",
    "transposed_reshaped": "the update is the transposed (in, out) matrix reshaped to (out, in): reshape and view "
                           "keep the numbers in memory order, they do not transpose",
    "subtracted": "the update was subtracted instead of added",
    "added_twice": "the update was added twice",
}
SCALING_CAUSES = {
    "no_scaling": "no scaling at all",
    "scaling_alpha": "alpha instead of alpha / rank",
    "scaling_inverted": "rank / alpha instead of alpha / rank",
    "scaling_without_alpha": "1 / rank, without alpha",
    "scaling_twice": "alpha / rank applied twice",
}
# What unmerging left, W + factor · delta, by the names answers.nb04 gives the factors.
UNMERGE_CAUSES = {
    "not_unmerged": "it is still the merged weight: unmerge_lora() did not change it",
    "unmerge_unscaled": "unmerge_lora() subtracted lora_B.weight @ lora_A.weight without scaling: merge added "
                        "scaling · B @ A (scaling = {s:g}), and unmerge must take away exactly what merge added",
    "unmerge_added": "unmerge_lora() added the update again instead of subtracting it",
}


def _matches(factor: float, known: float) -> bool:
    return abs(factor - known) < 1e-4 * max(1.0, abs(known))


def _near(factor: float | None, table) -> str | None:
    """The name of the first known factor in `table` ([[factor, name], ...]) that `factor` is."""
    if factor is None:
        return None
    return next((name for known, name in table if _matches(factor, known)), None)


def update_diagnosis(seen_update: torch.Tensor, expected: dict, case) -> tuple[str, str]:
    """(why, cause key): why the weight moved by `seen_update` instead of delta = scaling · B @ A."""
    for name, wrong in expected["wrong_updates"]:
        if is_close(seen_update, wrong):
            return UPDATE_CAUSES[name], name
    factor = fit_scale(seen_update, expected["delta"])
    if factor is None:
        return "the change to the weight is not a multiple of lora_B.weight @ lora_A.weight", "not_the_update"
    name = _near(factor, expected["wrong_factors"])
    if name in UPDATE_CAUSES:
        return UPDATE_CAUSES[name], name
    s, alpha, r = expected["scaling"], case["alpha"], case["rank"]
    words = (f"the update B @ A is scaled by {factor * s:g} but expected alpha / rank = {s:g} "
             f"(alpha={alpha}, rank={r})")
    if name in SCALING_CAUSES:
        return f"{words}: that is {SCALING_CAUSES[name]}", name
    return words, "wrong_scaling"


# --- what the verdicts share ------------------------------------------------------------------

def is_flag(flag: dict, value: bool) -> bool:
    return flag.get("kind") == "bool" and flag["value"] is value


def flag_seen(flag: dict) -> str:
    if flag.get("kind") == "missing":
        return "missing"
    return str(flag.get("value", flag.get("repr", flag.get("kind"))))


def output_of(state: dict, when: str, case) -> torch.Tensor:
    if "out_error" in state:
        fail(f"{when}, {state['out_error']}", case, cause="forward_failed")
    return state["out"]


def require_shape(seen: torch.Tensor, expected_shape, what: str, case):
    if tuple(seen.shape) != tuple(expected_shape):
        fail(f"{what} has shape {shape_str(seen.shape)} but expected {shape_str(expected_shape)}", case,
             cause="wrong_shape")


def _check_bias(bias, b, when: str, case):
    if bias is None:
        fail(f"{when}, base_layer.bias is gone: merging only changes the weight", case, cause="bias_gone")
    if not is_close(bias, b):
        fail(f"{when}, base_layer.bias changed by up to {max_error(bias, b):.3g}: the LoRA update "
             "only touches the weight; leave the bias alone", case, cause="bias_changed")


# --- explaining errors ------------------------------------------------------------------------

def explain_error(case, outcome) -> str | None:
    message = outcome.get("message", "")
    d, k, r = case["in_features"], case["out_features"], case["rank"]
    if "Cannot assign non-leaf Tensor" in message:
        return ("autograd recorded the in-place add (the update comes from lora_A and lora_B, which "
                "require grad), so the weight stopped being a leaf and nn.Module refused to store it back, "
                "after it had already been changed. Should autograd record the merge at all?")
    if "leaf Variable that requires grad" in message:
        return ("an in-place change to a Parameter that requires grad, while autograd records: should it "
                "record the merge, and is the base layer frozen?")
    if "cannot assign" in message and "as parameter" in message:
        return ("base_layer.weight is an nn.Parameter, and nn.Module will not replace it with a plain tensor: "
                "the merge changes the values of the existing Parameter")
    if "must match" in message and f"({d})" in message and f"({k})" in message:
        return (f"the update has the transposed shape: nn.Linear stores its weight as (out, in) = ({k}, {d}), "
                f"while lora_A.weight is ({r}, {d}) and lora_B.weight is ({k}, {r}): look at the order and "
                "orientation of the product that builds the update")
    if "cannot be multiplied" in message:
        return (f"lora_A.weight is ({r}, {d}) and lora_B.weight is ({k}, {r}), and the update must have the "
                f"base weight's shape ({k}, {d}): look at the order of the factors")
    return None


# --- merge_lora -------------------------------------------------------------------------------

def merge_weight(case, expected, data):
    W, b, merged = expected["W"], expected["b"], expected["merged_weight"]
    seen = data["merged"]["weight"]
    require_shape(seen, W.shape, "after merge_lora(), base_layer.weight", case)
    if not is_close(seen, merged):
        why, cause = update_diagnosis(seen.double() - W, expected, case)
        fail(f"after merge_lora(), base_layer.weight should be W + scaling · lora_B.weight @ lora_A.weight, "
             f"but differs from it by up to {max_error(seen, merged):.3g}: {why}", case, cause=cause)
    _check_bias(data["merged"]["bias"], b, "after merge_lora()", case)


def merge_flag(case, expected, data):
    new, after = data["flag_new"], data["merged"]["flag"]
    if new.get("kind") == "missing":
        fail("a new MergeableLoRALinear has no attribute `merged`: the notebook asks __init__ for one, "
             "False until the update is merged", case, cause="no_flag")
    for flag in (new, after):
        if flag.get("kind") != "bool":
            fail(f"`merged` should be True or False, but it is {flag_seen(flag)} (a {flag.get('kind')})", case,
                 cause="flag_not_bool")
    if not is_flag(new, False):
        fail("`merged` is True on a new layer, before anything was merged", case, cause="flag_true_at_start")
    if not is_flag(after, True):
        fail("`merged` is still False after merge_lora(): forward, a second merge and unmerge_lora() read "
             "this flag to know whether the update is in the weight", case, cause="flag_not_set")


def merged_forward_is_plain_linear(case, expected, data):
    merged = data["merged"]
    if tuple(merged["weight"].shape) != tuple(expected["merged_weight"].shape) or merged["plain_out"] is None:
        fail("base_layer's weight or bias has the wrong shape after merge_lora(): fix merge_lora_weight first",
             case, cause="wrong_shape")
    plain = merged["plain_out"]
    out = output_of(merged, "while merged", case)
    if tuple(out.shape) != tuple(plain.shape):
        fail(f"while merged, the output has shape {shape_str(out.shape)} but expected {shape_str(plain.shape)}",
             case, cause="wrong_shape")
    if is_close(out, plain):
        return
    message = (f"while merged, the layer should compute exactly what a plain nn.Linear holding its merged "
               f"weight and bias computes, but differs from it by up to {max_error(out, plain):.3g}")
    factor = fit_scale(out.double() - plain, expected["term"])
    if factor is not None and _matches(factor, 1.0):
        fail(message + ": it is the merged layer's output plus the LoRA term again. forward still runs the "
             "adapter after merge_lora(), so the update counts twice. The challenge's own merge solution has "
             "this bug: it changes the weight and never touches forward. Look at what forward does while "
             "self.merged", case, cause="adapter_after_merge")
    if factor is not None:
        fail(message + f": it adds {factor:.4g} × the LoRA term on top of the merged weight; while merged, "
             "the weight holds the whole update", case, cause="adds_after_merge")
    fail(message, case, cause="merged_forward")


def merge_keeps_output(case, expected, data):
    out_expected = expected["out"]
    for when, state in (("before merging", data["before"]), ("after merge_lora()", data["merged"])):
        out = output_of(state, when, case)
        if tuple(out.shape) != tuple(out_expected.shape):
            fail(f"{when}, the output has shape {shape_str(out.shape)} but expected "
                 f"{shape_str(out_expected.shape)}", case, cause="wrong_shape")
        if not is_close(out, out_expected):
            if when == "before merging":
                why, cause = ("the unmerged forward is already wrong: without merging it must be "
                              "base_layer(x) + scaling · lora_B(lora_A(x)), as the given LoRALinear computes it",
                              "unmerged_forward")
            elif not is_close(state["weight"], expected["merged_weight"]):
                why, cause = "the merged weight is wrong: fix merge_lora_weight first", "merged_weight"
            else:
                why, cause = ("merging must not change what the layer computes, beyond float32 rounding",
                              "output_changed")
            fail(f"{when}, the output differs from base(x) + scaling · lora_B(lora_A(x)) by up to "
                 f"{max_error(out, out_expected):.3g} (expected {numbers(out_expected)}, got {numbers(out)}): {why}",
                 case, cause=cause)


def merged_weight_frozen_leaf(case, expected, data):
    merged = data["merged"]
    if merged["grad_fn"]:
        fail(f"after merge_lora(), base_layer.weight has grad_fn={merged['grad_fn']}: autograd recorded the "
             "merge, so the frozen weight is no longer a leaf, now requires grad, and is wired to lora_A and "
             "lora_B (a backward pass would send gradients through the merge into them, and a second one "
             "fails). Should autograd record the merge at all?", case, cause="merge_recorded")
    if merged["requires_grad"]:
        fail("after merge_lora(), base_layer.weight requires grad, so the frozen base would train again"
             + ("; a new nn.Parameter(...) requires grad unless told otherwise" if not merged["same_object"] else ""),
             case, cause="weight_requires_grad")
    if not merged["same_object"]:
        fail("merge_lora() replaced base_layer.weight with a new nn.Parameter. Its values are right, but "
             "whatever still holds the old one (an optimizer built before merging, a weight tied to another "
             "module, a hook) keeps the unmerged weight: the merge must change the existing Parameter, in place.",
             case, cause="new_parameter")


def changes_nothing(call: str, before: dict, after: dict, update: torch.Tensor, repeated: str, case):
    """`call` on a layer already in the state it asks for must leave weight, flag and output
    as they were: judged against the layer's own state before the call, so that a mistake
    in the first merge or unmerge is not charged twice. `update` is what repeating the
    first call would add; `repeated` says so."""
    seen, was = after["weight"], before["weight"]
    require_shape(seen, was.shape, f"after {call}, base_layer.weight", case)
    if not is_close(seen, was.double()):
        again = is_close(seen.double() - was.double(), update)
        note = f" (it raised {after['error']}, but only after changing the weight)" if after["error"] else ""
        fail(f"{call} changed base_layer.weight by up to {max_error(seen, was):.3g}: "
             f"{repeated if again else 'it must leave the weight as it is'}{note}", case,
             cause="repeated" if again else "weight_changed")
    if flag_seen(after["flag"]) != flag_seen(before["flag"]):
        fail(f"{call} changed `merged` from {flag_seen(before['flag'])} to {flag_seen(after['flag'])}", case,
             cause="flag_changed")
    out, was_out = output_of(after, f"after {call}", case), output_of(before, f"before {call}", case)
    if tuple(out.shape) != tuple(was_out.shape) or not is_close(out, was_out.double()):
        fail(f"{call} changed the layer's output: it must change nothing", case, cause="output_changed")


def merge_twice(case, expected, data):
    changes_nothing("a second merge_lora()", data["merged"], data["again"], expected["delta"],
                    "it added the update again, so the weight is W + 2 · scaling · B @ A: a second merge must "
                    "change nothing (a no-op or an error, the notebook allows either), and the layer's "
                    "`merged` flag says whether the update is already in", case)


# --- unmerge_lora -----------------------------------------------------------------------------

def unmerge_restores(case, expected, data):
    W, b, delta = expected["W"], expected["b"], expected["delta"]
    unmerged = data["unmerged"]
    seen = unmerged["weight"]
    require_shape(seen, W.shape, "after merge_lora() then unmerge_lora(), base_layer.weight", case)
    if not is_close(seen, W):
        merged_weight = data["merged_weight"]
        if tuple(merged_weight.shape) == tuple(W.shape) and not is_close(merged_weight, expected["merged_weight"]):
            mirror = ("unmerge_lora() subtracts scaling · B @ A as it should, but merge_lora() added something "
                      "else" if is_close(merged_weight.double() - seen.double(), delta)
                      else "unmerge_lora() did not undo what merge_lora() did")
            fail(f"after merge_lora() then unmerge_lora(), base_layer.weight should be the original W again, but "
                 f"differs by up to {max_error(seen, W):.3g}: {mirror}. Fix merge_lora_weight first.", case,
                 cause="merge_wrong")
        factor = fit_scale(seen.double() - W, delta)
        name = _near(factor, expected["unmerge_factors"])
        if name in UNMERGE_CAUSES:
            why = UNMERGE_CAUSES[name].format(s=expected["scaling"])
        elif factor is not None:
            why = f"W + {factor:.4g} · scaling · B @ A is left: unmerge must take away exactly what merge added"
        else:
            why = "unmerge must take away exactly what merge added"
        fail(f"after merge_lora() then unmerge_lora(), base_layer.weight should be the original W again "
             f"(to float32 rounding) but differs by up to {max_error(seen, W):.3g}: {why}", case,
             cause=name if name in UNMERGE_CAUSES else "not_restored")
    _check_bias(unmerged["bias"], b, "after unmerge_lora()", case)
    if not is_flag(unmerged["flag"], False):
        fail(f"`merged` is still {flag_seen(unmerged['flag'])} after unmerge_lora(): forward and merge_lora() "
             "would take the update to be in the weight", case, cause="flag_not_cleared")
    if unmerged["grad_fn"] or unmerged["requires_grad"] or not unmerged["same_object"]:
        fail("after unmerge_lora(), base_layer.weight should be the same frozen leaf Parameter as before "
             f"(grad_fn={unmerged['grad_fn']}, requires_grad={unmerged['requires_grad']}, same object: "
             f"{unmerged['same_object']}): compare how unmerge_lora() changes it with how merge_lora() does",
             case, cause="not_frozen_leaf")


def unmerge_forward(case, expected, data):
    out_expected = expected["out"]
    out = output_of(data["unmerged"], "after unmerge_lora()", case)
    if tuple(out.shape) != tuple(out_expected.shape):
        fail(f"after unmerge_lora(), the output has shape {shape_str(out.shape)} but expected "
             f"{shape_str(out_expected.shape)}", case, cause="wrong_shape")
    if is_close(out, out_expected):
        return
    hint, cause = "", "unmerged_forward"
    if is_close(out, expected["base_out"]):
        hint = ": it is base(x) alone, so forward skips the adapter although nothing is merged any more"
        cause = "skips_adapter"
    elif not is_close(data["unmerged"]["weight"], expected["W"]):
        hint, cause = ": the base weight was not restored (see unmerge_lora_restores_weight)", "not_restored"
    fail(f"after unmerge_lora(), the output should be base(x) + scaling · lora_B(lora_A(x)) again, as before "
         f"merging, but differs by up to {max_error(out, out_expected):.3g}{hint}", case, cause=cause)


def unmerge_when_not_merged(case, expected, data):
    repeated = ("it subtracted the update although nothing was merged: unmerging a layer that is not merged "
                "must change nothing (a no-op or an error), and the `merged` flag says whether there is "
                "anything to undo")
    changes_nothing("unmerge_lora() on a new layer that was never merged", data["fresh_before"],
                    data["fresh"], -expected["delta"], repeated, case)
    changes_nothing("a second unmerge_lora(), right after unmerging", data["unmerged"],
                    data["again"], -expected["delta"], repeated, case)
