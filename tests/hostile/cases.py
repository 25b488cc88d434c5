"""Every hostile case: what the notebook does, and what must happen."""
from __future__ import annotations

from catalogue import ALL, ROOT
from catalogue.nb02 import lora_linear
from lora_grader.checks import NOTEBOOKS
from hostile import (
    CONFINED_FILES, CONFINED_OTHER_PROCESSES, CONFINED_SIGNALS, Case, FIFO, FLOPS, LAYER, SPARSE_65_MB, TIMEOUTS, UPDATE, with_bom,
    malformed_metadata, checks_named, as_nbformat_3, as_utf16, without_ids_and_outputs, edited, flops, raw,
    truncated, update,
)
from hostile.payloads import (
    CHANGES_MODES_AND_TIMES, DETACHES_PROCESSES, ESCAPE_CODES, FILE_ATTACKS, FORGED_RESULT_FILES,
    FORGES_WITH_THE_ANSWERS, FORGES_WITH_THE_TOKEN, FORK_BOMB, HUGE_FILE, IGNORES_INTERRUPTS, KILLS, LIAR,
    NETWORK, PATCHES_THE_FLOP_COUNTER, PATCH_COMPARISONS, REACHES_FOR_THE_GRADER, READS_OTHER_WORK,
    RETURNS_A_HUGE_TENSOR, RIGHT_FLOPS, USES_MEMORY_IN_MANY_PROCESSES, WRITES_MANY_FILES,
    WRITES_MANY_MEGABYTES, WRITES_TO_EVERY_DESCRIPTOR, SABOTAGES_OTHER_PROCESSES,
    RAW_SYSTEM_CALLS_THROUGH_A_LIBRARY, READS_THE_SANDBOX,
)


def _unreadable_cases(key: str) -> list[Case]:
    """Every notebook, whatever its checks: a file that cannot be graded fails each check clearly."""
    return [
        Case(f"{key}-empty-file", key, raw(b""), {ALL: "is empty"}),
        Case(f"{key}-truncated-json", key, truncated(key), {ALL: "was the file truncated"}),
        Case(f"{key}-json-but-not-a-notebook", key, raw(b'{"name": "my notes", "cells": "none"}'),
             {ALL: "is json but not a jupyter notebook"}),
        Case(f"{key}-missing", key, raw(None), {ALL: "was not found"}),
    ]


CASES = [
    case
    for key in NOTEBOOKS
    if (ROOT / "course" / "lora" / NOTEBOOKS[key].filename).exists()
    for case in _unreadable_cases(key)
] + [
    # --- the file ---------------------------------------------------------------------------
    Case("01-json-list", "01", raw(b"[1, 2, 3]"), {ALL: "not a jupyter notebook"}),
    Case("01-utf16", "01", edited("01", transform=as_utf16), {ALL: "not utf-8"}),
    Case("02-json-nested-too-deep", "02", raw(b"[" * 100_000 + b"]" * 100_000), {ALL: "nested too deeply"}),
    Case("02-utf8-bom", "02", edited("02", transform=with_bom), {}),
    # Jupyter opens nbformat 3 and the code is all there, so it is graded like any notebook.
    Case("02-nbformat-3", "02", edited("02", transform=as_nbformat_3), {}),
    Case("01-nbformat-3", "01", edited("01", transform=as_nbformat_3), {}),
    Case("01-cells-without-ids-or-outputs", "01", edited("01", transform=without_ids_and_outputs), {}),
    Case("02-malformed-metadata", "02", edited("02", transform=malformed_metadata), {}),
    # --- names and syntax -------------------------------------------------------------------
    Case("02-task-renamed", "02", edited("02", {"lora_flops_answer": (
        "def flops_of_lora(num_tokens, in_features, out_features, rank, materialize=False):" + RIGHT_FLOPS)}),
         {name: "`lora_flops` is not defined" for name in FLOPS}),
    Case("02-syntax-error", "02", edited("02", lora_linear(forward="self.base_layer(x) +")),
         {name: "raised SyntaxError" for name in LAYER}),
    # --- exits --------------------------------------------------------------------------------
    # At top level, sys.exit() and exit() behave as in Jupyter (and under nbgrader): the cell
    # stops, the notebook goes on. os._exit() ends the process, as it kills a Jupyter kernel.
    Case("01-sys-exit-top-level", "01", edited("01", scratch=["import sys\nsys.exit('stop here')"]), {}),
    Case("02-exit-top-level", "02", edited("02", scratch=["exit()"]), {}),
    Case("01-os-exit-top-level", "01", edited("01", scratch=["import os\nos._exit(0)"]),
         {ALL: "ended while running code cell 2 (exit code 0) before its checks ran: os._exit()"}),
    Case("02-sys-exit-in-function", "02", edited("02", flops("    import sys\n    sys.exit(0)\n")),
         {name: "raised SystemExit" for name in FLOPS}),
    Case("01-exit-in-function", "01", edited("01", update("    exit()\n")),
         {name: "end the whole program" for name in UPDATE}),
    Case("02-os-exit-in-function", "02", edited("02", flops("    import os\n    os._exit(0)\n")),
         {name: "`os._exit(0)`" for name in FLOPS}),
    # --- dead processes -----------------------------------------------------------------------
    Case("02-kill-self-in-function", "02",
         edited("02", flops("    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n")),
         {name: "killed by signal 9" for name in FLOPS}),
    Case("01-segfault-in-function", "01", edited("01", {
        "silent_failure_case_answer": "def silent_failure_case():\n    import faulthandler\n    faulthandler._sigsegv()\n"}),
         {"silent_failure_case": "killed by signal 11"}),
    Case("01-ctypes-in-function", "01", edited("01", {
        "silent_failure_case_answer": "def silent_failure_case():\n    import ctypes\n    ctypes.string_at(0)\n"}),
         {"silent_failure_case": "does not allow ctypes"}, refused=("ctypes",), flagged=("ctypes",)),
    Case("01-kill-self-top-level", "01", edited("01", scratch=["import os\nos.kill(os.getpid(), 9)"]),
         {ALL: "killed by signal 9 while running code cell 2"}),
    # --- hangs --------------------------------------------------------------------------------
    Case("02-while-true-top-level", "02", edited("02", scratch=["while True:\n    pass"]), {}),
    Case("02-loop-ignoring-interrupts-in-method", "02", edited("02", {"lora_flops_answer": IGNORES_INTERRUPTS}),
         {name: f"still running after {TIMEOUTS.check:g} s: is there an endless loop?" for name in FLOPS}),
    # A given cell of notebook 02 calls forward at top level. Run All would hang there in Jupyter
    # too, and nbgrader could not grade the notebook: every check fails, naming that cell.
    Case("02-loop-ignoring-interrupts-in-forward", "02", edited("02", lora_linear(
        forward="self.spin()",
        freeze="self.base_layer.requires_grad_(False)\n\n"
               "    def spin(self):\n        import time\n        while True:\n            try:\n"
               "                time.sleep(0.01)\n            except BaseException:\n                pass",
    )),
         {ALL: "did not finish in time while running code cell"}),
    # --- patches that would make comparisons lie ------------------------------------------------
    Case("01-patched-comparisons-wrong-update", "01",
         edited("01", update("    return (x @ lora_A) @ lora_B\n"), scratch=[PATCH_COMPARISONS]),
         {"lora_update_values": "was scaling never applied",
          "lora_update_never_forms_AB": "only counts for a correct result"}),
    Case("02-patched-comparisons-wrong-scaling", "02", edited(
        "02", lora_linear(scaling="alpha"), scratch=[PATCH_COMPARISONS]),
         {"lora_linear_values": "alpha instead of alpha / rank", "lora_linear_scaling": "should be alpha / rank",
          "lora_linear_flops": "only counts for a correct output"}),
    # --- return values that lie ------------------------------------------------------------------
    Case("01-lying-tensor-subclass", "01", edited("01", {"lora_update_answer": LIAR + (
        "\ndef lora_update(x, lora_A, lora_B, scaling):\n    return (x @ (lora_A @ lora_B)).as_subclass(Liar)\n")}),
         {"lora_update_shape": "tensor subclass", "lora_update_values": "tensor subclass",
          "lora_update_never_forms_AB": "tensor subclass"}),
    Case("02-always-equal-object", "02", edited("02", flops(
        "    class AlwaysEqual:\n        def __eq__(self, other):\n            return True\n"
        "        __hash__ = object.__hash__\n    return AlwaysEqual()\n")),
         {name: "should return an int" for name in FLOPS}),
    Case("02-always-equal-int", "02", edited("02", flops(
        "    class AlwaysEqual(int):\n        def __eq__(self, other):\n            return True\n"
        "        def __ne__(self, other):\n            return False\n        __hash__ = int.__hash__\n"
        "    return AlwaysEqual(0)\n")),
         {name: "returned 0 but flopcountermode counts" for name in FLOPS}),
    Case("02-flops-as-float", "02", edited("02", flops(RIGHT_FLOPS.replace("return 2 *", "return 2.0 *"))),
         {name: "returned a float" for name in FLOPS}),
    Case("02-flops-as-bool", "02", edited("02", flops("    return True\n")), {name: "returned a bool" for name in FLOPS}),
    Case("02-flops-as-str", "02", edited("02", flops("    return str(2 * num_tokens * rank * (in_features + out_features))\n")),
         {name: "returned a str" for name in FLOPS}),
    # --- output and files ---------------------------------------------------------------------
    Case("01-megabytes-of-output", "01", edited(
        "01", update("    print('debugging', x.shape, lora_A, lora_B)\n    return (x @ lora_A) @ lora_B * scaling\n"),
        scratch=["for _ in range(20_000):\n    print('x' * 1_000)"]), {}),
    Case("02-prints-until-the-cell-timeout", "02", edited("02", at_end=["while True:\n    print('spam' * 1_000)"]), {}),
    Case("01-writes-a-huge-file", "01", edited("01", at_end=[HUGE_FILE]), {}),
    # --- IPython and input() -------------------------------------------------------------------
    Case("01-ipython-syntax-and-input", "01", edited(
        "01", {"lora_update_answer": "%%time\ndef lora_update(x, lora_A, lora_B, scaling):\n"
                                     "    return (x @ lora_A) @ lora_B * scaling\n"},
        scratch=["%matplotlib inline\n!pip list\nfiles = !ls\ntorch.randn?", "%%bash\nrm -rf ~/course\n",
                 "name = input('your name: ')"]), {}),
    Case("02-input-in-function", "02", edited("02", flops("    return int(input('FLOPs? '))\n")),
         {name: "input() gets no answer" for name in FLOPS}),
    # --- global state left behind by a scratch cell ---------------------------------------------
    # The checks build float32 layers with gradients on. The sandbox runs every cell before any
    # check, so a scratch cell at the end would change how work written above it is checked, while
    # nbgrader checks each answer right after its cell: a correct answer keeps full marks.
    Case("02-default-dtype-float64-at-the-end", "02",
         edited("02", at_end=["torch.set_default_dtype(torch.float64)"]), {}),
    Case("02-grad-disabled-at-the-end", "02", edited("02", at_end=["torch.set_grad_enabled(False)"]), {}),
    Case("01-float64-and-global-seed-at-the-end", "01",
         edited("01", at_end=["torch.set_default_dtype(torch.float64)\ntorch.manual_seed(1234)"]), {}),
    # No work, so no FLOPs: the FLOP check must not reward it.
    Case("01-update-computes-nothing", "01", edited("01", update(
        "    return torch.zeros(*x.shape[:-1], lora_B.shape[-1])\n")),
         {"lora_update_values": "values differ", "lora_update_never_forms_AB": "only counts for a correct result"}),
    # --- forged results, tampering and the answer key ----------------------------------------------
    Case("01-release-with-forged-result-files", "01", edited("01", release=True, at_end=[
        f"NAMES = {list(checks_named('01'))!r}" + FORGED_RESULT_FILES]), {ALL: "not implemented yet"}),
    Case("02-release-with-forged-result-files", "02", edited("02", release=True, at_end=[
        f"NAMES = {list(checks_named('02'))!r}" + FORGED_RESULT_FILES]), {ALL: "not implemented yet"}),
    Case("02-writes-frames-to-every-descriptor", "02", edited("02", at_end=[WRITES_TO_EVERY_DESCRIPTOR]),
         {ALL: "marked as tampered"}, flagged=("raw file descriptor",)),
    Case("01-release-forges-with-the-token", "01", edited("01", release=True, at_end=[FORGES_WITH_THE_TOKEN]),
         {ALL: "marked as tampered"}, flagged=("f_back", "f_locals", "traceback's frame")),
    Case("02-imports-the-answer-key", "02", edited("02", {
        "lora_flops_answer": "from lora_grader.answers.nb02 import lora_flops"}),
         {name: "cannot be imported" for name in FLOPS}, flagged=("grader's own package",)),
    Case("02-imports-the-grader-by-a-computed-name", "02", edited("02", {"lora_flops_answer": (
        "import importlib\nkey = importlib.import_module('lora_' + 'grader.answers.nb02')\n"
        "lora_flops = key.lora_flops")}),
         {name: "cannot be imported" for name in FLOPS}, flagged=("importlib",)),
    Case("02-reaches-for-the-grader", "02", edited("02", at_end=[REACHES_FOR_THE_GRADER]), {},
         refused=("gc.get_objects", "gc.get_referrers", "sys._getframe", "/proc", "ctypes", "sys.settrace", "shell"),
         flagged=("gc", "ctypes", "sys.modules", "/proc")),
    Case("01-patches-the-flop-counter-to-hide-AB", "01", edited(
        "01", update("    return x @ (lora_A @ lora_B) * scaling\n"), scratch=[PATCHES_THE_FLOP_COUNTER]),
         {"lora_update_never_forms_AB": "A @ B"}, flagged=("assigns to an attribute",)),
    # --- bounds on the whole notebook -------------------------------------------------------------
    Case("02-detaches-processes", "02", edited("02", at_end=[DETACHES_PROCESSES]), {}, flagged=("setsid",)),
    Case("02-fork-bomb", "02", edited("02", at_end=[FORK_BOMB]), {}, refused=("more than 16 processes",)),
    Case("02-memory-in-many-processes", "02", edited("02", at_end=[USES_MEMORY_IN_MANY_PROCESSES]),
         {ALL: "GB of memory together"}),
    Case("02-writes-many-megabytes", "02", edited("02", at_end=[WRITES_MANY_MEGABYTES]), {ALL: "MB of files"}),
    Case("02-writes-many-files", "02", edited("02", at_end=[WRITES_MANY_FILES]), {ALL: "2,000 files"}),
    Case("02-network", "02", edited("02", at_end=[NETWORK]), {}, refused=("network socket",), flagged=("socket",)),
    Case("02-changes-modes-and-times", "02", edited("02", at_end=[CHANGES_MODES_AND_TIMES]), {},
         refused=("mode", "times")),
    Case("01-escape-codes-in-an-error", "01", edited("01", update(ESCAPE_CODES)),
         {name: "\\x1b[2j" for name in UPDATE}),
    Case("01-returns-a-huge-tensor", "01", edited("01", update(RETURNS_A_HUGE_TENSOR)),
         {name: "too large to check" for name in UPDATE}),
    Case("02-named-pipe-instead-of-a-notebook", "02", raw(FIFO), {ALL: "not a regular file"}),
    Case("01-notebook-of-65-mb", "01", raw(SPARSE_65_MB), {ALL: "larger than 64 MB"}),
] + ([
    Case("02-reads-other-work", "02", edited("02", at_end=[READS_OTHER_WORK]), {}),
    Case("02-release-forges-with-the-answers", "02", edited("02", release=True, at_end=[FORGES_WITH_THE_ANSWERS]),
         {**{name: "not implemented yet" for name in LAYER}, **{name: "permission" for name in FLOPS}},
         flagged=("f_back",)),
] if CONFINED_FILES else []) + ([
    Case("02-attacks-the-files-around-it", "02", edited("02", at_end=[FILE_ATTACKS]), {}),
    Case("02-reads-the-sandbox-and-the-notebooks-beside-it", "02", edited("02", at_end=[READS_THE_SANDBOX]), {},
         flagged=("a path that leaves its folder",)),
] if CONFINED_FILES else []) + ([
    # Without seccomp these would reach other processes of the machine: only where it holds.
    Case("02-sabotages-the-sandbox-and-the-notebooks-beside-it", "02",
         edited("02", at_end=[SABOTAGES_OTHER_PROCESSES]), {},
         flagged=("prlimit", "setpriority", "sched_setaffinity", "sched_setscheduler", "pidfd_open")),
    Case("02-raw-system-calls-through-a-library", "02", edited("02", at_end=[RAW_SYSTEM_CALLS_THROUGH_A_LIBRARY]),
         {}, refused=("ctypes",), flagged=("ctypes",)),
] if CONFINED_OTHER_PROCESSES and CONFINED_SIGNALS else []) + ([
    Case("02-kills-the-sandbox-and-the-grader", "02", edited("02", at_end=[KILLS]),
         {ALL: "killed by signal 9 while running code cell"}),
] if CONFINED_SIGNALS else [])
