"""Framed reads and locked writes over one Unix socket, and the status codes both sides share."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    QueueFullError,
    RetiredError,
    ServerError,
    UnavailableError,
)
from .protocol import FRAME, MAX_FRAME, ProtocolError

__all__ = ["Channel", "FrameParser", "check_peer", "error_for", "status_of"]

# error class <-> status byte in a DONE frame (0 = success); subclasses before their bases
_CODES: tuple[tuple[int, type[ServerError]], ...] = (
    (2, RetiredError), (4, QueueFullError), (1, UnavailableError), (3, DeadlineExceededError),
    (6, CancelledError), (7, InvalidArgumentError), (5, InternalError),
)


def status_of(exc: BaseException) -> int:
    for code, cls in _CODES:
        if isinstance(exc, cls):
            return code
    return 5  # anything else: INTERNAL (the core's log keeps it)


def error_for(code: int, message: str, model: str) -> ServerError:
    for known, cls in _CODES:
        if known == code:
            return QueueFullError(message, model) if cls is QueueFullError else cls(message)
    return InternalError(message)


def check_peer(sock: socket.socket) -> None:
    """Trust only a peer of our own user (SO_PEERCRED); raises PermissionError otherwise."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise PermissionError(f"engine core peer runs as uid {uid}, not {os.getuid()}")


class FrameParser:
    """Frames out of a byte stream, fed as it arrives (a reader thread or the event loop's add_reader)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        buf = self._pending + data if self._pending else data
        out: list[tuple[int, memoryview]] = []
        view = memoryview(buf)
        pos, header, size = 0, FRAME.size, len(buf)
        while size - pos >= header:
            length, kind = FRAME.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes")
            if size - pos - header < length:
                break
            out.append((kind, view[pos + header:pos + header + length]))
            pos += header + length
        self._pending = buf[pos:] if pos < size else b""
        return out


class Channel:
    """One end of a socket carrying frames; ``send`` is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def send_object(self, kind: int, obj: Any) -> None:
        """Control messages only (load, unload, statistics): pickled, between our own processes."""
        body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.send(FRAME.pack(len(body), kind) + body)

    def frames(self) -> Iterator[tuple[int, memoryview]]:
        """(type, body) until the peer closes; raises ProtocolError on an impossible length."""
        parser = FrameParser()
        sock = self.sock
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            yield from parser.feed(data)

    def close(self) -> None:
        # shutdown first: close() alone neither wakes a thread blocked in recv on it nor tells the peer
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
