"""The thread-pool flavour of the servicer (grpc.server): same DataPlane, same status mapping.

Each call runs on one of gRPC's pool threads and blocks on a lock that the
scheduler's worker releases when the batch is done (``_ReleaseSink``). The
aio servicer (servicer.py) is the other flavour; which one serves best is a
measured choice (bench/throughput.py), picked with ``--grpc-flavor``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .admission import SHUTTING_DOWN
from .dataplane import DataPlane
from .errors import CancelledError, UnavailableError
from .request import InferRequest
from .servicer import status_for, stream_error_response
from .telemetry.logs import failure_trace_id
from .wire import encode_response

__all__ = ["SyncInferenceServicer"]

_DONE = object()
_DRAIN = object()


class _ReleaseSink:
    """Releases each finished request's lock: the blocked handler thread wakes and answers."""

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        for r in requests:
            r.waiter.release()


_SINK = _ReleaseSink()


class _QueueSink:
    """For a stream: finished requests go to the stream's response queue."""

    def __init__(self, outbox: queue.SimpleQueue[Any]) -> None:
        self._outbox = outbox

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        for r in requests:
            self._outbox.put(r)


def _abort(context: grpc.ServicerContext, exc: BaseException, request_id: str = "") -> None:
    code, message = status_for(exc, request_id, failure_trace_id(exc, context))
    context.abort(code, message)


class SyncInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on the thread-pool grpc.server."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._tracer = plane.telemetry.tracer

    def _call(self, context: grpc.ServicerContext, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            _abort(context, exc)

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live)

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready)

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return self._plane.server_metadata()

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return self._call(context, self._plane.model_metadata, request.name, request.version)  # type: ignore[no-any-return]

    def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return self._call(context, self._plane.model_config, request.name, request.version)  # type: ignore[no-any-return]

    def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        return self._call(context, self._plane.model_statistics, request.name, request.version)  # type: ignore[no-any-return]

    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return self._call(context, self._plane.repository_index, request.ready)  # type: ignore[no-any-return]

    def _submit(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext, sink: Any, waiter: Any = None
    ) -> InferRequest:
        prepared = self._plane.prepare(request, context.time_remaining())
        if self._tracer.active:  # the one check a request pays when tracing is off
            self._tracer.begin(prepared, context.invocation_metadata())
        prepared.waiter = waiter  # before submit: a worker may finish it at once
        prepared.sink = sink
        self._plane.submit(prepared)
        return prepared

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            with self._plane.admission.admitted():  # UNAVAILABLE once draining; a drain waits for it
                return self._infer(request, context)
        except Exception as exc:
            _abort(context, exc, request.id)
            raise  # unreachable: abort raises

    def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        waiter = threading.Lock()
        waiter.acquire()
        prepared = self._submit(request, context, _SINK, waiter)
        while not waiter.acquire(timeout=0.5):
            if not context.is_active():  # the client went away
                if self._plane.cancel(prepared):
                    raise CancelledError(f"request for model '{request.model_name}' was cancelled")
                waiter.acquire()  # already running: its batch will deliver it
                break
        if prepared.trace is not None:
            self._tracer.end(prepared)
        if prepared.error is not None:
            raise prepared.error
        return encode_response(prepared, self._plane.shm)

    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: Any
    ) -> Iterator[pb.ModelStreamInferResponse]:
        admission = self._plane.admission
        try:
            admission.enter()  # a drain waits for the open stream, which ends itself
        except UnavailableError as exc:
            _abort(context, exc)
        try:
            yield from self._stream(request_iterator, context)
        finally:
            admission.leave()

    def _stream(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: Any
    ) -> Iterator[pb.ModelStreamInferResponse]:
        metadata = dict(context.invocation_metadata() or ())
        fail_stream = str(metadata.get("triton_grpc_error", "")).lower() == "true"
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        sink = _QueueSink(outbox)
        unsubscribe = self._plane.admission.on_close(lambda: outbox.put(_DRAIN))
        draining = False
        submitted = [0]
        done_reading = threading.Event()

        def read() -> None:
            try:
                for request in request_iterator:
                    if draining:  # sent after the drain began: the stream ends with UNAVAILABLE instead
                        break
                    submitted[0] += 1
                    try:
                        self._submit(request, context, sink)
                    except Exception as exc:
                        outbox.put((request, exc))
            finally:
                done_reading.set()
                outbox.put(_DONE)

        threading.Thread(target=read, name="tg-stream-reader", daemon=True).start()
        answered = 0
        reading = True
        try:
            while reading or answered < submitted[0]:
                item = outbox.get()
                if item is _DONE:
                    reading = False
                    continue
                if item is _DRAIN:  # answer what was admitted, then end the stream (UNAVAILABLE)
                    draining, reading = True, False
                    continue
                answered += 1
                if isinstance(item, tuple):
                    request, error = item
                else:
                    request, error = item, item.error
                    if item.trace is not None:
                        self._tracer.end(item)
                if error is not None:
                    if fail_stream:
                        _abort(context, error, getattr(request, "id", ""))
                    yield stream_error_response(request, error, failure_trace_id(error, context))
                else:
                    yield pb.ModelStreamInferResponse(infer_response=encode_response(request, self._plane.shm))
        finally:
            unsubscribe()
        if draining:
            _abort(context, UnavailableError(SHUTTING_DOWN))

    def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        return self._call(context, self._plane.repository_model_load, request)  # type: ignore[no-any-return]

    def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        return self._call(context, self._plane.repository_model_unload, request)  # type: ignore[no-any-return]

    def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        return self._call(context, self._plane.shm_status, request.name)  # type: ignore[no-any-return]

    def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        return self._call(context, self._plane.shm_register, request)  # type: ignore[no-any-return]

    def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        return self._call(context, self._plane.shm_unregister, request.name)  # type: ignore[no-any-return]

    def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        return self._call(context, self._plane.cuda_shm_status, request.name)  # type: ignore[no-any-return]

    def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        return self._call(context, self._plane.cuda_shm_register, request)  # type: ignore[no-any-return]

    def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return self._call(context, self._plane.cuda_shm_unregister, request.name)  # type: ignore[no-any-return]

    def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        return self._call(context, self._plane.telemetry.trace_setting, request)  # type: ignore[no-any-return]

    def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        return self._call(context, self._plane.telemetry.log_settings, request)  # type: ignore[no-any-return]

