"""Judging a physical case (checks/physical.py): in = out = 200,000 under a memory limit, where
an in × out matrix cannot be formed at all, so forming A @ B fails whatever hides it from the
FLOP counter."""
from __future__ import annotations

from lora_grader.verdicts.core import HOW_AB_IS_FORMED, ORDER_HINT, fail, is_close, numbers, shape_str


def judge_large(case, expected, data, *, stage: str, on: str, result: str, formula: str, hint=None) -> None:
    """`stage` ran (e.g. "forward") `on` the large sizes and returned its `result` (e.g. "output"),
    which must equal `formula`; `hint(message)` may name a likely cause for an error it raised."""
    if "unmeasured" in data:
        return  # no memory limit where this ran (not Linux): the instructor's grader measures it
    failure = data.get("failure")
    if failure:
        stage_now = failure.get("stage") or stage
        where = f" at {failure['where']}" if failure["where"] else ""
        if failure["out_of_memory"]:
            fail(f"{stage_now} ran out of memory{where} {on}: an in × out matrix there holds "
                 f"{expected['matrix']:,} numbers ({expected['matrix_bytes'] / 1e9:,.0f} GB), while x, x @ A and "
                 f"the {result} hold at most {expected['small']:,}. Is A @ B formed {HOW_AB_IS_FORMED}, even "
                 "out of the FLOP counter's sight? " + ORDER_HINT, case, cause="forms_AB")
        likely = hint(failure["message"]) if hint else None
        fail(f"{stage_now} raised {failure['type']}{where} {on}: {failure['message']}"
             + (f"\n  Likely cause: {likely}" if likely else ""), case, cause=f"raised:{failure['type']}")
    if data.get("kind") != "tensor":
        fail(f"{stage} returned a {data.get('kind')} {on}, not a tensor", case, cause="not_a_tensor")
    if list(data["shape"]) != list(expected["shape"]):
        fail(f"{on}, the {result} has shape {shape_str(data['shape'])} but expected "
             f"{shape_str(expected['shape'])}: does {stage} depend on the sizes?", case, cause="wrong_large")
    columns, sums = data["columns"], data["row_sums"]
    if not (is_close(columns, expected["columns"], rtol=1e-3) and is_close(sums, expected["row_sums"], rtol=1e-3)):
        fail(f"{on}, the {result} differs from {formula}: expected {numbers(expected['columns'])} in some of "
             f"its columns, got {numbers(columns)}. It is right for smaller sizes: does {stage} depend on "
             "the sizes?", case, cause="wrong_large")
