"""No process that runs student code holds anything that computes an expected value.

A student function, called by the grader's probe, looks for the grader's verdicts and answers
the way a determined student would: in `sys.modules`, and among every function reachable from a
loaded module or from a frame on the call stack (a function copied out of a module keeps its
code's file name). Were anything there, forging a
result would cost less than answering; the test passes only if each notebook still earns full
marks with that search running inside every probe, in both sandbox modes.
"""
from __future__ import annotations

import pytest

from catalogue import Entry, write_submission
from lora_grader.grading import MODES, Sandbox

SEARCH = '''
def _answer_code_reachable():
    # The sandbox refuses gc.get_objects, so walk what a frame-walking student reaches: every
    # loaded module, and the globals and locals of every frame on the stack, the grader's included.
    import os, sys, types
    names = ("lora_grader.verdicts", "lora_grader.answers")
    folders = tuple(os.sep + os.path.join("lora_grader", part) + os.sep for part in ("verdicts", "answers"))
    found = {name for name in list(sys.modules) if name.startswith(names)}

    def running():
        yield walker.gi_frame.f_back  # the frame that called next(): no audit event, no guard

    walker = running()
    frame, frames = next(walker), 0
    todo = []
    while frame is not None:
        todo += [frame.f_globals, frame.f_locals]
        frame, frames = frame.f_back, frames + 1
    todo += [vars(module) for module in list(sys.modules.values()) if isinstance(module, types.ModuleType)]
    seen = set()
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, types.FunctionType):
            if (value.__module__ or "").startswith(names) or os.path.dirname(value.__code__.co_filename) + os.sep in folders:
                found.add(f"{value.__module__}.{value.__qualname__}")
            todo += [value.__globals__, value.__defaults__ or (), value.__kwdefaults__ or {}]
            for cell in value.__closure__ or ():
                try:
                    todo.append(cell.cell_contents)
                except ValueError:
                    pass
        elif isinstance(value, dict):
            todo += list(dict.values(value))  # not value.values(): a lazy mapping imports on access
        elif type(value) in (list, tuple, set, frozenset):
            todo += list(value)
        elif isinstance(value, types.MethodType):
            todo.append(value.__func__)
        elif isinstance(value, type):
            todo.append(dict(vars(value)))
    assert frames > 3 and len(seen) > 10_000, "the search reached too little to prove anything"
    return sorted(found)
'''

# One graded function per notebook, wrapped so that the search runs inside the grader's probe.
WRAPPED = {"01": "lora_update", "02": "lora_flops", "03": "count_trainable_parameters",
           "04": "export_merged", "05": "paper_millions"}


def _wrapper(task: str) -> str:
    return SEARCH + f'''
_graded = {task}
_searched = {{}}

def {task}(*args, **kwargs):
    import os, warnings
    if _searched.get("pid") != os.getpid():  # once per process: each probe may be a fresh fork
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _searched.update(pid=os.getpid(), found=_answer_code_reachable())
    found = _searched["found"]
    if found:
        raise RuntimeError("the grader's answer code is reachable from student code: " + ", ".join(found[:5]))
    return _graded(*args, **kwargs)
'''


@pytest.fixture(scope="module")
def searched_notebooks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("purity")
    for key, task in WRAPPED.items():
        write_submission(Entry(f"purity-{key}", key, {}, extra_cells=(_wrapper(task),)), folder, keep_demos=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_no_answer_code_in_the_processes_that_run_student_code(mode, searched_notebooks):
    sandbox = Sandbox(mode)
    try:
        results = sandbox.grade(searched_notebooks, WRAPPED)
    finally:
        sandbox.close()
    lost = [f"{r.notebook} {r.check.name}: {r.message}" for rs in results.values() for r in rs if not r.passed]
    assert not lost, "\n".join(lost)


def test_the_search_finds_answer_code_where_it_is_loaded():
    """The control: in this process, which has imported the verdicts and answers, the same search
    finds them (else the test above would prove nothing)."""
    import lora_grader.answers.nb02  # noqa: F401
    import lora_grader.verdicts.nb02  # noqa: F401

    namespace: dict = {}
    exec(SEARCH, namespace)
    found = namespace["_answer_code_reachable"]()
    assert "lora_grader.answers.nb02" in found and "lora_grader.verdicts.nb02.lora_flops" in found
