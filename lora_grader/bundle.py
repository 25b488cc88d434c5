"""`lora-bundle`: the folder and zip an instructor hands out to a class, with no answers in it.

The bundle holds the released notebooks (nbgrader has stripped their solutions and hidden tests),
the self-check `autograder/` with its pytest configuration, a README for students, and the grader
as a wheel built without lora_grader/checks/hidden.py (the hidden cases) and lora_grader/answers/
(the code that computes expected values): in their place it ships the visible cases' expected
values as data. Run it from the course repository.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HIDDEN_MODULE = Path("lora_grader") / "checks" / "hidden.py"
ANSWERS_PACKAGE = Path("lora_grader") / "answers"

STUDENT_README = """\
# LoRA, from the bug to the merge: your notebooks

Five graded Jupyter notebooks in `course/lora/`. Work through them in order; each stands alone.

## Set up

Run these in this folder, with Python 3.10 or newer. On Linux, and on Windows inside WSL:

```sh
python3 -m venv .venv
.venv/bin/pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install --quiet {wheel}
```

The second command installs the CPU build of PyTorch, which is all the course needs: without it,
pip would fetch the GPU build, with NVIDIA's CUDA libraries: several gigabytes. On macOS, leave
that command out (PyPI's PyTorch for the Mac has no CUDA libraries):

```sh
python3 -m venv .venv
.venv/bin/pip install --quiet {wheel}
```

pip prints nothing while it works (`--quiet`): wait for the prompt to come back. On Linux it downloads
about 370 MB, 190 MB of it PyTorch (six minutes at 1 MB/s), then installs them in a few minutes
more (under five on a busy 2-core machine); the `.venv` folder ends up at about 1.5 GB. If
`python3 -m venv` says that ensurepip is not available (Debian, Ubuntu), install that first:
`sudo apt install python3-venv`.

The wheel installs PyTorch (it keeps the one installed above), scikit-learn (notebook 05's digits
ship inside it), matplotlib, JupyterLab, pytest and the course's grader. Then open the notebooks
with `.venv/bin/jupyter lab course/lora`. On Windows, work inside WSL: the notebooks' test cells
run anywhere, but the self-check below runs on Linux and macOS.

## Check your work

Each test cell in a notebook checks the answer above it: run it after your cell. To check every
notebook at once and see your points:

```sh
.venv/bin/pytest autograder
```

`.venv/bin/pytest autograder -k 02` checks one notebook. A failed check says what was expected,
what your code gave, and what to look at next.

## What to hand in

The five notebooks in `course/lora/`, with your answers, in the way your instructor says
(nbgrader's exchange, JupyterHub, or an upload). Keep their names, and do not edit or delete the
test cells. Your instructor grades the same checks on further hidden cases (other sizes and
seeds, never other requirements), plus the written answers.
"""


def build(repo: Path, out: Path) -> Path:
    """Write the bundle into out/lora-course/ and out/lora-course.zip; return the zip's path."""
    folder = out / "lora-course"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(repo / "course" / "lora", folder / "course" / "lora",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(repo / "autograder", folder / "autograder", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "pytest.ini").write_text(pytest_ini(repo / "pyproject.toml"))
    wheel = build_student_wheel(repo, folder)
    (folder / "README.md").write_text(STUDENT_README.format(wheel=wheel.name))
    return Path(shutil.make_archive(str(folder), "zip", out, folder.name))


def pytest_ini(pyproject: Path) -> str:
    """The repository's pytest configuration, as a pytest.ini: `pytest autograder` runs the same."""
    options = tomllib.loads(pyproject.read_text())["tool"]["pytest"]["ini_options"]
    lines = ["[pytest]"]
    for key, value in options.items():
        if isinstance(value, list):
            value = "".join(f"\n    {item}" for item in value)
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def build_student_wheel(repo: Path, folder: Path) -> Path:
    """The grader's wheel, built from a copy of the package without its hidden cases and answers,
    with the visible cases' expected values as data."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source"
        shutil.copytree(repo / "lora_grader", source / "lora_grader",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", HIDDEN_MODULE.name, "shipped.pt"))
        shutil.rmtree(source / ANSWERS_PACKAGE)
        write_expected_values(source / "lora_grader" / "verdicts" / "shipped.pt")
        shutil.copy(repo / "pyproject.toml", source)
        (source / "README.md").write_text(STUDENT_README.format(wheel="the wheel"))  # the wheel's description
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--wheel-dir", str(folder), str(source)], check=True)
    [wheel] = folder.glob("*.whl")  # the folder was empty
    return wheel


def write_expected_values(path: Path) -> None:
    """What every check expects on its visible cases, computed here by the instructor's install."""
    import torch

    from lora_grader.checks import NOTEBOOKS, checks_of
    from lora_grader.verdicts.expected import build_table

    torch.save(build_table(check for key in NOTEBOOKS for check in checks_of(key)), path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="lora-bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the course repository (default: here)")
    parser.add_argument("--out", type=Path, default=Path("dist"), help="where to write it (default: dist)")
    args = parser.parse_args(argv)
    if not (args.repo / HIDDEN_MODULE).exists():
        parser.error(f"{args.repo.resolve()} is not the course repository (no {HIDDEN_MODULE})")
    args.out.mkdir(parents=True, exist_ok=True)
    archive = build(args.repo.resolve(), args.out.resolve())
    print(f"student bundle: {archive.with_suffix('')}/ and {archive}")


if __name__ == "__main__":
    main()
