"""tritonclient's callback streaming for the sync client: start_stream / async_stream_infer / stop_stream.

One ModelStreamInfer call is fed from a queue (gRPC's own thread pulls from
it) and read on a daemon thread that hands each answer to the user's
``callback(result, error)``, where exactly one of the two is None.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import grpc

from ._calls import Headers, metadata, stream_item
from ._errors import InferenceServerError, rpc_errors
from ._infer import InferResult
from .pb import grpc_service_pb2 as pb
from .pb import grpc_service_pb2_grpc as pb_grpc

__all__ = ["CallbackStream", "StreamCallback"]

log = logging.getLogger("tensorgate.client")

#: callback(result, error): one of the two is None.
StreamCallback = Callable[[InferResult | None, InferenceServerError | None], None]


class CallbackStream:
    """An open ModelStreamInfer call whose answers go to a callback on a reader thread.

    Args:
        stub: the client's stub.
        callback: called once per response, and once with the error that ends the stream.
        headers: request headers for the whole stream.
        stream_timeout: seconds until gRPC ends the stream (None: no limit).
    """

    def __init__(
        self,
        stub: pb_grpc.GRPCInferenceServiceStub,
        callback: StreamCallback,
        headers: Headers = None,
        stream_timeout: float | None = None,
    ) -> None:
        self._callback = callback
        self._outbox: queue.SimpleQueue[pb.ModelInferRequest | None] = queue.SimpleQueue()
        self._cancelled = False
        self._call = stub.ModelStreamInfer(
            iter(self._outbox.get, None), timeout=stream_timeout, metadata=metadata(headers)
        )
        self._reader = threading.Thread(target=self._read, name="tensorgate-stream-reader", daemon=True)
        self._reader.start()

    def send(self, request: pb.ModelInferRequest) -> None:
        """Queue one request on the stream (returns at once)."""
        self._outbox.put(request)

    def close(self, cancel_requests: bool = False) -> None:
        """End the stream: wait for pending answers, or cancel them.

        Args:
            cancel_requests: cancel the call instead of waiting for outstanding responses.
        """
        if cancel_requests:
            self._cancelled = True
            self._call.cancel()
        self._outbox.put(None)
        self._reader.join()

    def _deliver(self, result: InferResult | None, error: InferenceServerError | None) -> None:
        try:
            self._callback(result, error)
        except Exception:  # a failing callback must not stop the other answers
            log.exception("stream callback raised")

    def _read(self) -> None:
        try:
            with rpc_errors():
                for response in self._call:
                    item = stream_item(response)
                    if isinstance(item, InferenceServerError):
                        self._deliver(None, item)
                    else:
                        self._deliver(item, None)
        except InferenceServerError as exc:
            if not (self._cancelled and exc.status is grpc.StatusCode.CANCELLED):
                self._deliver(None, exc)
