"""Many concurrent ``infer`` calls over one ModelStreamInfer stream (AsyncInferenceClient(multiplex=True)).

A unary call pays gRPC's per-RPC cost on both sides (a new HTTP/2 stream, headers, a handler task); requests on
one open stream do not, which is why streaming serves more than unary on a Python server. The multiplexer keeps
one stream open, gives each request a wire id of its own (the caller's id is put back on the result), and
resolves each caller's future from the response that carries its wire id.

What it cannot do on a shared stream, and how that shows: per-call headers (a stream has one set; calls with
headers go unary) and cancelling one request on the server (a timed-out call gets DEADLINE_EXCEEDED at once and
its late answer is dropped). When the stream fails, every waiting call fails with that status and the next call
opens a new stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ._errors import STREAM_ERROR_STATUS, InferenceServerError, _from_rpc_error
from ._infer import InferResult
from .pb import grpc_service_pb2 as pb

__all__ = ["StreamMultiplexer"]


class _Pending:
    __slots__ = ("future", "user_id")

    def __init__(self, future: asyncio.Future[pb.ModelInferResponse], user_id: str) -> None:
        self.future = future
        self.user_id = user_id


class StreamMultiplexer:
    """One ModelStreamInfer call shared by every ``infer`` of an asyncio client.

    Args:
        stub: the client's GRPCInferenceServiceStub on a grpc.aio channel.
    """

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._pending: dict[str, _Pending] = {}
        self._outbox: asyncio.Queue[pb.ModelInferRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._call: Any = None
        self._ids = itertools.count()

    def _open(self) -> asyncio.Queue[pb.ModelInferRequest | None]:
        if self._outbox is not None and self._reader is not None and not self._reader.done():
            return self._outbox
        outbox: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            while True:
                item = await outbox.get()
                if item is None:
                    return
                yield item

        call = self._stub.ModelStreamInfer(requests())
        self._call = call
        self._outbox = outbox
        self._reader = asyncio.ensure_future(self._read(call))
        return outbox

    async def _read(self, call: Any) -> None:
        failure: InferenceServerError | None = None
        try:
            async for response in call:
                self._resolve(response)
        except grpc.RpcError as exc:
            failure = _from_rpc_error(exc)
        except asyncio.CancelledError:
            failure = InferenceServerError(grpc.StatusCode.CANCELLED, "the client was closed")
            raise
        finally:
            self._outbox = None
            failure = failure or InferenceServerError(grpc.StatusCode.UNAVAILABLE, "the stream ended")
            for wire_id, pending in list(self._pending.items()):
                if not pending.future.done():
                    pending.future.set_exception(InferenceServerError(
                        failure.status, failure.message, failure.debug_details, pending.user_id))
                self._pending.pop(wire_id, None)

    def _resolve(self, response: pb.ModelStreamInferResponse) -> None:
        pending = self._pending.pop(response.infer_response.id, None)
        if pending is None or pending.future.done():  # its caller timed out: the late answer is dropped
            return
        if response.error_message:
            pending.future.set_exception(
                InferenceServerError(STREAM_ERROR_STATUS, response.error_message, request_id=pending.user_id))
        else:
            pending.future.set_result(response.infer_response)

    async def infer(self, request: pb.ModelInferRequest, timeout: float | None) -> InferResult:
        """Send ``request`` on the shared stream and wait for its answer.

        Raises:
            InferenceServerError: the server refused the request (its stream error), the call timed out
                (DEADLINE_EXCEEDED) or the stream failed (its status).
        """
        outbox = self._open()
        user_id = request.id
        wire_id = f"mx{next(self._ids)}"
        request.id = wire_id
        future: asyncio.Future[pb.ModelInferResponse] = asyncio.get_running_loop().create_future()
        self._pending[wire_id] = _Pending(future, user_id)
        outbox.put_nowait(request)
        try:
            response = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise InferenceServerError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded",
                                       request_id=user_id) from None
        finally:
            self._pending.pop(wire_id, None)
        response.id = user_id
        return InferResult(response)

    async def close(self) -> None:
        """End the stream after what was sent; waiting calls fail if it ends first."""
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
