"""The integrity report flags code that hides other code or walks frames, and not honest code."""
import pytest

from lora_grader.integrity import scan


def _flags(source: str) -> list[str]:
    return [flag.what for flag in scan([(1, source)])]


@pytest.mark.parametrize("source, words", [
    ("exec(bytes.fromhex('7072696e74283129').decode())", "runs code built at run time"),
    ("code = 'x = ' + '1'\neval(code)", "runs code built at run time (eval of code)"),
    ("compile(payload, '<x>', 'exec')", "runs code built at run time (compile of payload)"),
    ("payload = bytes.fromhex('00')", "bytes.fromhex"),
    ("import base64\nbase64.b64decode('eA==')", "imports base64"),
    ("import codecs\ncodecs.decode('k', 'rot13')", "imports codecs"),
    ("import marshal", "imports marshal"),
    ("def g():\n    yield\nframe = g().gi_frame", "gi_frame"),
    ("async def c():\n    pass\nframe = c().cr_frame", "cr_frame"),
    ("frame = error.__traceback__.tb_frame.f_back", "f_back"),
    ("scope = frame.f_globals", "f_globals"),
])
def test_hidden_code_and_frame_walks_are_flagged(source, words):
    assert any(words in what for what in _flags(source)), _flags(source)


def test_exec_of_code_written_in_the_cell_is_not_flagged():
    assert _flags("exec('y = 2')") == []


def test_an_honest_answer_raises_no_flag():
    honest = ("import torch\nfrom torch import nn\n\n"
              "def lora_update(x, A, B, scaling):\n    return scaling * ((x @ A) @ B)\n")
    assert _flags(honest) == []
