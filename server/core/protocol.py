"""The data channel's compact binary messages between a front end and the engine core.

Every frame is ``<u32 body length><u8 type>`` then the body (struct-packed, no pickle).
Tensors are described by (name index, dtype code, rank, offset, nbytes, dims); offset
-1 means the bytes follow inline (a tensor that did not fit the arena). A reader
checks every count, index, offset and length against the frame and the arena before
it uses them: a malformed message raises ProtocolError (or ArenaError), never reads
outside the buffer.

Front end -> core: SUBMIT (one request), CANCEL (token), FREE (output blocks the front
end has copied out). Core -> front end: DONE (the finished requests of one batch).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .arena import Allocator, Arena, ArenaError, tensor_bytes, tensor_from

__all__ = [
    "CANCEL",
    "DONE",
    "FRAME",
    "FREE",
    "SUBMIT",
    "Done",
    "ProtocolError",
    "Reader",
    "Submit",
    "encode_cancel",
    "encode_done_request",
    "encode_free",
    "encode_submit",
    "frame",
    "read_done",
    "read_submit",
]

FRAME = struct.Struct("<IB")
SUBMIT, CANCEL, FREE, DONE = 1, 2, 3, 4
_SUBMIT = struct.Struct("<QIiQqqiHH")  # token, handle, priority, timeout_us, deadline_ns, arrival_ns, rows, #in, #out
_TENSOR = struct.Struct("<HBBqq")  # name index, dtype code, rank, offset (-1: inline), nbytes
_DONE_REQ = struct.Struct("<QBqqqqH")  # token, status, compute start/input end/output start/end ns, #outputs
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_Q = struct.Struct("<q")
MAX_RANK = 32
_I32_MAX, _I64_MAX, _U64_MAX = 2**31 - 1, 2**63 - 1, 2**64 - 1
MAX_FRAME = 1 << 31  # a frame longer than this is a broken peer, not a message


class ProtocolError(ValueError):
    """A frame that does not parse; the core refuses the request it carried."""


def frame(kind: int, body: bytes) -> bytes:
    return FRAME.pack(len(body), kind) + body


class Reader:
    """Bounds-checked reads over one frame's body."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolError(f"frame ends early: {n} bytes wanted at {self.pos} of {len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def tensor(self, arena: Arena) -> tuple[int, npt.NDArray[Any], int]:
        """(name index, array, arena offset or -1); arena tensors are views, inline ones view the frame."""
        index, code, rank, offset, nbytes = self.unpack(_TENSOR)
        if rank > MAX_RANK:
            raise ProtocolError(f"rank {rank} is above {MAX_RANK}")
        shape = struct.unpack(f"<{rank}q", self.take(8 * rank))
        if offset == -1:
            raw: Any = self.take(nbytes)
        else:
            arena.check(offset, nbytes)
            raw = arena.array(offset, nbytes, np.dtype(np.uint8), (nbytes,))
        return index, tensor_from(raw, code, tuple(shape)), offset


def _put_tensor(parts: list[bytes], index: int, array: npt.NDArray[Any], arena: Arena, allocator: Allocator) -> int:
    """Describe (and place) one tensor; returns its arena offset, -1 when it went inline."""
    code, data = tensor_bytes(array)
    nbytes = data.nbytes if isinstance(data, np.ndarray) else len(data)
    offset = allocator.alloc(nbytes) if 0 < nbytes <= arena.size else -1
    if offset >= 0:
        arena.write(offset, data)
    parts.append(_TENSOR.pack(index, code, array.ndim, offset, nbytes))
    parts.append(struct.pack(f"<{array.ndim}q", *array.shape))
    if offset < 0 and nbytes:
        parts.append(data.tobytes() if isinstance(data, np.ndarray) else data)
    return offset


class Submit(NamedTuple):
    token: int
    handle: int
    priority: int
    timeout_us: int
    deadline_ns: int
    arrival_ns: int
    batch_size: int
    inputs: list[tuple[int, npt.NDArray[Any]]]
    outputs: list[int]


def encode_submit(
    token: int, handle: int, request: Any, input_index: dict[str, int], output_index: dict[str, int],
    arena: Arena, allocator: Allocator, blocks: list[int],
) -> bytes:
    """One request as a SUBMIT frame; its arena blocks are appended to ``blocks`` (freed on DONE)."""
    # clamped to the fields' widths: a priority past the levels still means "default level", a deadline
    # centuries away (a call without one, on some flavours) still means "none that matters"
    parts = [b"", _SUBMIT.pack(token, handle, min(request.priority, _I32_MAX), min(request.timeout_us, _U64_MAX),
                               min(request.deadline_ns, _I64_MAX), request.arrival_ns, request.batch_size,
                               len(request.inputs), len(request.requested))]
    try:
        for name, array in request.inputs.items():
            offset = _put_tensor(parts, input_index[name], array, arena, allocator)
            if offset >= 0:
                blocks.append(offset)
    except BaseException:
        for offset in blocks:
            allocator.free(offset)
        blocks.clear()
        raise
    parts.extend(_U16.pack(output_index[out.name]) for out in request.requested)
    body = b"".join(parts)
    return FRAME.pack(len(body), SUBMIT) + body


def read_submit(body: memoryview, arena: Arena) -> Submit:
    r = Reader(body)
    token, handle, priority, timeout_us, deadline_ns, arrival_ns, rows, n_in, n_out = r.unpack(_SUBMIT)
    inputs = []
    for _ in range(n_in):
        index, array, _offset = r.tensor(arena)
        inputs.append((index, array))
    outputs = [r.unpack(_U16)[0] for _ in range(n_out)]
    if r.pos != len(body):
        raise ProtocolError("trailing bytes after a SUBMIT")
    return Submit(token, handle, priority, timeout_us, deadline_ns, arrival_ns, rows, inputs, outputs)


def encode_cancel(token: int) -> bytes:
    return frame(CANCEL, _U64.pack(token))


def encode_free(offsets: Sequence[int]) -> bytes:
    return frame(FREE, _U32.pack(len(offsets)) + struct.pack(f"<{len(offsets)}q", *offsets))


def read_token(body: memoryview) -> int:
    token: int = Reader(body).unpack(_U64)[0]
    return token


def read_free(body: memoryview) -> list[int]:
    r = Reader(body)
    (count,) = r.unpack(_U32)
    return list(struct.unpack(f"<{count}q", r.take(8 * count)))


# ---- DONE: one frame per batch per front end ------------------------------------------------

def done_header(instance: str, count: int) -> bytes:
    name = instance.encode("utf-8", "replace")[:65535]
    return _U16.pack(len(name)) + name + _U32.pack(count)


def encode_done_request(
    parts: list[bytes], token: int, status: int, times: tuple[int, int, int, int], message: str,
    outputs: Sequence[tuple[int, npt.NDArray[Any]]], arena: Arena, allocator: Allocator,
) -> None:
    parts.append(_DONE_REQ.pack(token, status, *times, len(outputs) if not status else 0))
    if status:
        text = message.encode("utf-8", "replace")
        parts.append(_U32.pack(len(text)) + text)
        return
    for index, array in outputs:
        _put_tensor(parts, index, array, arena, allocator)


class Done(NamedTuple):
    token: int
    status: int
    times: tuple[int, int, int, int]
    message: str
    outputs: list[tuple[int, npt.NDArray[Any]]]  # copies: the arena blocks are freed at once


def read_done(body: memoryview, arena: Arena, freed: list[int]) -> tuple[str, list[Done]]:
    """The instance name and finished requests; outputs are copied out, their blocks go to ``freed``."""
    r = Reader(body)
    (length,) = r.unpack(_U16)
    instance = bytes(r.take(length)).decode("utf-8", "replace")
    (count,) = r.unpack(_U32)
    done = []
    for _ in range(count):
        token, status, t0, t1, t2, t3, n_out = r.unpack(_DONE_REQ)
        message = ""
        outputs: list[tuple[int, npt.NDArray[Any]]] = []
        if status:
            (length,) = r.unpack(_U32)
            message = bytes(r.take(length)).decode("utf-8", "replace")
        for _ in range(n_out):
            index, array, offset = r.tensor(arena)
            if array.dtype != np.object_:
                array = array.copy()  # inline ones view the frame, arena ones the shared block
            if offset >= 0:
                freed.append(offset)
            outputs.append((index, array))
        done.append(Done(token, status, (t0, t1, t2, t3), message, outputs))
    return instance, done


def check_arena_error(exc: BaseException) -> bool:
    return isinstance(exc, (ArenaError, ProtocolError, struct.error))
