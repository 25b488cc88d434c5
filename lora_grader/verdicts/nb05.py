"""Verdicts for notebook 05's add_lora, count_parameters and the paper's table (the checkpoint and
merge verdicts are in nb05_checkpoint). Each compares what the probe sent back with the values
lora_grader.answers.nb05 computed from the case, and names what is wrong and where to look."""
from __future__ import annotations

import torch

from lora_grader.verdicts.core import fail, is_close, max_error, shape_str

# What a recognised wrong answer most likely means, by the name answers.nb05 gives it.
CAUSES = {
    "swapped": "the two are swapped: the pair is (trainable, total)",
    "shared_twice": "count a shared parameter once: a weight that two modules share is one tensor",
    "one_factor": "each adapted matrix gets two factors, A (r × d_model) and B (d_model × r)",
    "one_layer": "every one of the num_layers layers has its own adapters",
    "full_matrices": "that is the size of the full matrices, not of their adapters",
    "one_rank": "that count assumes one rank for every matrix type, but each type in `ranks` has its own",
    "rounded": "that is rounded; the paper truncates (18,874,368 is printed 18.8M)",
    "two_decimals": "the paper prints one decimal",
    "unformatted": "the paper prints one decimal, truncated, then 'M'",
}
DOTTED = ("a dotted name like 'body.fc2' is a path through the model (the child 'fc2' of the module "
          "'body'), not the name of one child")


def _wrong(expected, seen):
    """The cause of a recognised wrong value, or None."""
    return next((cause for value, cause in expected["wrong"] if value == seen), None)


# --- add_lora ---------------------------------------------------------------------------------

def _require_model(case, data):
    """The checks of add_lora all need its model, with a LoRALinear at each target."""
    if data["returned"] != "module":
        fail(f"add_lora returned {data['returned']}: it should return the model, with the adapters in it", case,
             cause="returns_nothing" if data["returned"] == "None" else "not_a_module")
    if data["dotted_children"]:
        raw = f"\n  (Calling the model then raised {data['out_init_error']}.)" if data.get("out_init_error") else ""
        fail(f"add_lora gave the model a child named {data['dotted_children'][0]!r}, next to its own layers: "
             f"{DOTTED}. The layer at that path is still the original one.{raw}", case, cause="dotted_setattr")
    for name, seen in data["targets"].items():
        if seen is None:
            fail(f"after add_lora the model has no module at {name!r}: each target's module should be replaced "
                 "where it was, under the same name", case, cause="target_missing")
        if not seen["lora"]:
            fail(f"{name!r} is still a {seen['type']} after add_lora: the module at that name, in its parent, "
                 "should now be a LoRALinear around the original", case, cause="not_wrapped")


def wraps_targets(case, expected, data):
    _require_model(case, data)
    if not data["in_place"]:
        fail("add_lora returned another model than the one it was given: the task asks it to change `model` "
             "in place and return it, so that the model the caller holds is the adapted one", case,
             cause="not_in_place")
    r, alpha = case["rank"], case["alpha"]
    for name, seen in data["targets"].items():
        scaling = seen["scaling"]
        if seen["rank"] != expected["rank"] or scaling is None or abs(scaling - expected["scaling"]) > 1e-12:
            fail(f"{name!r} has rank {seen['rank']} and scaling {seen['scaling']} but add_lora was asked for "
                 f"rank={r}, alpha={alpha}: are rank and alpha passed to LoRALinear in the right order?", case,
                 cause="rank_alpha")
    extra = [name for name in data["lora_modules"] if name not in case["targets"]]
    if extra:
        fail(f"add_lora also wrapped {', '.join(map(repr, extra))}, which is not in targets "
             f"{list(case['targets'])}: adapt only the modules named", case, cause="extra_targets")
    for name, (W, b) in expected["base"].items():
        seen = data["linears"].get(name)
        where = f"{name!r}" + (" (inside its LoRALinear)" if name in case["targets"] else "")
        if seen is None:
            fail(f"the nn.Linear {where} is gone after add_lora: only the targets are wrapped, the rest stays",
                 case, cause="linear_gone")
        if not (torch.equal(seen["weight"], W) and seen["bias"] is not None and torch.equal(seen["bias"], b)):
            fail(f"the pretrained weights of {where} changed: the base layer must be the model's own pretrained "
                 "nn.Linear, not a new one (a new nn.Linear starts from random weights)", case, cause="new_linear")
    if "out_init_error" in data:
        fail("the model add_lora returned cannot compute an output: is each LoRALinear where its nn.Linear was? "
             f"(Calling it raised {data['out_init_error']}.)", case, cause="call_raised")
    if "out_adapted" not in data:
        fail("the adapters do not have the shapes LoRALinear gives them", case, cause="adapter_shapes")
    seen, wanted = data["out_adapted"], expected["out_adapted"]
    if seen is None or seen.shape != wanted.shape:
        fail(f"with non-zero adapters loaded, the model's output should have shape {shape_str(wanted.shape)}, not "
             + ("a non-tensor" if seen is None else shape_str(seen.shape)), case, cause="not_in_forward")
    if not is_close(seen, wanted):
        fail("with non-zero adapters loaded, the model's output differs from what the adapted layers compute "
             f"(by up to {max_error(seen, wanted):.3g}): is the wrapped layer the "
             "one the model runs, inside the model itself rather than in a copy or a list?", case,
             cause="not_in_forward")


def starts_as_base(case, expected, data):
    _require_model(case, data)
    if "out_init_error" in data:
        fail("right after add_lora the model should compute what the pretrained model did, but it cannot "
             f"compute an output (calling it raised {data['out_init_error']})", case, cause="call_raised")
    seen, before, base = data["out_init"], data["out_before"], expected["out_base"]
    if not (is_close(seen, base) and seen.shape == before.shape and torch.equal(seen, before)):
        difference = (f"by up to {max_error(seen, base):.3g}" if seen.shape == base.shape
                      else f"in shape, {shape_str(seen.shape)} against {shape_str(base.shape)}")
        fail("right after add_lora the model should compute exactly what the pretrained model did (lora_B = 0), "
             f"bit for bit, but the outputs differ {difference}", case, cause="not_base_at_init")


def trainable(case, expected, data):
    _require_model(case, data)
    wanted = set(expected["trainable"])
    seen = {p["name"] for p in data["parameters"] if p["requires_grad"]}
    frozen_but_training = sorted(seen - wanted)
    if frozen_but_training and data["module_flags"]:
        flagged = ", ".join("The model" if path == "the model" else f"The module {path!r}"
                            for path in data["module_flags"])
        fail(f"these parameters still train but should be frozen: {', '.join(frozen_but_training)}. "
             f"{flagged} has an attribute `requires_grad` of its own: on a Module, "
             "`requires_grad = False` adds a plain attribute and freezes nothing, since requires_grad belongs "
             "to each parameter", case, cause="module_flag")
    if frozen_but_training:
        fail(f"these parameters still train but should be frozen: {', '.join(frozen_but_training)}. After "
             "add_lora only the adapters and the modules named in `trainable` train", case, cause="not_frozen")
    missing = sorted(wanted - seen)
    if missing:
        lora = all(name.split(".")[-2].startswith("lora_") for name in missing)
        why = ("the adapters must train: something froze lora_A and lora_B after the new layers made them trainable"
               if lora else "the modules named in `trainable` must train in full")
        fail(f"these parameters should train but are frozen: {', '.join(missing)}: {why}", case,
             cause="adapters_frozen" if lora else "trainable_frozen")
    count = sum(p["numel"] for p in data["parameters"] if p["requires_grad"])
    if count != expected["count"]:
        fail(f"{count:,} numbers train but expected {expected['count']:,}", case, cause="wrong_count")
    if "train_error" in data:
        fail(f"a few training steps on the adapted model raised {data['train_error']}", case, cause="train_raised")
    moved = []
    for key in expected["frozen"]:
        name, part = key.replace(".base_layer", "").rsplit(".", 1)
        before, after = data["linears"].get(name, {}).get(part), data["after_training"].get(key)
        if before is not None and after is not None and not torch.equal(before, after):
            moved.append(key)
    if moved:
        fail(f"after a few training steps, frozen parameters changed: {', '.join(moved)}", case, cause="frozen_moved")


def explain_add_lora(case, outcome):
    if outcome.get("type") in ("AttributeError", "KeyError") and any(
            f"{quote}{name}{quote}" in outcome.get("message", "") or f"got: {name}" in outcome.get("message", "")
            for name in case.get("targets", ()) if "." in name for quote in "'\""):
        return DOTTED
    return None


# --- count_parameters -------------------------------------------------------------------------

def count(case, expected, data):
    trainable_count, total = expected["trainable"], expected["total"]
    if data["kind"] != "pair" or len(data["items"]) != 2:
        fail(f"count_parameters should return a pair (trainable, total) of ints, like ({trainable_count}, {total}), "
             f"not a {data['kind']}", case, cause="not_pair")
    values = []
    for item, what in zip(data["items"], ("trainable", "total")):
        if item["kind"] != "int":
            fail(f"the {what} count should be an int, a number of numbers, but it is a {item['kind']}", case,
                 cause="not_int")
        values.append(item["value"])
    if values == [trainable_count, total]:
        return
    cause = _wrong(expected, values)
    if cause:
        fail(f"count_parameters returned ({values[0]:,}, {values[1]:,}) but the model has ({trainable_count:,}, "
             f"{total:,}): {CAUSES[cause]}", case, cause=cause)
    for seen, wanted, what in ((values[0], trainable_count, "trainable"), (values[1], total, "total")):
        if seen != wanted:
            fail(f"count_parameters says {seen:,} {what} numbers but the model has {wanted:,}", case,
                 cause="wrong_count")


def explain_count_parameters(case, outcome):
    return None


# --- the paper's table ------------------------------------------------------------------------

def paper_count(case, expected, data):
    if data["kind"] != "int":
        fail(f"lora_trainable_parameters should return an int, not a {data['kind']} "
             f"({data.get('value', data.get('repr'))})", case, cause="not_int")
    seen = data["value"]
    if seen == expected["count"]:
        return
    cause = _wrong(expected, seen)
    fail(f"lora_trainable_parameters returned {seen:,} but expected {expected['count']:,}"
         + (f": {CAUSES[cause]}" if cause else ""), case, cause=cause or "wrong_count")


def paper_millions(case, expected, data):
    n = case["count"]
    if data["kind"] != "str":
        fail(f"paper_millions should return a str like '4.7M', not a {data['kind']}", case, cause="not_str")
    seen = data["value"]
    if seen != expected["text"]:
        cause = _wrong(expected, seen)
        fail(f"paper_millions({n:,}) returned {seen!r} but expected {expected['text']!r}: "
             + (CAUSES[cause] if cause else "one decimal, truncated, then 'M'"), cause=cause or "wrong_text")
