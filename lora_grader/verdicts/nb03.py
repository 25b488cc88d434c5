"""Verdicts for notebook 03's own checks (its LoRALinear checks are the shared layer checks).

The expected values come from lora_grader.answers.nb03: the trainable count of each module with
the counts the usual mistakes give, and for gradient_prediction a digest of each parameter's
true answer, so that the table shipped with the student wheel holds no answer in words.
"""
from __future__ import annotations

import hashlib

from lora_grader.verdicts.core import fail, numbers
from lora_grader.verdicts.expected import case_key

# --- count_trainable_parameters ---------------------------------------------------------------

# What a wrong count most likely means, by the name answers.nb03 gives each wrong count: what is
# wrong and where to look, never the code that fixes it.
COUNT_CAUSES = {
    "counted_frozen": "frozen parameters were counted too: look at what decides whether a parameter trains",
    "only_frozen": "only the frozen parameters were counted: look at the condition that picks the parameters",
    "shared_twice": "a shared parameter was counted twice: it is one tensor used in two places, and walking "
                    "the submodules one by one meets it in each",
    "frozen_and_shared_twice": "frozen parameters were counted, and a shared one twice",
    "counted_tensors": "that is the number of trainable tensors, not of numbers: each tensor holds many",
    "counted_buffers": "buffers (like BatchNorm's running statistics) were counted: they are state, not "
                       "parameters, and never train",
}

_KIND_HINTS = {
    "float": ": a count of numbers is whole; look for a division or a float on the way",
    "bool": ": the count itself, not whether anything trains",
    "str": ": the number itself, not text",
}


def count_trainable_parameters(case, expected, data):
    kind, count = data["kind"], expected["count"]
    if kind == "tensor":
        fail(f"count_trainable_parameters returned a tensor ({numbers(data['tensor'])}) but should return "
             "a Python int: look at where the count became a tensor", case, cause="tensor")
    if kind != "int":
        seen = data.get("value", data.get("repr"))
        fail(f"count_trainable_parameters returned a {kind} ({seen!r}) but should return an int"
             f"{_KIND_HINTS.get(kind, '')}", case, cause=f"returned_{kind}" if kind in _KIND_HINTS else "not_int")
    if data["value"] == count:
        return
    key = next((key for value, key in expected["wrong"] if value == data["value"]), None)
    why = (COUNT_CAUSES[key] if key in COUNT_CAUSES else
           "look at which parameter tensors your count includes, and how many times it includes each")
    fail(f"count_trainable_parameters returned {data['value']:,} but the module has {count:,} trainable "
         f"numbers: {why}", case, cause=key if key in COUNT_CAUSES else "wrong_count")


# --- gradient_prediction ----------------------------------------------------------------------

WORDS = ("none", "zero", "nonzero")
BASE_KEYS = ("base_layer.weight", "base_layer.bias")
LORA_KEYS = ("lora_A.weight", "lora_B.weight")


def digest(case, key: str, word: str) -> str:
    """What the expected values hold in place of the answer `word` for parameter `key`."""
    return hashlib.sha256(f"{case_key(case)}|{key}|{word}".encode()).hexdigest()


def _normalised(answer) -> str | None:
    """The student's word as one of WORDS ('non-zero' and Python None are fine), else None."""
    if answer["kind"] == "NoneType":
        return "none"
    if answer["value"] is None:
        return None
    word = "".join(answer["value"].lower().replace("-", "").replace("_", "").split())
    return word if word in WORDS else None


def _read_prediction(data) -> dict[str, str]:
    keys = BASE_KEYS + LORA_KEYS
    if data["kind"] != "dict":
        fail(f"gradient_prediction() returned a {data['kind']}, but should return a dict with the keys "
             f"{', '.join(keys)}, each mapped to 'none', 'zero' or 'nonzero'.", cause="not_dict")
    answers = {answer["key"]: answer for answer in data["answers"]}
    missing = [key for key in keys if key not in answers]
    unknown = [key for key in answers if key not in keys]
    if missing:
        fail(f"gradient_prediction() has no answer for {', '.join(missing)}"
             + (f" (it has {', '.join(map(repr, unknown))} instead)" if unknown else "")
             + f". The keys are the names layer.named_parameters() gives: {', '.join(keys)}.", cause="missing_keys")
    if unknown:
        fail(f"gradient_prediction() has keys that are not parameters of the layer: {', '.join(map(repr, unknown))}. "
             f"Use exactly {', '.join(keys)}.", cause="unknown_keys")
    prediction = {}
    for key in keys:
        word = _normalised(answers[key])
        if word is None:
            seen = repr(answers[key]["value"]) if answers[key]["value"] is not None else f"a {answers[key]['kind']}"
            fail(f"gradient_prediction()[{key!r}] is {seen}; answer with one of the strings "
                 f"{', '.join(map(repr, WORDS))}.", cause="not_a_word")
        prediction[key] = word
    return prediction


# Where to look, the same whatever was predicted: the feedback must not hand over the answer.
LOOK_AT = {
    "base_layer.weight": "the base layer is frozen: what does autograd do for a parameter that does "
                         "not require grad, and what is its .grad before any backward pass?",
    "base_layer.bias": "the bias is frozen with the rest of the base layer: what does autograd do for a "
                       "parameter that does not require grad?",
    "lora_A.weight": "follow the chain rule from the output back to lora_A: which module does every path "
                     "pass through, and what is its weight at initialisation?",
    "lora_B.weight": "lora_B's gradient is built from its input, lora_A(x), and the gradient arriving at "
                     "the output: is either of them zero at initialisation?",
}


def _judge_prediction(keys, case, expected, data):
    prediction = _read_prediction(data)
    wrong = [key for key in keys if digest(case, key, prediction[key]) != expected["kinds"][key]]
    if wrong:
        fail("\n  ".join(["a fresh layer (lora_B = 0, base frozen) after one backward pass:"]
                         + [f"{key}: {prediction[key]!r} is not what one backward pass leaves. Hint: {LOOK_AT[key]}"
                            for key in wrong]),
             cause="wrong:" + "+".join(wrong))  # e.g. "wrong:lora_A.weight"


def gradient_prediction_base(case, expected, data):
    _judge_prediction(BASE_KEYS, case, expected, data)


def gradient_prediction_lora(case, expected, data):
    _judge_prediction(LORA_KEYS, case, expected, data)
