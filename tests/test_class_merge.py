"""`lora-grade merge` takes each shard's students only from the shard they belong to: shard folders
whose results.json are written here by hand, so no grading runs (the merge of really graded
shards is in tests/test_class_grader.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lora_grader.checks import NOTEBOOKS
from lora_grader.classgrade.cli import main
from lora_grader.classgrade.grade import _missing, in_shard
from lora_grader.classgrade.outputs import GRADES, RESULTS, merge, write_outputs

GRADER = "the same grader"
CLASS = [f"student {i}" for i in range(12)] + ["Zoë O'Brien", "j.doe 2"]
FORGER = "alice\n  bob\x1b[2J"  # a folder name that would start a line and clear the terminal


def _student() -> dict:
    return {"notebooks": {key: _missing(key) for key in NOTEBOOKS}, "needs_a_look": []}


def _shards(root: Path, n: int = 2, moved: dict[str, int] = {}, copied: dict[str, int] = {}) -> list[Path]:
    """Shards 1..n of CLASS as `lora-grade autograde --shard K/n` writes them; but a name in `moved`
    is in the shard given there instead of its own, and one in `copied` in that shard as well."""
    folders = []
    for k in range(1, n + 1):
        names = [name for name in CLASS if in_shard(name, (k, n)) and name not in moved]
        names += [name for name, shard in {**moved, **copied}.items() if shard == k]
        folders.append(root / f"shard-{k}-of-{n}")
        write_outputs(folders[-1], GRADER, {name: _student() for name in names}, f"{k}/{n}")
    return folders


def _wrong_shard(name: str, n: int = 2) -> int:
    return next(k for k in range(1, n + 1) if not in_shard(name, (k, n)))


def test_merged_shards_are_a_single_run(tmp_path):
    assert merge(_shards(tmp_path), tmp_path / "merged") == len(CLASS)
    write_outputs(tmp_path / "single", GRADER, {name: _student() for name in CLASS})
    for name in (RESULTS, GRADES):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name


def test_a_student_in_the_wrong_shard_is_refused(tmp_path):
    """A shard folder edited by hand, or with a student copied in from another run."""
    intruder = CLASS[0]
    folders = _shards(tmp_path, moved={intruder: _wrong_shard(intruder)})
    wrong = folders[_wrong_shard(intruder) - 1]
    with pytest.raises(ValueError, match=re.escape(f"{wrong} holds student {intruder}, who does not belong to "
                                                   f"its shard {_wrong_shard(intruder)}/2")):
        merge(folders, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_student_in_two_shards_is_refused(tmp_path):
    twice = CLASS[0]
    folders = _shards(tmp_path, copied={twice: _wrong_shard(twice)})
    with pytest.raises(ValueError, match=re.escape(f"student {twice} is in more than one shard: "
                                                   f"{folders[0]}, {folders[1]};")):
        merge(folders, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_shards_of_another_count_are_refused(tmp_path):
    """Shards 1/2 and 2/2 whose students were dealt out in three: most are in the wrong one."""
    folders = _shards(tmp_path, n=3)[:2]
    for k, folder in enumerate(folders, 1):
        record = json.loads((folder / RESULTS).read_text())
        (folder / RESULTS).write_text(json.dumps({**record, "shard": f"{k}/2"}))
    with pytest.raises(ValueError, match="who does not belong to its shard"):
        merge(folders, tmp_path / "merged")


def test_the_command_names_the_folder_and_the_escaped_student_and_fails(tmp_path, capsys):
    folders = _shards(tmp_path, moved={FORGER: _wrong_shard(FORGER)})
    code = main(["merge", *map(str, folders), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 2, err
    wrong = folders[_wrong_shard(FORGER) - 1]
    assert err.startswith(f"lora-grade merge: {wrong} holds student alice\\n  bob\\x1b[2J, who does not belong"), err
    assert "\x1b" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "merged").exists()
