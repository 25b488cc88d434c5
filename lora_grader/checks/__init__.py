"""The graded notebooks and their checks, one module per notebook."""
from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Notebook:
    key: str  # "01"
    filename: str
    title: str

    @property
    def module(self):
        return importlib.import_module(f"lora_grader.checks.nb{self.key}")


NOTEBOOKS = {
    notebook.key: notebook
    for notebook in (
        Notebook("01", "01_elementwise_attempt.ipynb", "The elementwise attempt"),
        Notebook("02", "02_factored_fix.ipynb", "The fix: B(Ax)"),
        Notebook("03", "03_linear_adapters.ipynb", "nn.Linear adapters, init and gradients"),
        Notebook("04", "04_merging.ipynb", "Merging the adapter"),
        Notebook("05", "05_lora_end_to_end.ipynb", "LoRA on a real model, end to end"),
    )
}


def checks_of(key: str):
    return NOTEBOOKS[key].module.CHECKS


def probe_groups(key: str) -> list[list]:
    """Checks that share a probe and its cases, in order. Each group's probe runs once, so a hang
    in the student's code costs one check timeout, not one per check that reads it; the grader
    knows from the same groups which check each result belongs to."""
    groups: dict[tuple, list] = {}
    for check in checks_of(key):
        groups.setdefault((check.probe, check.task, repr(check.all_cases)), []).append(check)
    return list(groups.values())
