"""How results travel: from a notebook's processes to the sandbox, and from the sandbox to the grader.

No file carries a result. Each notebook gets a pipe from the sandbox's own process, and a secret
token; every message on it is a frame (magic, token, kind, length, payload) and the sandbox keeps
frames only from that pipe, with that token, within size bounds. Payloads are plain data saved by
`torch.save` and read with `torch.load(weights_only=True)`, which builds no object but tensors,
numbers, strings, lists and dicts. Whatever arrives is untrusted until it has been checked here.
"""
from __future__ import annotations

import io
import json
import os
import struct

MAGIC = b"LGR2"
TOKEN_BYTES = 16
_FRAME = struct.Struct("!4s16sBI")  # magic, token, kind, payload length

PROGRESS, CELLS, OUTCOMES, PROBE_ENDED, PROBE_STARTED = 1, 2, 3, 4, 5  # the kinds of frame a notebook sends
KINDS = {PROGRESS, CELLS, OUTCOMES, PROBE_ENDED, PROBE_STARTED}

MAX_FRAME_BYTES = 32 * 2**20
MAX_NOTEBOOK_BYTES = 64 * 2**20  # all frames of one notebook together
MAX_DEPTH = 12
MAX_ITEMS = 200_000
MAX_TENSOR_ELEMENTS = 16_000_000
MAX_STRING = 20_000


class TooLarge(ValueError):
    """A probe's result too large to send: the student's code returned something enormous."""


class Forged(Exception):
    """A frame the notebook's own probe cannot have sent."""


def encode(token: bytes, kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(MAGIC, token, kind, len(payload)) + payload


def send(fd: int, token: bytes, kind: int, data, save) -> None:
    """Write one frame of plain `data` to `fd`, whole (`save` is torch.save, bound early)."""
    buffer = io.BytesIO()
    save(data, buffer)
    if buffer.tell() > MAX_FRAME_BYTES:
        raise TooLarge(f"what your code returned is too large to check ({buffer.tell() / 2**20:.0f} MB): "
                       "return the result the task asks for, not more")
    send_raw(fd, token, kind, buffer.getvalue())


def send_raw(fd: int, token: bytes, kind: int, payload: bytes) -> None:
    frame = memoryview(encode(token, kind, payload))
    while frame:
        frame = frame[os.write(fd, frame):]


_INT = struct.Struct("!q")


def pack_int(value: int) -> bytes:
    return _INT.pack(value)


def unpack_int(payload: bytes) -> int | None:
    return _INT.unpack(payload)[0] if len(payload) == _INT.size else None


class FrameReader:
    """Frames from one notebook's pipe, as they arrive, checked against its token and bounds."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.buffer = bytearray()
        self.received = 0
        self.frames: list[tuple[int, bytes]] = []

    def feed(self, data: bytes) -> None:
        """Raises Forged for a frame that is not the sandbox's, or more data than a notebook sends."""
        self.received += len(data)
        if self.received > MAX_NOTEBOOK_BYTES:
            raise Forged(f"more than {MAX_NOTEBOOK_BYTES // 2**20} MB of results")
        self.buffer += data
        while len(self.buffer) >= _FRAME.size:
            magic, token, kind, length = _FRAME.unpack_from(self.buffer)
            if magic != MAGIC or token != self.token or kind not in KINDS:
                raise Forged("a message on the results channel that no probe of the grader wrote")
            if length > MAX_FRAME_BYTES:
                raise Forged("a result larger than any check returns")
            if len(self.buffer) < _FRAME.size + length:
                return
            self.frames.append((kind, bytes(self.buffer[_FRAME.size:_FRAME.size + length])))
            del self.buffer[:_FRAME.size + length]


# --- sandbox -> grader: one record per notebook ----------------------------------------------
# A header line (JSON: the notebook's id, how its process ended, the frames' kinds and sizes),
# then the frames' payloads. Before it, as the notebook starts, a "started" record: a header with
# no frames, which says which notebooks were running should the sandbox die, and is no result.

def write_record(stream, header: dict, frames: list[tuple[int, bytes]]) -> None:
    header = {**header, "frames": [[kind, len(payload)] for kind, payload in frames]}
    stream.write(json.dumps(header).encode() + b"\n")
    for _, payload in frames:
        stream.write(payload)
    stream.flush()


def write_started(stream, job_id: str) -> None:
    write_record(stream, {"id": job_id, "started": True}, [])


def is_started(header: dict) -> bool:
    """Whether a record only says that its notebook started."""
    return header.get("started") is True


def read_record(stream) -> tuple[dict, list[tuple[int, bytes]]] | None:
    """The next record, or None at the end of the stream (or of what could be read of it)."""
    line = stream.readline(1 << 20)
    if not line.endswith(b"\n"):
        return None
    try:
        header = json.loads(line)
        sizes = [(int(kind), int(length)) for kind, length in header["frames"]]
    except (ValueError, KeyError, TypeError):
        return None
    if sum(length for _, length in sizes) > MAX_NOTEBOOK_BYTES:
        return None
    frames = []
    for kind, length in sizes:
        payload = stream.read(length)
        if len(payload) != length:
            return None
        frames.append((kind, payload))
    return header, frames


# --- reading a payload without trusting it --------------------------------------------------

def load(payload: bytes):
    """The plain data in a payload, or None if it is not plain data of a sane size."""
    import torch

    try:
        data = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception:
        return None
    budget = [MAX_ITEMS, MAX_TENSOR_ELEMENTS]
    return data if _plain(data, 0, budget, torch) else None


def _plain(value, depth: int, budget: list[int], torch) -> bool:
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        return False
    if value is None or type(value) in (bool, int, float):
        return True
    if type(value) is str:
        return len(value) <= MAX_STRING
    if type(value) is torch.Tensor:
        budget[1] -= value.numel()
        return budget[1] >= 0 and value.layout == torch.strided and not value.is_quantized
    if type(value) in (list, tuple):
        return all(_plain(item, depth + 1, budget, torch) for item in value)
    if type(value) is dict:
        return all(type(key) is str and _plain(item, depth + 1, budget, torch) for key, item in value.items())
    return False
