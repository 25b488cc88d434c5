"""Judging what the sandbox sent for one notebook, in the grader's process: its checks'
results, the integrity report, and text from student code made safe to print.

A pure function of the record: nothing here starts a process or runs student code, so a
recorded record is judged as a fresh one (tests/recorded.py).
"""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from lora_grader import channel
from lora_grader.checks import checks_of, probe_groups

if TYPE_CHECKING:
    from lora_grader.checks.core import Check


@dataclasses.dataclass(frozen=True)
class CheckResult:
    notebook: str
    check: Check
    message: str  # empty when passed
    cause: str = ""  # the failure's cause key (CheckFailed.cause), empty when passed

    @property
    def passed(self) -> bool:
        return not self.message

    @property
    def points(self) -> int:
        return self.check.points if self.passed else 0


@dataclasses.dataclass
class Integrity:
    """What a person should look at in one notebook; none of it changes the points by itself,
    except `tampered` (a forged result), which scores the notebook 0."""
    flags: list[str] = dataclasses.field(default_factory=list)  # code that reaches for the grader
    attempts: list[str] = dataclasses.field(default_factory=list)  # what the sandbox refused
    undone: list[str] = dataclasses.field(default_factory=list)  # patches put back before checking
    tampered: str = ""

    def lines(self) -> list[str]:
        lines = [f"tampered: {self.tampered}"] * bool(self.tampered)
        lines += [f"refused: {what}" for what in self.attempts]
        lines += [f"patched (put back before checking): {what}" for what in self.undone]
        return lines + [f"flag: {flag}" for flag in self.flags]


def judge_record(key: str, record, integrity_of: Integrity, check_timeout: float) -> list[CheckResult]:
    """Judge what the sandbox sent for one notebook (None: nothing came back), in this process.
    A pure function of the record: a recorded one is judged as a fresh one (tests/recorded.py)."""
    from lora_grader.verdicts.core import CheckFailed, judge

    header, frames = record if record is not None else ({}, [])
    sent = _Sent(frames)
    integrity_of.attempts = sent.attempts
    integrity_of.undone = sent.undone
    if header.get("tampered") or sent.tampered:
        integrity_of.tampered = printable(str(header.get("tampered") or sent.tampered))[:300]
    notes = _cell_error_notes(sent.cell_errors)
    ended = _how_notebook_ended(header, sent.progress) if record is not None else (
        "the notebook was still running when the grader's time ran out")
    by_check = {}
    for index, group in enumerate(probe_groups(key)):
        lost = header.get("lost", {}).get(str(index)) if isinstance(header.get("lost"), dict) else None
        if isinstance(lost, list) and len(lost) == 2:
            lost = {"how": lost[0], "code": lost[1]}
        outcomes = sent.outcomes.get(index) or _probe_failure(
            sent.probe_ended.get(index) or lost, ended, check_timeout)
        for check in group:
            try:
                if integrity_of.tampered:
                    raise CheckFailed(f"this notebook is marked as tampered ({integrity_of.tampered}): "
                                      "it scores 0 until a person has looked at it", cause="tampered")
                judge(check, check.all_cases, outcomes, notes)
                message, cause = "", ""
            except CheckFailed as failure:
                message, cause = str(failure), failure.cause or "wrong"
            except Exception as error:  # a verdict that could not read what came back
                message = (f"the grader could not judge what `{check.task}` produced "
                           f"({type(error).__name__}): was it changed on its way back?")
                cause = "unreadable"
            by_check[check.name] = CheckResult(key, check, printable(message), cause)
    return [by_check[check.name] for check in checks_of(key)]


def failed_all(key: str, message: str, cause: str) -> list[CheckResult]:
    """Every check of the notebook failed for one reason that is not in a record."""
    return [CheckResult(key, check, printable(message), cause) for check in checks_of(key)]


class _Sent:
    """What a notebook's processes sent, decoded without trusting any of it."""

    def __init__(self, frames) -> None:
        self.progress = None
        self.tampered = ""
        self.cell_errors, self.attempts, self.undone = [], [], []
        self.outcomes, self.probe_ended = {}, {}
        for kind, payload in frames:
            if kind == channel.PROGRESS:
                self.progress = channel.unpack_int(payload)
                continue
            data = channel.load(payload)
            if not isinstance(data, dict):
                continue
            if kind == channel.CELLS:
                self.cell_errors = _strings_of(data.get("errors"), dict)
                self.attempts += _strings_of(data.get("attempts"), str)
                self.undone += [u for u in _strings_of(data.get("undone"), str) if u not in self.undone]
            elif kind == channel.OUTCOMES and isinstance(data.get("group"), int):
                outcomes = data.get("outcomes")
                if data["group"] in self.outcomes:
                    self.tampered = "two results for one probe: only one process of the grader sends it"
                self.outcomes.setdefault(data["group"], outcomes if isinstance(outcomes, list) else [])
                self.attempts += [a for a in _strings_of(data.get("attempts"), str) if a not in self.attempts]
                self.undone += [u for u in _strings_of(data.get("undone"), str) if u not in self.undone]
            elif kind == channel.PROBE_ENDED and isinstance(data.get("group"), int):
                self.probe_ended.setdefault(data["group"], data)
        self.attempts = [printable(a)[:200] for a in self.attempts[:20]]
        self.undone = [printable(u)[:200] for u in self.undone[:20]]


def _strings_of(value, kind) -> list:
    return [item for item in value if isinstance(item, kind)][:50] if isinstance(value, list) else []


def _probe_failure(ended: dict | None, notebook_ended: str, timeout: float) -> list[dict]:
    """The outcome of a probe that sent no result, from how its process ended."""
    if not isinstance(ended, dict):
        return [{"status": "crashed", "message": notebook_ended}]
    how, code = ended.get("how"), ended.get("code")
    if how == "timeout":
        return [{"status": "timeout", "message": f"still running after {timeout:g} s: is there an endless loop?"}]
    if how == "signal":
        message = f"the process running it was killed by signal {code} (out of memory? a crash?)"
    else:
        message = f"the process running it ended (exit code {code}) before returning a result"
    return [{"status": "crashed", "message": message}]


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text from student code, safe for a terminal: control characters and escape codes escaped."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def printable_name(text: str) -> str:
    """A name a student chose (a folder, a file), on one line: newlines and tabs escaped too, so
    that it cannot start a line of its own in a summary."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def _how_notebook_ended(header: dict, cell) -> str:
    """Why a check may have no result, from how the notebook's process ended and where it was."""
    how, code = header.get("how"), header.get("code")
    where = f" while running code cell {cell}" if isinstance(cell, int) else ""
    if header.get("limit"):
        return f"the notebook was stopped{where}: {header['limit']}"
    if how == "timeout":
        return (f"the notebook did not finish in time{where}, even when interrupted: is there an "
                "endless loop that catches the interrupt (`except BaseException:` or a bare `except:`)?")
    if how == "signal":
        return f"the notebook's process was killed by signal {code}{where}: a crash, or out of memory?"
    if how == "exited" and where:
        return (f"the notebook's process ended{where} (exit code {code}) before its checks ran: "
                "os._exit() ends it, as it would stop a Jupyter kernel")
    if how == "exited":
        return f"no result came back from the sandbox (the notebook's process ended with exit code {code})"
    return "the notebook was still running when the grader's time ran out"


def _cell_error_notes(errors: list[dict]) -> str:
    return "".join(
        f"\n  Note: code cell {error.get('cell')} of the notebook raised {error.get('type')}: {error.get('message')}"
        for error in errors[:3]
    )
