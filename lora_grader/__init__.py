"""Grading engine of the LoRA course: shared checks, a sandbox for student code, and reports."""


def check(notebook: str, name: str, namespace, hidden: bool = False) -> None:
    """Run one check of a notebook on the names defined in `namespace` (an nbgrader test cell
    passes `globals()`). Raises CheckFailed with feedback; prints a line when it passes."""
    __tracebackhide__ = True
    from lora_grader.checks import checks_of
    from lora_grader.verdicts.core import run_check

    by_name = {c.name: c for c in checks_of(notebook)}
    run_check(by_name[name], namespace, hidden=hidden)
