"""lora-grade takes only regular files in a student's own folder as their notebooks."""
import os

from lora_grader.classgrade.grade import content_hash, find_students, refusal

NOTEBOOK = "01_elementwise_attempt.ipynb"


def _class(tmp_path):
    submitted = tmp_path / "submitted"
    (submitted / "alice" / "lora").mkdir(parents=True)
    (submitted / "alice" / "lora" / NOTEBOOK).write_text("{}")
    (submitted / "mallory" / "lora").mkdir(parents=True)
    return submitted


def _student(submitted, name):
    return next(student for student in find_students(submitted) if student.name == name)


def test_a_regular_notebook_is_taken(tmp_path):
    submitted = _class(tmp_path)
    alice = _student(submitted, "alice")
    assert refusal(alice, alice.folder / NOTEBOOK) == ""
    assert content_hash(alice.folder / NOTEBOOK) is not None


def test_a_notebook_that_links_to_another_students_work_is_refused(tmp_path):
    submitted = _class(tmp_path)
    os.symlink(submitted / "alice" / "lora" / NOTEBOOK, submitted / "mallory" / "lora" / NOTEBOOK)
    mallory = _student(submitted, "mallory")
    assert "symbolic link" in refusal(mallory, mallory.folder / NOTEBOOK)


def test_a_student_folder_that_links_to_another_is_refused(tmp_path):
    submitted = _class(tmp_path)
    os.symlink(submitted / "alice", submitted / "eve")
    eve = _student(submitted, "eve")
    assert "folder is a symbolic link" in refusal(eve, eve.folder / NOTEBOOK)


def test_a_fifo_named_like_a_notebook_is_refused_without_reading_it(tmp_path):
    submitted = _class(tmp_path)
    os.mkfifo(submitted / "mallory" / "lora" / NOTEBOOK)
    mallory = _student(submitted, "mallory")
    assert "not a regular file" in refusal(mallory, mallory.folder / NOTEBOOK)
    assert content_hash(mallory.folder / NOTEBOOK) is None


def test_a_notebook_not_handed_in_is_not_a_refusal(tmp_path):
    mallory = _student(_class(tmp_path), "mallory")
    assert refusal(mallory, mallory.folder / NOTEBOOK) == ""
