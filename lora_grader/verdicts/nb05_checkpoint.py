"""Verdicts for notebook 05's adapter checkpoint and merge: adapter_state_dict, load_adapter and
merge_all. Each compares the state a probe read out of the models (checks.nb05_checkpoint) with
the values lora_grader.answers.nb05 computed from the case."""
from __future__ import annotations

import torch

from lora_grader.verdicts.core import fail, is_close, max_error, numbers

# The checkpoints load_adapter_rejects_mismatch hands over (checks.nb05_checkpoint.MISMATCHES).
MISMATCHES = {
    "misspelled": "a key spelled differently",
    "missing": "a trainable key missing",
    "frozen": "a frozen base weight too",
    "wrong_shape": "an entry of the wrong shape",
}
NOT_STRICT = ("load_state_dict(..., strict=False) reports missing and unexpected keys in what it returns but "
              "raises for neither")


def _first_line(error: str) -> str:
    """An error's first line, short: torch's load_state_dict errors run over many lines."""
    line = error.splitlines()[0] if error else ""
    return line if len(line) <= 160 else line[:157] + "..."


def _same(seen, value) -> bool:
    return isinstance(seen, torch.Tensor) and seen.shape == value.shape and torch.equal(seen, value)


def _changed(state: dict, before: dict) -> list[str]:
    """The names whose value in `state` is not the one in `before` (or that one of them lacks)."""
    return sorted(key for key in state.keys() | before.keys()
                  if key not in state or key not in before or not _same(state[key], before[key]))


# --- adapter_state_dict -----------------------------------------------------------------------

def adapter_state_dict(case, expected, data):
    if data["kind"] != "dict":
        fail(f"adapter_state_dict returned a {data['kind']}, but should return a dict "
             "{name: tensor}, as model.state_dict() does", case, cause="not_dict")
    wanted, keys = set(expected["trainable"]), set(data["entries"])
    frozen = sorted(keys & set(expected["frozen"]))
    if frozen:
        fail(f"the checkpoint holds frozen weights ({', '.join(frozen)}): an adapter checkpoint holds only "
             "what trained, so it stays small and never overwrites the base model", case, cause="frozen_weights")
    if keys != wanted:
        missing, unknown = sorted(wanted - keys), sorted(keys - wanted)
        fail("the checkpoint's keys should be exactly the trainable parameters' names as model.state_dict() "
             f"spells them, {sorted(wanted)}"
             + (f"; missing: {', '.join(missing)}" if missing else "")
             + (f"; not parameters of the model: {', '.join(unknown)}" if unknown else ""), case, cause="wrong_keys")
    for key, value in expected["values"].items():
        entry = data["entries"][key]
        if entry["kind"] != "tensor" or entry.get("subclass"):
            fail(f"the checkpoint's {key} should be a tensor, not a {entry.get('subclass') or entry['kind']}", case,
                 cause="not_tensor")
        if not _same(entry["tensor"], value):
            fail(f"the checkpoint's {key} is not the model's current {key} "
                 f"(expected {numbers(value)}, got {numbers(entry['tensor'])})", case, cause="stale_values")
    if data["saves"]:
        fail(f"torch.save then torch.load(..., weights_only=True) fails on the checkpoint ({data['saves']}): "
             f"it should be a plain dict of tensors, not a {data['type']}", case, cause="not_loadable")


def explain_adapter_state_dict(case, outcome):
    return None


# --- load_adapter -----------------------------------------------------------------------------

def load_round_trip(case, expected, data):
    state, before = data["state"], expected["before"]
    for key, value in expected["after"].items():
        seen = state.get(key)
        if seen is None:
            fail(f"after load_adapter the model has no {key}: load_adapter should change values, not the model's "
                 "parts", case, cause="parameter_gone")
        if _same(seen, value):
            continue
        if _same(value, before[key]):
            fail(f"load_adapter changed the frozen {key}: it should change only what the checkpoint holds", case,
                 cause="frozen_changed")
        if _same(seen, before[key]):
            fail(f"after load_adapter, {key} still holds the value it had before: the checkpoint's value never "
                 "reached the model's own parameter of that name", case, cause="not_loaded")
        error = f" (off by up to {max_error(seen, value):.3g})" if seen.shape == value.shape else ""
        fail(f"after load_adapter, {key} is not the checkpoint's{error}: it should hold the checkpoint's entry "
             "of the same name", case, cause="wrong_values")
    added = sorted(state.keys() - expected["after"].keys())
    if added:
        fail(f"after load_adapter the model holds parameters it did not have ({', '.join(added)}): load_adapter "
             "should copy values into the parameters the model has", case, cause="added_parameters")
    if data["trainable"] != expected["trainable"]:
        fail("load_adapter changed which parameters train (requires_grad): it should only copy values in", case,
             cause="requires_grad_changed")


def load_mismatch(case, expected, data):
    outcomes = {outcome["what"]: outcome for outcome in data}
    if outcomes["fits"]["raised"]:
        fail(f"load_adapter raised {_first_line(outcomes['fits']['raised'])} on a checkpoint that fits the model: "
             "raise only when it does not fit", case, cause="raises_on_fit")
    for what, words in MISMATCHES.items():
        if outcomes[what]["raised"]:
            continue
        if what == "wrong_shape":
            target = case["targets"][0]
            fail(f"load_adapter accepted a checkpoint with {words} without an error: its {target}.lora_A.weight "
                 f"and {target}.lora_B.weight were saved at another rank than the model's {case['rank']}. An entry "
                 "whose shape is not its parameter's must be refused before anything is loaded (Tensor.copy_ "
                 "broadcasts a (1, n) tensor into an (r, n) one without a word)", case, cause="accepts_wrong_shape")
        fail(f"load_adapter accepted a checkpoint with {words} without an error. A typo in a key, a checkpoint "
             "for another model or one that would overwrite the base must be refused, with an error, before "
             f"anything is loaded: {NOT_STRICT}", case, cause=f"accepts_{what}")
    for what, words in MISMATCHES.items():
        changed = _changed(outcomes[what]["state"], expected["before"])
        if changed:
            fail(f"load_adapter raised {_first_line(outcomes[what]['raised'])} on a checkpoint with {words}, "
                 f"but only after changing the model ({', '.join(changed)} no longer hold what they held). The "
                 "task asks it to check before loading anything, so that a checkpoint that does not fit leaves "
                 "the model as it was", case, cause="loads_then_raises")


def explain_load_adapter(case, outcome):
    if outcome.get("type") == "RuntimeError" and "Missing key(s)" in outcome.get("message", ""):
        return ("load_state_dict is strict unless told otherwise: it expects every key of the model, frozen "
                "weights included, and an adapter checkpoint holds only what trained")
    return None


# --- merge_all --------------------------------------------------------------------------------

def _require_module(case, data):
    if data["returned"] != "module":
        fail(f"merge_all returned {data['returned']}: it should return a new model", case, cause="not_a_module")


def merge_plain(case, expected, data):
    _require_module(case, data)
    lora = sorted(path or "the model" for path, module in data["modules"].items() if module["lora"])
    if lora:
        fail(f"the merged model still holds LoRA parts ({', '.join(lora)}): every LoRALinear should be "
             "replaced by a plain nn.Linear holding the merged weight", case, cause="lora_left")
    for name in expected["weights"]:
        seen = data["modules"].get(name)
        if seen is None or not seen["linear"]:
            what = "missing" if seen is None else f"a {seen['type']}" + (
                " of another class than torch's" if seen["type"] == "Linear" else "")
            fail(f"the merged model's {name!r} should be an nn.Linear, not {what}", case, cause="not_linear")
    seen = {key: list(value.shape) for key, value in data["state"].items()}
    if seen != expected["shapes"]:
        fail(f"the merged model's state_dict should have exactly the pretrained model's keys and shapes "
             f"{expected['shapes']}, so that it loads into the original architecture, but it has {seen}", case,
             cause="wrong_state_keys")


def merge_outputs(case, expected, data):
    _require_module(case, data)
    for name, (W, b) in expected["weights"].items():
        seen = data["state"].get(f"{name}.weight")
        if seen is None or not is_close(seen, W):
            what = "W + scaling · lora_B.weight @ lora_A.weight" if name in case["targets"] else "the pretrained W"
            fail(f"the merged weight of {name!r} should be {what}"
                 + (f", but differs by up to {max_error(seen, W):.3g}" if seen is not None and seen.shape == W.shape
                    else ""), case, cause="wrong_weight")
        if not _same(data["state"].get(f"{name}.bias"), b):
            fail(f"the merged {name!r} should keep the pretrained bias, bit for bit", case, cause="bias_changed")
    if "out_error" in data:
        fail(f"calling the merged model raised {data['out_error']}", case, cause="call_raised")
    out = data["out"]
    if out is None or out.shape != expected["out"].shape:
        seen = "no tensor" if out is None else f"shape {tuple(out.shape)}"
        fail(f"the merged model's output should have the adapted model's shape {tuple(expected['out'].shape)}, "
             f"not {seen}", case, cause="wrong_output")
    if not is_close(out, expected["out"]):
        fail("the merged model's output differs from the adapted model's by up to "
             f"{max_error(out, expected['out']):.3g}", case, cause="wrong_output")


def merge_leaves_model(case, expected, data):
    _require_module(case, data)
    if _changed(data["model_after"], expected["adapted_state"]):
        fail("merge_all changed the adapted model it was given: the model passed in should stay as it was, "
             "adapters and all", case, cause="changed_model")
    if "out_error" in data or data["out"] is None:
        fail(f"calling the merged model raised {data.get('out_error')}" if "out_error" in data
             else "the merged model returned no tensor", case, cause="call_raised")
    if not _same(data["out_after_model_changed"], data["out"]):
        fail("the merged model shares tensors with the adapted model: when the grader then changed the adapted "
             "model's parameters in place, the merged model's output changed too", case, cause="shares_tensors")


def explain_merge_all(case, outcome):
    return None
