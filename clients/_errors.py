"""The client's errors, and the one seam where gRPC errors become them.

Exception tree::

    Exception
    ├── InferenceServerError   a call failed on the wire or on the server; ``.status`` is the gRPC code
    └── ValueError
        └── CodecError         a tensor's bytes, shape or datatype do not fit (raised before sending,
                               or while reading a result); defined in ``clients.codec``

Both clients (sync and grpc.aio) translate at exactly one place, ``rpc_errors()``:
``grpc.aio.AioRpcError`` is a ``grpc.RpcError`` too, so one ``except`` serves both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

__all__ = ["STREAM_ERROR_STATUS", "InferenceServerError", "rpc_errors"]

#: Status given to a per-request error inside a stream: the wire carries only its message.
STREAM_ERROR_STATUS = grpc.StatusCode.UNKNOWN


class InferenceServerError(Exception):
    """A gRPC call failed; carries the status code and the server's message.

    Args:
        status: the gRPC status code (``STREAM_ERROR_STATUS`` for a per-request stream error,
            whose code the wire does not carry).
        message: the server's message (gRPC's ``details()``).
        debug_details: gRPC's debug string (peer, core error), empty when there is none.
        request_id: the id of the request that failed, where known (streams correlate by it).
    """

    def __init__(
        self,
        status: grpc.StatusCode,
        message: str,
        debug_details: str = "",
        request_id: str = "",
    ) -> None:
        super().__init__(status, message, debug_details, request_id)
        self.status = status
        self.message = message
        self.debug_details = debug_details
        self.request_id = request_id

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}"

    def __repr__(self) -> str:
        return f"InferenceServerError({self.status}, {self.message!r}, request_id={self.request_id!r})"


def _from_rpc_error(exc: grpc.RpcError) -> InferenceServerError:
    """Read code, details and debug string from a sync or aio RpcError."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    # a streaming call the client cancelled never gets a debug string: asking would block forever
    locally_cancelled = isinstance(exc, grpc.Future) and exc.cancelled()
    debug = None if locally_cancelled else getattr(exc, "debug_error_string", None)
    debug_text = debug() if callable(debug) else None
    status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return InferenceServerError(status, details or str(exc), debug_text or "")


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Turn any ``grpc.RpcError`` raised inside into ``InferenceServerError`` (``from`` the original).

    A plain context manager works around ``await`` too, so the aio client uses it as is.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise _from_rpc_error(exc) from exc
