"""The checks hold: the grader ships no drop-in answer, every catalogued bug is caught by the
visible cases a student runs in the notebook, and the feedback does not hand over an answer."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest
import torch

import lora_grader
from catalogue import BUGS, ROOT, complete_submission, write_submission
from catalogue import Entry
from in_kernel import forked, run_cells
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.checks.core import count_flops_and_largest
from lora_grader.verdicts.core import CheckFailed, run_check
from lora_grader.grading import Sandbox

# How each task is called by its checks: a candidate whose signature cannot take the call
# fails every check at once, and is left out.
CALLS = {
    "silent_failure_case": ((), {}),
    "lora_update": ((1, 2, 3, 4), {}),
    "LoRALinear": ((1,), {"rank": 2, "alpha": 3}),
    "lora_flops": ((1, 2, 3, 4), {"materialize": True}),
    "count_trainable_parameters": ((1,), {}),
    "gradient_prediction": ((), {}),
    "MergeableLoRALinear": ((1,), {"rank": 2, "alpha": 3}),
    "export_merged": ((1,), {}),
    "add_lora": ((1, 2), {"rank": 2, "alpha": 3, "trainable": ()}),
    "count_parameters": ((1,), {}),
    "adapter_state_dict": ((1,), {}),
    "load_adapter": ((1, 2), {}),
    "merge_all": ((1,), {}),
    "lora_trainable_parameters": ((1, 2, 3), {}),
    "paper_millions": ((1,), {}),
}


def _modules():
    # not a package's __main__: importing it runs its command
    names = [info.name for info in pkgutil.walk_packages(lora_grader.__path__, "lora_grader.")
             if not info.name.endswith(".__main__")]
    return [lora_grader] + [importlib.import_module(name) for name in names]


def _takes(candidate, task) -> bool:
    try:
        inspect.signature(candidate).bind(*CALLS[task][0], **CALLS[task][1])
        return True
    except (TypeError, ValueError):
        return False


def _candidates(key, public_only=False) -> list[dict]:
    """Submissions for notebook `key`: each binds every task it can to one object defined in the
    grader, as `from lora_grader... import name as Task` in a cell of its own."""
    tasks = sorted({check.task for check in checks_of(key)})
    found = {task: [] for task in tasks}
    for module in _modules():
        for name, value in sorted(vars(module).items()):
            if name.startswith("_" if public_only else "__") or getattr(value, "__module__", None) != module.__name__:
                continue
            for task in tasks:
                if callable(value) and _takes(value, task):
                    found[task].append(f"from {module.__name__} import {name} as {task}")
    # The i-th submission binds each task to its i-th candidate: every pair is graded once.
    count = max(map(len, found.values()), default=0)
    return [{task: lines[i] for task, lines in found.items() if i < len(lines)} for i in range(count)]


def _submission(key, imports: dict, number: int, unsolved: dict | None = None) -> Entry:
    return Entry(f"{key}-grader-object-{number}", key, unsolved or {}, extra_cells=tuple(imports.values()))


def _release_cells(key) -> dict:
    """The release's source of every solution cell: only the imported objects answer anything.
    Notebook 04 keeps its MergeableLoRALinear, which export_merged is graded on."""
    release = json.loads((ROOT / "course" / "lora" / NOTEBOOKS[key].filename).read_text())
    return {
        cell["metadata"]["nbgrader"]["grade_id"]: "".join(cell["source"])
        for cell in release["cells"]
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution")
        and cell["metadata"]["nbgrader"]["grade_id"] != "mergeable_lora_linear_answer"
    }


def _earned(key, passed: dict, imports: dict) -> list[str]:
    """'check <- import line' for every check of a bound task that passed."""
    return [f"{check.name} <- {imports[check.task]}" for check in checks_of(key)
            if check.task in imports and passed.get(check.name)]


SUBMISSIONS = {key: _candidates(key) for key in NOTEBOOKS}


def _grade_in_kernel(path, key, names=None) -> dict:
    """{check name: passed} for the named checks (default: all), visible and hidden, as nbgrader's
    test cells run them."""
    namespace = run_cells(path)
    passed = {}
    for check in checks_of(key):
        if names is not None and check.name not in names:
            continue
        try:
            lora_grader.check(key, check.name, namespace)
            lora_grader.check(key, check.name, namespace, hidden=True)
            passed[check.name] = True
        except CheckFailed:
            passed[check.name] = False
    return passed


@pytest.mark.slow
@pytest.mark.parametrize("key", NOTEBOOKS)
def test_no_object_in_the_grader_answers_a_task_in_the_kernel(key, tmp_path):
    earned = []
    for number, imports in enumerate(SUBMISSIONS[key]):
        path = write_submission(_submission(key, imports, number), tmp_path / str(number), keep_demos=False)
        names = [check.name for check in checks_of(key) if check.task in imports]
        passed = forked(_grade_in_kernel, path, key, names)
        if passed is None:  # the kernel died: grade each check in a kernel of its own, so no crash hides one
            passed = {name: (forked(_grade_in_kernel, path, key, [name]) or {}).get(name) for name in names}
        earned += _earned(key, passed, imports)
    assert not earned, "objects of the grader earn points as answers:\n" + "\n".join(earned)


def test_the_search_for_answers_finds_callable_objects():
    """Not vacuous: some of the grader's objects can be called as some task (none answers it)."""
    assert any(SUBMISSIONS.values()), "no object in the grader could even be called as a task"


@pytest.mark.slow
def test_no_object_in_the_grader_answers_a_task_in_the_sandbox(tmp_path):
    """As above for the grader's public names, graded by `pytest autograder`'s engine. The other
    exercises are left unsolved, so that only the imported objects' checks take time."""
    jobs, imports_of = {}, {}
    for key in NOTEBOOKS:
        unsolved = _release_cells(key)
        for number, imports in enumerate(_candidates(key, public_only=True)):
            # Notebook 04's MergeableLoRALinear stays solved (export_merged is graded on it), and
            # the sandbox refuses the import: its own checks would pass for the solution's sake.
            imports = {task: line for task, line in imports.items() if (key, task) != ("04", "MergeableLoRALinear")}
            if not imports:
                continue
            entry = _submission(key, imports, number, unsolved)
            jobs[entry.name] = (key, write_submission(entry, tmp_path / entry.name, keep_demos=False))
            imports_of[entry.name] = imports
    graded = Sandbox().grade_jobs(jobs)
    earned = [line for name, results in graded.items()
              for line in _earned(jobs[name][0], {r.check.name: r.passed for r in results}, imports_of[name])]
    assert not earned, "objects of the grader earn points as answers:\n" + "\n".join(earned)


# --- the visible cases catch every catalogued bug ---------------------------------------------

def _visible_verdict(path, key, check_name) -> str:
    """The feedback of one check on the visible cases only, as the notebook's test cell shows it."""
    check = {check.name: check for check in checks_of(key)}[check_name]
    try:
        run_check(check, run_cells(path), hidden=False)
        return ""
    except CheckFailed as failure:
        return str(failure)


@pytest.mark.parametrize("entry", BUGS, ids=lambda entry: entry.name)
def test_visible_cases_catch_every_catalogued_bug(entry, tmp_path):
    path = write_submission(entry, tmp_path, keep_demos=False)
    message = forked(_visible_verdict, path, entry.notebook, entry.caught_by)
    assert message is not None, f"{entry.name}: the notebook's kernel died or hung"
    assert message, (f"{entry.name}: the notebook's test cell for {entry.caught_by} shows ✓ on its visible "
                     "cases, and only the hidden cases catch the bug")
    assert entry.says.lower() in message.lower(), (
        f"{entry.name}: on the visible cases, {entry.caught_by} does not say {entry.says!r}:\n{message}")


def test_the_complete_submissions_pass_in_the_kernel(tmp_path):
    """The in-kernel grading above is sound: the solutions pass every check there."""
    for key in NOTEBOOKS:
        path = tmp_path / f"{key}.ipynb"
        path.write_text(json.dumps(complete_submission(key)))
        passed = forked(_grade_in_kernel, path, key)
        assert passed and all(passed.values()), f"notebook {key}: {passed}"


# --- feedback that does not give the answer away ------------------------------------------------

@pytest.mark.parametrize("key", ["lora_A.weight", "lora_B.weight", "base_layer.weight"])
def test_gradient_feedback_does_not_state_the_true_value(key):
    from lora_grader.answers.nb03 import gradient_prediction, true_gradient_kinds
    from lora_grader.checks import nb03
    from lora_grader.verdicts import nb03 as verdicts
    from lora_grader.verdicts.core import resolve

    case = nb03.PREDICTION_CASES[0]
    truth, expected = true_gradient_kinds(case), gradient_prediction(case)
    for wrong in (word for word in verdicts.WORDS if word != truth[key]):
        answers = {**truth, key: wrong}
        data = {"kind": "dict", "answers": [{"key": k, "value": v, "kind": "str"} for k, v in answers.items()]}
        check = next(c for c in nb03.CHECKS if c.name.startswith("gradient_prediction") and key in
                     (verdicts.BASE_KEYS if c.name.endswith("base") else verdicts.LORA_KEYS))
        with pytest.raises(CheckFailed) as failure:
            resolve(check.verdict)(case, expected, data)
        assert repr(truth[key]) not in str(failure.value), str(failure.value)


# --- the measure behind "never forms A @ B" -----------------------------------------------------

def test_an_in_by_out_matrix_formed_without_matmul_is_the_largest_allocation():
    x, A, B = torch.randn(3, 512), torch.randn(512, 2), torch.randn(2, 384)
    flops, largest = count_flops_and_largest(lambda: (x[..., :, None] * (A[:, :, None] * B).sum(1)).sum(-2))
    assert flops == 0 and largest >= 512 * 384


def test_views_of_a_weight_are_not_allocations():
    layer, x = torch.nn.Linear(512, 384), torch.randn(3, 512)
    _, largest = count_flops_and_largest(lambda: x @ layer.weight.T + layer.bias)
    assert largest == 3 * 384
