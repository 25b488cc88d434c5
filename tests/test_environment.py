"""conda users and pip users get the same packages, at the same versions."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
CONDA_ONLY = {"python", "pip"}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def pip_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(_split(requirement) for requirement in project["dependencies"])


def conda_requirements() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("dependencies:") + 1
    found = {}
    for line in lines[start:]:
        match = re.match(r"  - ([^\s:][^:]*)$", line)
        if match:
            name, spec = _split(match.group(1))
            if name not in CONDA_ONLY:
                found[CONDA_NAMES.get(name, name)] = spec
    return found


def test_conda_and_pip_list_the_same_packages_and_versions():
    pip, conda = pip_requirements(), conda_requirements()
    assert conda == pip, f"environment.yml {conda} differs from pyproject.toml {pip}"


def test_environment_uses_conda_forge_and_installs_the_project():
    text = (ROOT / "environment.yml").read_text()
    assert "- conda-forge" in text, "environment.yml should install from conda-forge"
    assert "--editable ." in text, "environment.yml should pip-install the project itself (lora_grader)"


def test_torch_range_admits_the_cpu_wheel_used_in_ci():
    spec = pip_requirements()["torch"]
    lower = re.search(r">=([\d.]+)", spec).group(1)
    upper = re.search(r"<([\d.]+)", spec).group(1)
    as_tuple = lambda version: tuple(int(part) for part in version.split("."))
    assert as_tuple(lower) <= (2, 13, 0) < as_tuple(upper), f"torch {spec} does not admit 2.13.0"


def test_ci_installs_the_project_as_the_readme_tells_maintainers():
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"^python -m (pip install) --quiet (-e .*)$", ci, flags=re.MULTILINE)
    assert install, ".ci/run should pip-install the project"
    command = " ".join(install.groups())
    assert command in (ROOT / "README.md").read_text(), f"the README should show CI's install: {command}"


def test_the_tests_run_without_pytest_xdist():
    """Two workers are CI's choice (README, Maintainers); one after the other must still work."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
                           "tests/test_physical.py"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
