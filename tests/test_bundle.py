"""The student bundle (`lora-bundle`) holds no answers, and works on its own in a fresh venv."""
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from catalogue import complete_submission
from lora_grader.bundle import HIDDEN_MODULE, build, main
from lora_grader.checks import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
# Solution lines the grader must hold too: notebook 05's verdicts build the expected model by
# freezing it and unfreezing the trainable modules, and the feedback names that step. Neither says
# how to wrap the targets, which is the task.
IDIOMS_THE_GRADER_NEEDS = {"model.requires_grad_(False)", "model.get_submodule(name).requires_grad_(True)"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build(ROOT, tmp_path_factory.mktemp("bundle"))


def _members(name: str, data: bytes):
    """(path, text) of a file, and of every file inside it when it is a zip (the wheel too)."""
    if name.endswith((".zip", ".whl")):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield from _members(f"{name}!{member}", archive.read(member))
        return
    text = data.decode("utf-8", errors="replace")
    if name.endswith(".ipynb"):  # the cells' sources as written, not JSON-escaped
        text += "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    yield name, text


def _bundle_files(bundle: Path) -> dict[str, str]:
    files = {}
    for path in [bundle, *bundle.with_suffix("").rglob("*")]:
        if path.is_file():
            files.update(_members(str(path.relative_to(bundle.parent)), path.read_bytes()))
    return files


def _lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


def _leaks(files: dict[str, str], lines: set[str]) -> list[str]:
    """Each line of `lines` that is a line of a file in the bundle."""
    return sorted(f"{name}: {line!r}" for name, text in files.items() for line in _lines(text) & lines)


def _given() -> set[str]:
    """Lines the released notebooks hold anyway (the given code, the task statements)."""
    return {line for path in (ROOT / "course" / "lora").glob("*.ipynb")
            for cell in json.loads(path.read_text())["cells"] for line in _lines("".join(cell["source"]))}


def _solution_lines() -> set[str]:
    """Every substantive line a student writes: the solution regions of solution cells (all of
    a written answer), without the lines the released notebooks give anyway."""
    lines = set()
    for path in (ROOT / "solutions" / "lora").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if not cell["metadata"].get("nbgrader", {}).get("solution"):
                continue
            source = "".join(cell["source"])
            regions = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", source, re.S) or [source]
            lines |= {line for region in regions for line in _lines(region)}
    return {line for line in lines - _given() - IDIOMS_THE_GRADER_NEEDS if len(line) >= 12}


def test_bundle_holds_notebooks_self_check_readme_and_a_wheel(bundle):
    folder = bundle.with_suffix("")
    assert sorted(p.name for p in (folder / "course" / "lora").glob("*.ipynb")) == \
        sorted(n.filename for n in NOTEBOOKS.values())
    assert (folder / "autograder" / "conftest.py").exists() and (folder / "pytest.ini").exists()
    [wheel] = folder.glob("lora_course-*.whl")
    assert wheel.name in (folder / "README.md").read_text()
    with zipfile.ZipFile(bundle) as archive:
        assert {name.split("/", 1)[1] for name in archive.namelist() if not name.endswith("/")} == \
            {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_bundle_holds_no_solution_text(bundle):
    lines = _solution_lines()
    assert len(lines) > 50, "the scan found too few solution lines to mean anything"
    assert not _leaks(_bundle_files(bundle), lines)


def test_bundle_holds_no_hidden_cases(bundle):
    files = _bundle_files(bundle)
    assert not [name for name in files if name.endswith(HIDDEN_MODULE.name)]
    assert not _hidden_leaks(files)


def _hidden_leaks(files: dict[str, str]) -> list[str]:
    """Each line of hidden.py that holds a number, found anywhere in a file (not only as a line)."""
    values = {line for line in _lines((ROOT / HIDDEN_MODULE).read_text()) if re.search(r"\d", line) and len(line) >= 12}
    assert len(values) > 20
    return sorted(f"{name}: {value!r}" for name, text in files.items() for value in values if value in text)


def test_bundle_holds_no_catalogue_and_no_solutions(bundle):
    files = _bundle_files(bundle)
    assert not [name for name in files if re.search(r"(^|/|!)(solutions|tests|catalogue)/", name)]
    assert not _leaks(files, _catalogue_lines())


def _catalogue_lines() -> set[str]:
    """The catalogue's own lines: not those it shares with the release or the student's grader."""
    catalogue = {line for path in (ROOT / "tests" / "catalogue").glob("*.py")
                 for line in _lines(path.read_text()) if len(line) >= 20}
    given = _given().union(*(_lines(path.read_text()) for path in (ROOT / "lora_grader").rglob("*.py")
                             if path.name != HIDDEN_MODULE.name))
    distinctive = catalogue - given
    assert len(distinctive) > 50
    return distinctive


def test_the_scan_finds_answers_where_they_are():
    for path in (ROOT / "solutions" / "lora").glob("*.ipynb"):
        assert _leaks(dict(_members(path.name, path.read_bytes())), _solution_lines()), path.name
    assert _hidden_leaks({"hidden.py": (ROOT / HIDDEN_MODULE).read_text()})
    catalogue = {path.name: path.read_text() for path in (ROOT / "tests" / "catalogue").glob("nb*.py")}
    assert all(_leaks({name: text}, _catalogue_lines()) for name, text in catalogue.items())


def test_student_install_has_no_hidden_cases_and_says_so(bundle, tmp_path):
    [wheel] = bundle.with_suffix("").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path)
    script = (
        "from lora_grader import check\n"
        "from lora_grader.checks import NOTEBOOKS, checks_of\n"
        "from lora_grader.verdicts.core import CheckFailed\n"
        "assert all(c.hidden_cases is None and c.all_cases == c.cases for k in NOTEBOOKS for c in checks_of(k))\n"
        "try:\n"
        "    check('01', 'silent_failure_case', {}, hidden=True)\n"
        "except CheckFailed as failure:\n"
        "    print(failure)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert "graded by your instructor" in done.stdout


def test_the_command_refuses_a_folder_that_is_not_the_repository(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--repo", str(tmp_path), "--out", str(tmp_path / "dist")])
    assert "is not the course repository" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_instructor_install_keeps_every_hidden_case():
    from lora_grader.checks import checks_of
    assert all(check.hidden_cases for key in NOTEBOOKS for check in checks_of(key))


# --- the shell commands the notebooks give work where the notebooks are used ------------------

# A command in a notebook's text: what a terminal runs, from a program the course installs.
PROGRAMS = r"(?:\.venv/bin/)?(?:pip3?|pytest|jupyter|python3?|nbgrader|conda|lora-grade|lora-bundle)"
COMMAND_START = re.compile(rf"(?<![\w./-]){PROGRAMS} ")


def _commands_in_strings(source: str) -> list[str]:
    """Commands in a code cell's string literals (what it prints for the student to run): each from
    its program to the end of its line or sentence, or to a parenthesis."""
    import ast
    python = "\n".join("" if re.match(r"\s*[!%]", line) else line for line in source.splitlines())
    found = []
    for node in ast.walk(ast.parse(python)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for start in COMMAND_START.finditer(node.value):
                line = node.value[start.start():].split("\n", 1)[0]
                found.append(re.split(r" ?[()]|\.(?:\s|$)", line)[0].rstrip(" .,;:"))
    return found


def notebook_commands(path: Path) -> list[tuple[str, str]]:
    """(where, command) for every shell command a notebook gives: markdown code spans and shell
    blocks that start with a program, `!` and `%pip` lines of code cells, and commands in the
    strings code cells print."""
    commands = []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        where = f"{path.name}, cell {index}"
        if cell.cell_type == "markdown":
            blocks = re.findall(r"```(?:sh|bash|shell|console)?\n(.*?)```", cell.source, re.S)
            text = re.sub(r"```.*?```", "", cell.source, flags=re.S)
            spans = re.findall(r"`([^`\n]+)`", text)
            lines = [line for block in blocks for line in block.splitlines()] + spans
            commands += [(where, line.strip()) for line in lines if re.fullmatch(rf"{PROGRAMS} .*", line.strip())]
        elif cell.cell_type == "code":
            for line in cell.source.splitlines():
                if re.match(r"\s*(!|%pip |%conda |%%bash|%%sh|%system )", line):
                    commands.append((where, re.sub(r"^\s*(!|%)", "", line).strip()))
            commands += [(where, command) for command in _commands_in_strings(cell.source)]
    return commands


def _pytest_selects(folder: Path, expression: str) -> bool:
    """Whether `-k expression` selects a test of the self-check, matched as pytest matches it:
    against the names of the test, its module and its folder."""
    from _pytest.mark import KeywordMatcher
    from _pytest.mark.expression import Expression

    from lora_grader.checks import checks_of
    compiled = Expression.compile(expression)
    for module in (folder / "autograder").glob("test_*.py"):
        key = re.search(r'NOTEBOOK = "(\d\d)"', module.read_text())[1]
        for check in checks_of(key):
            names = {"autograder", module.name, f"test_check[{check.name}]", "parametrize"}
            if compiled.evaluate(KeywordMatcher(names)):
                return True
    return False


def command_problem(command: str, folder: Path) -> str | None:
    """Why `command`, typed in `folder` (the repository or the bundle), would not do what it says;
    None when it would."""
    words = shlex.split(command)
    program = words[0].removeprefix(".venv/bin/")
    if program in ("python", "python3") and words[1:3] in (["-m", "pip"], ["-m", "pytest"]):
        program, words = words[2], words[2:]
    if program in ("pip", "pip3"):
        if words[1] != "install":
            return "only `pip install` is expected in the course"
        arguments = [w for w in words[2:] if w not in ("-q", "--quiet", "-U", "--upgrade", "-e", "--editable")]
        for argument in arguments:
            local = argument.split("[")[0]
            if local.startswith((".", "/")) or "/" in local:
                if not any((folder / local / name).exists() for name in ("pyproject.toml", "setup.py")):
                    return f"{argument!r}: no Python project in {local!r} here"
            elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[\w,-]+\])?([<>=!~]=?[\w.*]+)?", argument):
                return f"{argument!r} is not a package name"
        return None
    if program == "pytest":
        if not ((folder / "pytest.ini").exists() or "[tool.pytest.ini_options]" in
                ((folder / "pyproject.toml").read_text() if (folder / "pyproject.toml").exists() else "")):
            return "no pytest configuration here, so pytest would not find the self-check's options"
        rest = iter(words[1:])
        for word in rest:
            if word == "-k":
                expression = next(rest)
                if not _pytest_selects(folder, expression):
                    return f"-k {expression!r} selects no check"
            elif word == "--notebooks":
                if not (folder / next(rest)).is_dir():
                    return "--notebooks: no such folder here"
            elif word in ("-q", "-v", "-x", "-ra"):
                pass
            elif word.startswith("-"):
                return f"{word}: an option the course does not explain"
            elif not (folder / word).exists():
                return f"{word!r}: no such path here"
        return None
    if program == "jupyter":
        if words[1] not in ("lab", "notebook") or not all((folder / w).exists() for w in words[2:]):
            return "only `jupyter lab PATH` with a path that exists here is expected"
        return None
    return f"{program}: not a command a student of the course runs"


def _bundle_and_repository(bundle: Path) -> list[Path]:
    return [bundle.with_suffix(""), ROOT]


def test_every_command_in_the_notebooks_works_in_the_bundle_and_the_repository(bundle):
    commands = [found for path in sorted((ROOT / "course" / "lora").glob("*.ipynb"))
                for found in notebook_commands(path)]
    assert len(commands) >= 2, commands  # the self-check in 01, PEFT in 05: the scan finds them
    problems = [f"{where}: `{command}` in {folder.name}: {problem}"
                for where, command in commands for folder in _bundle_and_repository(bundle)
                if (problem := command_problem(command, folder))]
    assert not problems, "\n".join(problems)


def test_the_command_scan_finds_commands_and_their_faults(bundle):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell('Run `pytest autograder -k 07` or `pip install -e ".[peft]"`; '
                                      "`python` alone is a word.\n```sh\njupyter lab course/lora\n```\n"
                                      "```python\npip = 1\n```"),
        nbformat.v4.new_code_cell('!pytest autograder -k 01\n'
                                  'print("to run it: pip install peft (or pip install -e \\".[peft]\\" there).")'),
    ])
    path = bundle.parent / "scan.ipynb"
    nbformat.write(notebook, path)
    found = [command for _, command in notebook_commands(path)]
    assert found == ["jupyter lab course/lora", "pytest autograder -k 07", 'pip install -e ".[peft]"',
                     "pytest autograder -k 01", "pip install peft", 'pip install -e ".[peft]" there'], found
    folder = bundle.with_suffix("")
    assert command_problem("pytest autograder -k 07", folder) == "-k '07' selects no check"
    assert "no Python project" in command_problem('pip install -e ".[peft]"', folder)
    assert "not a package name" in command_problem("pip install peft, then restart", folder)
    assert command_problem('pip install -e ".[peft]"', ROOT) is None
    assert command_problem("pytest autograder -k '02 and lora_linear_values'", folder) is None
    assert "no such path" in command_problem("pytest tests", folder)
    assert "not a command" in command_problem("nbgrader autograde lora", folder)


# --- the clean room: the zip, a fresh venv, the student README and nothing else ---------------

def _readme_blocks(readme: str, section: str) -> list[tuple[str, list[str]]]:
    """Each ```sh block of a README section: (the paragraph that leads to it, its command lines)."""
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"```sh\n(.*?)```", body, flags=re.S)
    return [(parts[i - 1].strip().split("\n\n")[-1], parts[i].splitlines()) for i in range(1, len(parts), 2)]


def _readme_commands(readme: str, section: str, platform: str | None = None) -> list[str]:
    """The commands of a section's one block, or of the block whose paragraph names `platform`."""
    blocks = _readme_blocks(readme, section)
    if platform is not None:
        blocks = [block for block in blocks if platform in block[0]]
    [(_, commands)] = blocks
    return commands


# A shared library of NVIDIA's CUDA stack, or of torch's CUDA build, by its file name.
CUDA_LIBRARY = re.compile(r"^lib(cuda|cudart|cudnn|cublas|cufft|curand|cusolver|cusparse|cupti|nccl|nvrtc|"
                          r"nvJitLink|nvToolsExt|cufile|torch_cuda|c10_cuda)\w*\.so")


def _venv_report(venv: Path) -> tuple[int, list[str]]:
    """The venv's size in bytes, and every file in it that belongs to CUDA."""
    size, cuda = 0, []
    for path in venv.rglob("*"):
        if path.is_file() and not path.is_symlink():
            size += path.stat().st_size
            relative = path.relative_to(venv)
            if "nvidia" in relative.parts or CUDA_LIBRARY.match(path.name):
                cuda.append(str(relative))
    return size, cuda


def test_readme_gives_each_platform_its_smallest_install(bundle):
    readme = (bundle.with_suffix("") / "README.md").read_text()
    [wheel] = bundle.with_suffix("").glob("*.whl")
    linux = _readme_commands(readme, "Set up", "Linux")
    mac = _readme_commands(readme, "Set up", "macOS")
    assert linux[0] == mac[0] == "python3 -m venv .venv"  # Debian and Ubuntu have no `python`
    assert linux[1] == ".venv/bin/pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu"
    assert linux[2] == mac[1] == f".venv/bin/pip install --quiet {wheel.name}"
    assert "WSL" in _readme_blocks(readme, "Set up")[0][0]
    assert "scikit-learn" in readme and "prints nothing" in readme


@pytest.mark.slow
def test_bundle_works_alone_in_a_fresh_venv(bundle, tmp_path, capsys):
    room = tmp_path / "room"
    zipfile.ZipFile(bundle).extractall(room)
    folder = room / "lora-course"
    readme = (folder / "README.md").read_text()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.prefix) / "bin")
    # Where the CPU index cannot be reached (this project's machines reach only PyPI), pip gives up
    # on it at once and takes the CPU build of torch from the wheels configured on the machine.
    env.update(PIP_RETRIES="0", PIP_TIMEOUT="10", PIP_DEFAULT_TIMEOUT="10")

    def run(command: str, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
                              check=check)

    start = time.perf_counter()
    for command in _readme_commands(readme, "Set up", "Linux"):  # literally, as a student types them
        run(command)
    install_time = time.perf_counter() - start
    where = run(".venv/bin/python -c " + shlex.quote(
        "import importlib.util, lora_grader, torch; print(lora_grader.__file__); print(torch.version.cuda); "
        "assert importlib.util.find_spec('lora_grader.checks.hidden') is None"))
    module, cuda_version = where.stdout.split()
    assert Path(module).is_relative_to(folder / ".venv")
    assert cuda_version == "None", f"torch was built with CUDA {cuda_version}"
    packages = [package["name"] for package in json.loads(run(".venv/bin/pip list --format=json").stdout)]
    assert not [name for name in packages if re.match(r"(nvidia|cuda|triton)", name, re.I)], packages
    assert "scikit-learn" in packages
    size, cuda = _venv_report(folder / ".venv")
    assert not cuda, cuda[:20]
    assert size < 2e9, f"the venv holds {size / 1e9:.1f} GB"
    with capsys.disabled():
        print(f"\nthe README's install (Linux): {install_time:.0f} s, a venv of {size / 1e6:,.0f} MB")

    [self_check] = _readme_commands(readme, "Check your work")

    untouched = run(self_check, check=False)
    assert untouched.returncode == 1, untouched.stdout[-3000:] + untouched.stderr[-3000:]
    assert "LoRA course: points" in untouched.stdout
    assert re.search(r"total\D+0 */", untouched.stdout, re.I), untouched.stdout[-2000:]
    assert str(ROOT) not in untouched.stdout

    for key, notebook in NOTEBOOKS.items():
        nbformat.write(nbformat.from_dict(complete_submission(key)), folder / "course" / "lora" / notebook.filename)
    solved = run(self_check, check=False)
    assert solved.returncode == 0, solved.stdout[-3000:]
    assert "failed" not in solved.stdout.splitlines()[-1]

    # The test cells in a kernel of the bundle's venv: every one passes on the complete notebook.
    path = folder / "course" / "lora" / NOTEBOOKS["01"].filename
    tests = [cell for cell in nbformat.read(path, as_version=4).cells
             if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade")]
    executed = run(".venv/bin/python -c " + shlex.quote(RUN_NOTEBOOK) + f" {shlex.quote(str(path))}")
    assert executed.stdout.count("✓") == len(tests) == 4, executed.stdout + executed.stderr[-3000:]


RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
print("".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])))
"""
