"""Hostile and malformed submissions. None may earn a point it should not, crash the run, change
the student's files, or cost more than the notebook (or the check) it is in.

The cases are data (tests/hostile/). All are graded in one sandbox run with short timeouts, each notebook in its own folder next
to a complete copy of the other notebook; two complete notebooks graded after all of them must
keep full marks. Cases that break the file apply to every notebook of the course; the rest are
written against notebooks 01 and 02.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from catalogue import ROOT, complete_submission, unexpected_verdicts
from hostile import CONFINED_FILES, FIFO, LISTENERS, SPARSE_65_MB, TIMEOUTS, checks_named, edited, flops, truncated
from hostile.cases import CASES
from machine import processes_of_run
from lora_grader.checks import NOTEBOOKS
from lora_grader.confinement import seccomp_supported
from lora_grader.grading import MODES, Sandbox

pytestmark = pytest.mark.slow  # every hostile notebook is graded in a sandbox, in both modes

BATCH_TIME_LIMIT = 900  # seconds, per mode: spawn mode starts a fresh Python and torch for each notebook
OTHER = {"01": "02", "02": "01"}
# The limits the batch runs under: low enough to cross quickly, far above what a notebook needs.
BATCH_LIMITS = {"memory": 2 * 2**30, "disk": 100 * 2**20, "files": 2000, "forks": 16}
BYSTANDERS = ("01", "02")  # graded after every hostile case, in the same sandbox


@dataclasses.dataclass(frozen=True)
class Batch:
    results: dict
    files_before: dict
    files_after: dict
    sandbox_folder: Path
    integrity: dict
    run_id: str


def _files(folder: Path) -> dict[str, tuple]:
    """Every path beneath `folder` (and the folder itself): its content's digest, mode, times and
    extended attributes."""
    def state(path: Path) -> tuple:
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and path.stat().st_size < 2**24 \
            else path.is_dir() and "folder" or f"{info.st_size} bytes"
        xattrs = sorted(os.listxattr(path, follow_symlinks=False)) if hasattr(os, "listxattr") else []
        return digest, info.st_mode, info.st_mtime_ns, tuple(xattrs)
    return {str(path.relative_to(folder)): state(path) for path in [folder, *sorted(folder.rglob("*"))]
            if not path.is_socket()}


@pytest.fixture(scope="module", params=MODES)
def batch(request, tmp_path_factory) -> Batch:
    root = tmp_path_factory.mktemp("hostile")
    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind(str(root / "grader.sock"))
        unix.listen()
        LISTENERS.update(port=tcp.getsockname()[1], unix=str(root / "grader.sock"))
        return _grade_batch(root, request.param)


def _grade_batch(root: Path, mode: str) -> Batch:
    jobs = {}
    for case in CASES:
        folder = root / case.name
        folder.mkdir()
        if case.notebook in OTHER:
            other = OTHER[case.notebook]
            (folder / NOTEBOOKS[other].filename).write_text(json.dumps(complete_submission(other), indent=1))
        path = folder / NOTEBOOKS[case.notebook].filename
        if (data := case.build(root)) == FIFO:
            os.mkfifo(path)
        elif data == SPARSE_65_MB:
            with open(path, "wb") as file:
                file.truncate(65 * 2**20)
        elif data is not None:
            path.write_bytes(data)
        jobs[case.name] = (case.notebook, path)
    for key in BYSTANDERS:
        path = root / f"clean-{key}" / NOTEBOOKS[key].filename
        path.parent.mkdir()
        path.write_text(json.dumps(complete_submission(key), indent=1))
        jobs[f"clean-{key}"] = (key, path)
    before = _files(root)
    sandbox = Sandbox(mode)
    results = sandbox.grade_jobs(jobs, TIMEOUTS, limits=BATCH_LIMITS)
    return Batch(results, before, _files(root), sandbox.outdir, sandbox.integrity, sandbox.run_id)


def _case_ids(cases):
    return [pytest.param(case, id=case.name) for case in cases]


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_every_check_gets_a_result(case, batch):
    graded = [result.check.name for result in batch.results[case.name]]
    assert graded == list(checks_named(case.notebook)), f"{case.name}: results came back for {graded}"


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_hostile_submission_fails_exactly_the_checks_it_breaks(case, batch):
    problems = unexpected_verdicts(batch.results[case.name], case.fails)
    assert not problems, f"{case.name}:\n" + "\n".join(problems)


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_feedback_is_short_and_has_no_traceback(case, batch):
    for result in batch.results[case.name]:
        assert "Traceback" not in result.message and len(result.message) < 1200, (
            f"{case.name}, {result.check.name}: feedback a student cannot read:\n{result.message}")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_no_file_around_the_notebook_changes(case, batch):
    def of_case(files):
        return {name: state for name, state in files.items() if name.split(os.sep)[0] in (case.name, ".")}
    assert of_case(batch.files_after) == of_case(batch.files_before), (
        f"{case.name}: grading changed, added or removed files in the student's folder")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("key", BYSTANDERS)
def test_notebooks_graded_after_the_hostile_ones_keep_full_marks(key, batch):
    failed = [f"{r.check.name}: {r.message}" for r in batch.results[f"clean-{key}"] if not r.passed]
    assert not failed, f"a complete notebook {key} lost points next to hostile ones:\n" + "\n".join(failed)


@pytest.mark.timeout(BATCH_TIME_LIMIT)
def test_the_sandbox_leaves_nothing_behind(batch):
    assert not batch.sandbox_folder.exists(), (
        f"{batch.sandbox_folder} (results, and whatever student code wrote) outlived the grading")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids([case for case in CASES if case.refused or case.flagged]))
def test_the_integrity_report_names_what_the_code_reached_for(case, batch):
    integrity = batch.integrity[case.name]
    refused, flags = "\n".join(integrity.attempts), "\n".join(integrity.flags)
    missing = [f"refused: {words}" for words in case.refused if words.lower() not in refused.lower()]
    missing += [f"flag: {words}" for words in case.flagged if words.lower() not in flags.lower()]
    assert not missing, f"{case.name}: the integrity report lacks {missing}:\n{integrity.lines()}"


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("key", BYSTANDERS)
def test_a_complete_notebook_has_nothing_to_report(key, batch):
    assert not batch.integrity[f"clean-{key}"].lines()


_RAW_CONTROL = re.compile("[\\x00-\\x08\\x0b-\\x1f\\x7f]")


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.parametrize("case", _case_ids(CASES))
def test_feedback_never_sends_control_characters_to_the_terminal(case, batch):
    for result in batch.results[case.name]:
        assert not _RAW_CONTROL.search(result.message), f"{case.name}, {result.check.name}: {result.message!r}"


FORGERS = [case for case in CASES if "forge" in case.name]  # the untouched release, plus a forgery


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES)
def test_forgers_get_nothing_from_lora_grade_either(mode, tmp_path):
    """The same forgers, each a student of a class graded by `lora-grade autograde`: all score 0."""
    for case in FORGERS:
        folder = tmp_path / "submitted" / case.name / "lora"
        folder.mkdir(parents=True)
        (folder / NOTEBOOKS[case.notebook].filename).write_bytes(case.build(tmp_path))
    done = subprocess.run([sys.executable, "-m", "lora_grader.classgrade", "autograde", "--no-progress"],
                          cwd=tmp_path, env=dict(os.environ, LORA_GRADER_SANDBOX=mode), capture_output=True, text=True)
    assert done.returncode == 0, f"lora-grade exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    with open(tmp_path / "lora_grading" / "grades.csv", encoding="utf-8", newline="") as file:
        totals = {row["student"]: row["total"] for row in csv.DictReader(file)}
    assert len(FORGERS) >= 3 and totals == {case.name: "0" for case in FORGERS}, totals


@pytest.mark.timeout(BATCH_TIME_LIMIT)
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc to list processes")
def test_no_process_outlives_the_run(batch):
    assert not processes_of_run(batch.run_id), "processes started by graded notebooks outlived the run"


# --- the real command line ------------------------------------------------------------------

def _autograder(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "autograder", "--notebooks", str(folder), "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def _assert_a_readable_failing_run(run: subprocess.CompletedProcess) -> str:
    output = run.stdout + run.stderr
    lines = run.stdout.rstrip().splitlines()
    assert run.returncode == 1, f"pytest should report failed tests (exit code 1), not {run.returncode}:\n{output}"
    assert lines and lines[-1].startswith("=") and " failed" in lines[-1] and " in " in lines[-1], (
        f"the run did not end with pytest's summary line:\n{output}")
    assert "LoRA course: points" in output and "total (autograded)" in output, f"no points table:\n{output}"
    assert "Traceback" not in output and "_ _ _ _" not in output, f"tracebacks instead of feedback:\n{output}"
    return output


@pytest.mark.timeout(300)
def test_command_line_on_a_truncated_notebook_and_an_exit_in_a_graded_function(tmp_path):
    (tmp_path / NOTEBOOKS["01"].filename).write_bytes(truncated("01")(tmp_path))
    (tmp_path / NOTEBOOKS["02"].filename).write_bytes(
        edited("02", flops("    import os\n    os._exit(0)\n"))(tmp_path))
    output = _assert_a_readable_failing_run(_autograder(tmp_path))
    assert "is not valid JSON" in output and "was the file truncated" in output, output
    assert "`lora_flops` raised SystemExit" in output and "os._exit(0)" in output, output
    table = output.split("LoRA course: points")[1]
    assert any(line.split()[:3] == ["02", "LoRALinear", "10/10"] for line in table.splitlines()), (
        f"LoRALinear should keep its points when lora_flops exits:\n{table}")


@pytest.mark.timeout(300)
def test_command_line_on_a_killed_notebook_next_to_a_complete_one(tmp_path):
    (tmp_path / NOTEBOOKS["01"].filename).write_text(json.dumps(complete_submission("01"), indent=1))
    (tmp_path / NOTEBOOKS["02"].filename).write_bytes(
        edited("02", scratch=["import os\nos.kill(os.getpid(), 9)"])(tmp_path))
    output = _assert_a_readable_failing_run(_autograder(tmp_path))
    assert "killed by signal 9 while running code cell 2" in output, output
    table = output.split("LoRA course: points")[1]
    for task, points in (("silent_failure_case", "2/2"), ("lora_update", "4/4")):
        assert any(line.split()[:3] == ["01", task, points] for line in table.splitlines()), (
            f"notebook 01 is complete and should keep {points} for {task}:\n{table}")


@pytest.mark.timeout(300)
def test_where_the_kernel_confines_nothing_the_run_still_grades_and_says_so(tmp_path):
    for key in ("01", "02"):
        (tmp_path / NOTEBOOKS[key].filename).write_text(json.dumps(complete_submission(key), indent=1))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "autograder", "--notebooks", str(tmp_path), "-k", "01 or 02",
         "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "LORA_GRADER_CONFINEMENT": "off"},
    )
    assert run.returncode == 0, f"complete notebooks should pass without confinement too:\n{run.stdout[-3000:]}"
    assert "sandbox: the kernel confines nothing here" in run.stdout, run.stdout[-2000:]


@pytest.mark.skipif(not (CONFINED_FILES and seccomp_supported()), reason="this kernel lacks Landlock or seccomp")
def test_the_run_says_what_the_kernel_confines(tmp_path):
    (tmp_path / NOTEBOOKS["01"].filename).write_text(json.dumps(complete_submission("01"), indent=1))
    output = _autograder(tmp_path).stdout
    assert "sandbox: confines files" in output and "by seccomp" in output, output[-2000:]


# Data a sandbox could send back for any probe, if something forged it: every verdict must turn
# it into feedback without allocating in proportion to a number in it.
JUDGE_JUNK = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
import torch
from lora_grader.checks import NOTEBOOKS, checks_of
from lora_grader.verdicts.core import CheckFailed, judge


huge = 60_000
junk = [None, {}, [], huge, "x" * 10_000, {"kind": "int", "value": huge * huge},
        {"spec": {"in_features": huge, "out_features": huge, "rank": huge, "x_shape": [huge, huge]},
         "lora_A": torch.zeros(2, 2), "output": torch.zeros(2, 2), "error": ""},
        {key: huge for key in ("in_features", "out_features", "rank", "num_tokens", "shape", "size", "count")},
        {key: [huge, huge] for key in ("shape", "x_shape", "weight_shape", "A_shape", "B_shape")}]
for key in NOTEBOOKS:
    for check in checks_of(key):
        for data in junk:
            try:
                judge(check, check.cases, [{"status": "ok", "data": data}] * len(check.cases))
            except CheckFailed as failure:
                if "MemoryError" in str(failure):
                    print(f"{check.name} ran out of memory on {str(data)[:80]}")
print("judged")
"""


@pytest.mark.timeout(300)
def test_no_verdict_allocates_in_proportion_to_a_forged_number():
    run = subprocess.run([sys.executable, "-c", JUDGE_JUNK], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout.strip().endswith("judged"), run.stdout[-3000:] + run.stderr[-3000:]
    assert "ran out of memory" not in run.stdout, run.stdout
