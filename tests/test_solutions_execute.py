"""Every solution notebook runs top to bottom in a real kernel, without an error."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

SOLUTIONS = sorted((Path(__file__).resolve().parents[1] / "solutions" / "lora").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.timeout(60)  # a minute each, kernel start included
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda path: path.name)
def test_solution_notebook_executes_without_error(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}" if errors else ""


@pytest.mark.slow
def test_a_failing_test_cell_shows_its_feedback_alone(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'def lora_update(x, lora_A, lora_B, scaling):\n    return x\n'
        'from lora_grader import check\ncheck("01", "lora_update_shape", globals())')])
    NotebookClient(notebook, timeout=60, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    error = next(output for output in notebook.cells[0].outputs if output.output_type == "error")
    shown = "\n".join(error.traceback)  # what JupyterLab and nbgrader's feedback display
    # the hint, wrapped into short lines for the page
    assert error.ename == "CheckFailed" and " ".join(error.evalue.split()) in " ".join(shown.split()), shown
    assert "lora_grader" not in shown and ".py" not in shown and "Traceback" not in shown, shown
