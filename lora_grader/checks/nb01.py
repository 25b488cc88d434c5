"""Checks for notebook 01: the elementwise attempt, and the LoRA term done right.

Inputs and probes only (the sandbox imports this); the verdicts are in lora_grader.verdicts.nb01
and the expected values in lora_grader.answers.nb01. Attempt #1 is given code in the notebook;
the probe runs it as plain tensor math, so that nothing here can be imported as a LoRALinear."""
from __future__ import annotations

import torch

from lora_grader.checks import physical
from lora_grader.checks.core import (
    Check, ProbeError, base_linear, count_flops_and_largest, hidden_cases_of, returned, tensor,
)

MANUAL_POINTS = {"why_zero_init_hides_the_bug": 2}
VERDICTS, ANSWERS = "lora_grader.verdicts.nb01", "lora_grader.answers.nb01"


# --- silent_failure_case ---------------------------------------------------------------------

SIZE_KEYS = ("in_features", "out_features", "rank")
MAX_ELEMENTS = 1_000_000


def read_case_spec(spec) -> dict:
    """The sizes silent_failure_case() returned, bounded, or a ProbeError saying what is wrong."""
    if not isinstance(spec, dict):
        raise ProbeError(f"silent_failure_case() should return a dict, but returned a {type(spec).__name__}")
    missing = [key for key in SIZE_KEYS + ("x_shape",) if key not in spec]
    if missing:
        raise ProbeError(f"silent_failure_case() returned a dict without {', '.join(missing)}")
    sizes = {}
    for key in SIZE_KEYS:
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ProbeError(f"{key} should be a whole number from 1 to 4096, not {value!r}")
        sizes[key] = int(value)
    shape = spec["x_shape"]
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ProbeError(f"x_shape should be a tuple of positive whole numbers, like (5, 8), not {shape!r}")
    if torch.Size(shape).numel() > MAX_ELEMENTS:
        raise ProbeError(f"x_shape {tuple(shape)} is too big: keep x under {MAX_ELEMENTS:,} numbers")
    return {**sizes, "x_shape": [int(n) for n in shape]}


def attempt_inputs(seed: int, spec: dict):
    """The base layer, x, A and B Attempt #1 runs on with the student's sizes: A drawn from a
    Gaussian as Attempt #1 does, B non-zero as after training."""
    d, k, r = spec["in_features"], spec["out_features"], spec["rank"]
    return (base_linear(d, k, seed), tensor(spec["x_shape"], seed + 4), tensor((d, r), seed + 5),
            tensor((r, k), seed + 3))


def _attempt_1(x, base, A, B, rank):
    """What Attempt #1's forward computes (rank=rank, alpha=1), the elementwise bug included."""
    return base(x) + (1 / rank) * (A @ B) * x


def _probe_silent_failure_case(namespace, case):
    spec = read_case_spec(namespace["silent_failure_case"]())
    base, x, A, B = attempt_inputs(case["seed"], spec)
    try:
        with torch.no_grad():
            output, error = _attempt_1(x, base, A, B, spec["rank"]), ""
    except Exception as exception:
        output, error = None, f"{type(exception).__name__}: {exception}"
    return {"spec": spec, "output": output, "error": error}


# --- lora_update ---------------------------------------------------------------------------

def update_inputs(case):
    d, k, r, seed = case["in_features"], case["out_features"], case["rank"], case["seed"]
    x = tensor(case["x_shape"], seed)
    return x, tensor((d, r), seed + 1), tensor((r, k), seed + 2)


def _probe_lora_update(namespace, case):
    x, A, B = update_inputs(case)
    return returned(namespace["lora_update"](x, A, B, case["scaling"]))


def _probe_lora_update_flops(namespace, case):
    """The FLOP cases, measured by dispatch modes; then the large cases, where in = out = 200,000
    and a memory limit leaves no room for A @ B (160 GB) however it is formed."""
    x, A, B = update_inputs(case)
    update, results = namespace["lora_update"], []
    if "memory" in case:
        with physical.memory_limit() as limited:
            if not limited:
                return {"unmeasured": "no memory limit can be set here (RLIMIT_AS is enforced on Linux only)"}
            try:
                out = update(x, A, B, case["scaling"])
            except NotImplementedError:
                raise
            except Exception as error:  # MemoryError, or torch's RuntimeError when an allocation does not fit
                return {"failure": physical.failure(error, "lora_update")}
            return physical.sample(out, case)
    flops, largest = count_flops_and_largest(lambda: results.append(update(x, A, B, case["scaling"])))
    return {"flops": flops, "largest": largest, "result": returned(results[0])}


def _cases(shapes, seeds, scalings):
    return tuple(
        {"in_features": d, "out_features": k, "rank": r, "scaling": s, "x_shape": x_shape, "seed": seed}
        for (d, k, r, x_shape), seed, s in zip(shapes, seeds, scalings)
    )


def _large_cases(shapes, seeds, scalings):
    """Cases run under a memory limit that leaves no room for an (in, out) matrix."""
    return tuple({**case, "memory": physical.NO_ROOM} for case in _cases(shapes, seeds, scalings))


UPDATE_CASES = _cases(
    [(12, 20, 4, (5, 12)), (16, 6, 2, (2, 3, 16)), (8, 24, 3, (2, 2, 3, 8))],
    seeds=(0, 10, 20), scalings=(0.375, 2.5, 1.75),
)
# An in × out matrix is a hundred times larger than x, x @ A or the result: however A @ B is
# formed, its size shows. Both kinds of input, (tokens, in) and (batch, seq, in), are visible.
# Then a layer where A @ B would take 160 GB, which no trick inside the process can hide.
FLOP_CASES = _cases([(512, 384, 2, (3, 512)), (384, 512, 2, (2, 2, 384))], seeds=(60, 65), scalings=(0.5, 1.5)) \
    + _large_cases([(200_000, 200_000, 2, (3, 200_000))], seeds=(80,), scalings=(0.75,))
HIDDEN = hidden_cases_of("nb01", _cases, _large_cases)
UPDATE_HIDDEN = HIDDEN["update"]
FLOP_HIDDEN = HIDDEN["flops"]

CHECKS = (
    Check("silent_failure_case", "silent_failure_case", 2, _probe_silent_failure_case,
          f"{VERDICTS}:silent_failure_case", cases=({"seed": 0},), hidden_cases=HIDDEN["silent_failure_case"],
          expect=f"{ANSWERS}:silent_failure_case"),
    Check("lora_update_shape", "lora_update", 1, _probe_lora_update, f"{VERDICTS}:update_shape",
          UPDATE_CASES, UPDATE_HIDDEN, f"{VERDICTS}:explain_update", expect=f"{ANSWERS}:update"),
    Check("lora_update_values", "lora_update", 2, _probe_lora_update, f"{VERDICTS}:update_values",
          UPDATE_CASES, UPDATE_HIDDEN, f"{VERDICTS}:explain_update", expect=f"{ANSWERS}:update"),
    Check("lora_update_never_forms_AB", "lora_update", 1, _probe_lora_update_flops, f"{VERDICTS}:update_flops",
          FLOP_CASES, FLOP_HIDDEN, f"{VERDICTS}:explain_update", expect=f"{ANSWERS}:update_flops"),
)
