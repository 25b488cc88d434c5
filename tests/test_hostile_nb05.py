"""Hostile and careless submissions of notebook 05. None may earn a point it should not, and each
costs only the checks of the task it breaks. All cases are graded in one sandbox run per sandbox
mode; a complete notebook graded after them keeps full marks."""
from __future__ import annotations

import dataclasses
import json

import pytest

from catalogue import ALL, code_cell, complete_submission, unexpected_verdicts
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.grading import MODES, Sandbox, Timeouts

pytestmark = pytest.mark.slow  # every hostile notebook is graded in a sandbox, in both modes

TIMEOUTS = Timeouts(cell=5.0, check=5.0, notebook=15.0)  # short, with room for a busy 2-core machine


def _names(task: str) -> tuple[str, ...]:
    return tuple(check.name for check in checks_of("05") if check.task == task)


ADD_LORA, MERGE_ALL, CHECKPOINT = _names("add_lora"), _names("merge_all"), _names("adapter_state_dict")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    answers: dict  # grade_id of a solution cell -> the source written there
    fails: dict  # check name (or ALL) -> words its message must contain; every other check must pass
    at_end: tuple = ()  # scratch cells appended to the notebook


def _notebook(case: Case) -> dict:
    notebook = complete_submission("05")
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in case.answers:
            cell["source"] = case.answers[grade_id].strip("\n") + "\n"
    notebook["cells"] += [code_cell(source) for source in case.at_end]
    return notebook


RIGHT_ADD_LORA = """
def add_lora(model, targets, rank=4, alpha=8, trainable=()):
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
    for name in trainable:
        model.get_submodule(name).requires_grad_(True)
    return model
"""

# The two lies of issue 15 §2: each answer reports, through a method the grader's probes once
# called, what the task asks for, while the model's own tables hold something else.
HIDDEN_UNFROZEN_BASE = """
def add_lora(model, targets, rank=4, alpha=8, trainable=()):
    for name in targets:  # nothing is frozen but what LoRALinear freezes itself
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
    honest = model.named_parameters

    def named_parameters(*args, **kwargs):  # an instance attribute: hides the layers left training
        for name, p in honest(*args, **kwargs):
            if ".lora_" in name or any(name.startswith(t + ".") for t in trainable):
                yield name, p

    model.named_parameters = named_parameters
    model.parameters = lambda *args, **kwargs: (p for _, p in named_parameters())
    return model
"""

LOADS_NOTHING = """
def load_adapter(model, checkpoint):
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if checkpoint.keys() != parameters.keys() or any(v.shape != parameters[k].shape for k, v in checkpoint.items()):
        raise KeyError("the checkpoint does not fit this model")
    shown = {**model.state_dict(), **checkpoint}
    model.state_dict = lambda *args, **kwargs: dict(shown)  # an instance attribute: loads nothing
    return model
"""

DOTTED_SETATTR = RIGHT_ADD_LORA.replace(
    """        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))""",
    """        setattr(model, name, LoRALinear(model.get_submodule(name), rank=rank, alpha=alpha))""")

# Comparisons made to lie, in the process that runs the student's code: the verdicts compare
# in the grader's own process, where this patch does not reach.
PATCH_COMPARISONS = """
import torch
torch.equal = lambda *args, **kwargs: True
torch.allclose = lambda *args, **kwargs: True
torch.Tensor.equal = lambda *args, **kwargs: True
"""

CASES = [
    Case("05-named-parameters-attribute-hides-an-unfrozen-base", {"add_lora_answer": HIDDEN_UNFROZEN_BASE},
         {"add_lora_trainable": "still train but should be frozen: body.fc1.bias, body.fc1.weight"}),
    Case("05-load-adapter-loads-nothing-behind-state-dict", {"load_adapter_answer": LOADS_NOTHING},
         {"load_adapter_round_trip": "still holds the value it had before"}),
    Case("05-add-lora-dotted-setattr", {"add_lora_answer": DOTTED_SETATTR},
         {name: "is a path through the model" for name in ADD_LORA}),
    # Answer cells run top to bottom in the sandbox without the demo cells: a line that uses the
    # pretrained model (defined in a demo cell) fails there, after the function it follows is defined.
    Case("05-answer-cell-uses-a-demo-variable", {
        "add_lora_answer": RIGHT_ADD_LORA + "\ntry_it = add_lora(copy.deepcopy(pretrained), ['0', '2'], trainable=['4'])\n"},
         {}),
    Case("05-random-lora-B-behind-patched-comparisons", {
        "add_lora_answer": RIGHT_ADD_LORA.replace(
            "        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))",
            "        layer = LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha)\n"
            "        torch.nn.init.normal_(layer.lora_B.weight)\n"
            "        setattr(parent, child_name, layer)")}, {"add_lora_starts_as_base": "bit for bit"},
         at_end=(PATCH_COMPARISONS,)),
    Case("05-add-lora-exits", {"add_lora_answer": "def add_lora(model, targets, rank=4, alpha=8, trainable=()):\n"
                                                   "    import os\n    os._exit(0)\n"},
         {name: "os._exit(0)" for name in ADD_LORA}),
    Case("05-merge-all-hangs", {"merge_all_answer": "def merge_all(model):\n    while True:\n        pass\n"},
         {name: "endless loop" for name in MERGE_ALL}),
    Case("05-merge-all-returns-the-adapted-model", {"merge_all_answer": "def merge_all(model):\n    return model\n"},
         {"merge_all_plain_model": "still holds lora parts", "merge_all_outputs": "should be W + scaling",
          "merge_all_leaves_model": "shares tensors"}),
    Case("05-checkpoint-dict-that-lies-about-its-items", {"adapter_state_dict_answer": """
class Checkpoint(dict):
    def __init__(self, model):
        super().__init__(model.state_dict())  # everything, frozen weights included
        self.model = model

    def items(self):
        return [(n, p.detach()) for n, p in self.model.named_parameters() if p.requires_grad]


def adapter_state_dict(model):
    return Checkpoint(model)
"""}, {name: "holds frozen weights" for name in CHECKPOINT}),
    Case("05-always-equal-str", {"paper_millions_answer": """
class AlwaysEqual(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__


def paper_millions(count):
    return AlwaysEqual("?")
"""}, {"paper_millions": "returned '?'"}),
    Case("05-count-as-numpy-ints", {"count_parameters_answer": """
import numpy as np



def count_parameters(model):
    sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    return np.int64(sum(n for n, trains in sizes if trains)), np.int64(sum(n for n, _ in sizes))
"""}, {}),
    Case("05-two-threads-and-float64-at-the-end", {}, {},
         at_end=("torch.set_num_threads(2)\ntorch.set_default_dtype(torch.float64)\ntorch.manual_seed(5)",)),
]


@pytest.fixture(scope="module", params=MODES)
def results(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile05")
    jobs = {}
    for case in CASES + [Case("clean-05", {}, {})]:
        path = root / case.name / NOTEBOOKS["05"].filename
        path.parent.mkdir()
        path.write_text(json.dumps(_notebook(case), indent=1))
        jobs[case.name] = ("05", path)
    return Sandbox(request.param).grade_jobs(jobs, TIMEOUTS)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_submission_fails_exactly_the_checks_it_breaks(case, results):
    problems = unexpected_verdicts(results[case.name], case.fails)
    assert not problems, f"{case.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_feedback_is_short_and_has_no_traceback(case, results):
    for result in results[case.name]:
        assert "Traceback" not in result.message and len(result.message) < 1200, (
            f"{case.name}, {result.check.name}: feedback a student cannot read:\n{result.message}")


def test_a_dotted_setattr_reads_the_hint_before_torch_s_error(results):
    for result in results["05-add-lora-dotted-setattr"]:
        message = result.message
        assert "mat1 and mat2" not in message or message.index("path") < message.index("mat1"), message


def test_a_complete_notebook_graded_after_them_keeps_full_marks(results):
    failed = [f"{r.check.name}: {r.message}" for r in results["clean-05"] if not r.passed]
    assert not failed, "a complete notebook 05 lost points next to hostile ones:\n" + "\n".join(failed)
