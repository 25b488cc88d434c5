"""A throwaway copy of the course for running nbgrader's own apps, as an instructor would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nbgrader.api import Gradebook

ROOT = Path(__file__).resolve().parents[1]


class Course:
    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(ROOT / "solutions", root / "solutions")
        shutil.copy(ROOT / "nbgrader_config.py", root)
        # nbgrader calls `alembic` by name: the venv's bin must be on PATH even when not activated.
        self.env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))

    def nbgrader(self, *args: str) -> str:
        """Run one nbgrader command here; its output, or a failure that shows it."""
        done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True)
        if done.returncode:
            raise AssertionError(f"nbgrader {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def submit(self, student: str, notebooks: dict[str, dict]) -> Path:
        """Place a student's notebooks where `nbgrader autograde` looks for them."""
        folder = self.root / "submitted" / student / "lora"
        folder.mkdir(parents=True, exist_ok=True)
        for filename, notebook in notebooks.items():
            (folder / filename).write_text(json.dumps(notebook, indent=1))
        return folder

    def scores(self, student: str, notebook: str) -> dict[str, tuple[float, float]]:
        """{grade_id: (autograded score, max score)} for every graded cell of one notebook
        ("01_elementwise_attempt.ipynb"): grade ids repeat across notebooks."""
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as gradebook:
            submitted = gradebook.find_submission_notebook(Path(notebook).stem, "lora", student)
            return {grade.name: (grade.auto_score, grade.max_score) for grade in submitted.grades}
