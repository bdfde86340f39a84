"""The grpc.aio servicer: wire calls -> DataPlane, ServerError -> gRPC status, in one place.

Inference requests wait on an asyncio future that the scheduler's worker
resolves through ``LoopSink``: one ``call_soon_threadsafe`` per batch, not
per request. Unexpected errors become INTERNAL with a generic message; the log
keeps the details and the request id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .admission import SHUTTING_DOWN
from .dataplane import DataPlane
from .errors import (
    AlreadyExistsError,
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    QueueFullError,
    ServerError,
    StepFailedError,
    UnavailableError,
    UnimplementedError,
)
from .request import InferRequest
from .telemetry.log_limits import LogSummary
from .telemetry.logs import failure_trace_id, request_fields
from .wire import encode_response

__all__ = [
    "InferenceServicer",
    "LoopSink",
    "flush_log_summaries",
    "status_for",
    "stream_error_response",
    "wait_for_result",
]

log = logging.getLogger("tensorgate.servicer")
Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: tuple[tuple[type[ServerError], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    (UnimplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (StepFailedError, grpc.StatusCode.INTERNAL),
)
_INTERNAL_MESSAGE = "internal error; the server log has the details"
_SUMMARY = LogSummary(log)  # unexpected errors and queue-full rejections, summarised per kind


def stream_error_response(request: Any, exc: BaseException, trace_id: str = "") -> pb.ModelStreamInferResponse:
    """A failed request on a stream: error_message set, the request's identity echoed, stream open."""
    _, message = status_for(exc, getattr(request, "id", ""), trace_id)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def status_for(exc: BaseException, request_id: str = "", trace_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The one mapping from an exception to (status code, client-safe message); logs the failure once."""
    trace_id = trace_id or getattr(exc, "trace_id", "")
    about = f"request {request_id!r}" + (f" (trace {trace_id})" if trace_id else "")
    if isinstance(exc, ServerError) and exc.public:
        for cls, code in _STATUS:
            if isinstance(exc, cls):
                fields = request_fields(request_id, trace_id, code.name)
                if isinstance(exc, QueueFullError):  # a flood by nature: the first line, then counts
                    model = exc.model
                    _SUMMARY.record(f"queue full {model}", logging.INFO, "%s: %s: %s", about, code.name, exc,
                                    summary=f"model '{model}' rejected requests: queue full", extra=fields)
                    return code, str(exc)
                if str(exc) == SHUTTING_DOWN:  # every call while draining: the first line, then counts
                    _SUMMARY.record("shutting down", logging.INFO, "%s: %s: %s", about, code.name, exc,
                                    summary="requests refused while draining", extra=fields)
                    return code, str(exc)
                bad_request = code is grpc.StatusCode.INVALID_ARGUMENT or code is grpc.StatusCode.NOT_FOUND
                log.log(logging.DEBUG if bad_request else logging.INFO, "%s: %s: %s", about, code.name, exc,
                        extra=fields)
                return code, str(exc)
    fields = request_fields(request_id, trace_id, "INTERNAL")
    if isinstance(exc, ServerError):
        log.error("%s failed: %s", about, exc, extra=fields)
    else:
        # a traceback for the first of each kind, then one count per interval, never one per request
        kind = _unexpected_kind(exc)
        _SUMMARY.record(kind, logging.ERROR, "%s failed unexpectedly", about, exc_info=exc, extra=fields,
                        summary=f"requests failed unexpectedly ({kind})")
    return grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE


def flush_log_summaries() -> None:
    """Log the counts still pending in the summaries (at stop)."""
    _SUMMARY.flush()


def _unexpected_kind(exc: BaseException) -> str:
    """The exception type and where it was raised: a bounded set, unlike messages."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}{where}"


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Handler = Callable[[Any, _Req, Context], Awaitable[_Resp]]


def _unary(method: Handler[_Req, _Resp]) -> Handler[_Req, _Resp]:
    """Map ServerError (and anything unexpected) to a status on a unary RPC."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: _Req, context: Context) -> _Resp:
        try:
            return await method(self, request, context)
        except (ServerError, Exception) as exc:
            code, message = status_for(exc, getattr(request, "id", ""), failure_trace_id(exc, context))
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return wrapper


class LoopSink:
    """Resolves the futures of finished requests on the event loop, one hop per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        self._loop.call_soon_threadsafe(self._resolve, requests)

    @staticmethod
    def _resolve(requests: Sequence[InferRequest]) -> None:
        for r in requests:
            waiter = r.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


async def wait_for_result(plane: DataPlane, prepared: InferRequest, sink: LoopSink) -> InferRequest:
    """Queue a prepared request and wait for it on the running loop (gRPC and REST share this half).

    Raises:
        ServerError: the request failed; CancelledError (asyncio) when the caller went away.
    """
    waiter = asyncio.get_running_loop().create_future()
    prepared.waiter = waiter
    prepared.sink = sink
    plane.submit(prepared)
    try:
        await waiter
    except asyncio.CancelledError:  # the client went away: drop it if still queued
        plane.cancel(prepared)
        if prepared.trace is not None:
            plane.telemetry.tracer.end(prepared, CancelledError("the client cancelled the request"))
        raise
    if prepared.trace is not None:
        plane.telemetry.tracer.end(prepared)
    if prepared.error is not None:
        raise prepared.error
    return prepared


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on grpc.aio."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._sink: LoopSink | None = None
        self._tracer = plane.telemetry.tracer

    def _loop_sink(self) -> LoopSink:
        if self._sink is None:
            self._sink = LoopSink(asyncio.get_running_loop())
        return self._sink

    # ---- health and metadata --------------------------------------------------------

    @_unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.live)

    @_unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready)

    @_unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    @_unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return self._plane.server_metadata()

    @_unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return self._plane.model_metadata(request.name, request.version)

    @_unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return self._plane.model_config(request.name, request.version)

    @_unary
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return self._plane.model_statistics(request.name, request.version)

    @_unary
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return self._plane.repository_index(request.ready)

    # ---- inference -------------------------------------------------------------------

    async def _infer(self, request: pb.ModelInferRequest, context: Context) -> InferRequest:
        """Admit, prepare, queue and wait for one request; raises ServerError on failure."""
        with self._plane.admission.admitted():  # UNAVAILABLE once draining; a drain waits for it
            return await self._run(request, context)

    async def _run(self, request: pb.ModelInferRequest, context: Context) -> InferRequest:
        prepared = self._plane.prepare(request, context.time_remaining())
        if self._tracer.active:  # the one check a request pays when tracing is off
            self._tracer.begin(prepared, context.invocation_metadata())
        return await wait_for_result(self._plane, prepared, self._loop_sink())

    @_unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return encode_response(await self._infer(request, context), self._plane.shm)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request runs concurrently; responses go out as they finish.

        A failed request answers with error_message and the stream stays open,
        unless the client sent the header ``triton_grpc_error: true`` (Triton's
        opt-in), which ends the stream with the real status code.
        """
        try:
            self._plane.admission.enter()  # a drain waits for the open stream, which ends itself
        except UnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        try:
            async for response in self._stream(request_iterator, context):
                yield response
        finally:
            self._plane.admission.leave()

    async def _stream(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        metadata = dict(context.invocation_metadata() or ())
        fail_stream = str(metadata.get("triton_grpc_error", "")).lower() == "true"
        outbox: asyncio.Queue[pb.ModelStreamInferResponse | BaseException | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        draining = asyncio.Event()
        loop = asyncio.get_running_loop()
        unsubscribe = self._plane.admission.on_close(lambda: loop.call_soon_threadsafe(draining.set))

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                done = await self._infer(request, context)
                outbox.put_nowait(pb.ModelStreamInferResponse(infer_response=encode_response(done, self._plane.shm)))
            except asyncio.CancelledError:
                raise
            except (ServerError, Exception) as exc:
                if fail_stream:
                    outbox.put_nowait(exc)
                    return
                outbox.put_nowait(stream_error_response(request, exc, failure_trace_id(exc, context)))

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.ensure_future(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            outbox.put_nowait(None)

        async def drain() -> None:
            # the server is draining: answer what was admitted, then end the stream (UNAVAILABLE)
            await draining.wait()
            reader.cancel()  # requests read from now on would be refused anyway
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            outbox.put_nowait(UnavailableError(SHUTTING_DOWN))

        reader = asyncio.ensure_future(read())
        drainer = asyncio.ensure_future(drain())
        try:
            while True:
                item = await outbox.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    code, message = status_for(item)
                    await context.abort(code, message)
                    return
                yield item
            await reader
        finally:
            unsubscribe()
            drainer.cancel()
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # model control: the model-repository group of a restricted-protocol interceptor

    @_unary
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        loop = asyncio.get_running_loop()  # a load builds engines: never on the event loop
        return await loop.run_in_executor(None, self._plane.repository_model_load, request)

    @_unary
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        loop = asyncio.get_running_loop()  # waits for in-flight requests
        return await loop.run_in_executor(None, self._plane.repository_model_unload, request)

    @_unary
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        return self._plane.shm_status(request.name)

    @_unary
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        return self._plane.shm_register(request)

    @_unary
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        return self._plane.shm_unregister(request.name)

    @_unary
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        return self._plane.cuda_shm_status(request.name)

    @_unary
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        loop = asyncio.get_running_loop()  # opening an IPC handle maps device memory: off the event loop
        return await loop.run_in_executor(None, self._plane.cuda_shm_register, request)

    @_unary
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        loop = asyncio.get_running_loop()  # closing waits for copies in progress and unmaps: off the event loop
        return await loop.run_in_executor(None, self._plane.cuda_shm_unregister, request.name)

    # ---- trace and logging extensions ------------------------------------------------------

    @_unary
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        return self._plane.telemetry.trace_setting(request)

    @_unary
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        return self._plane.telemetry.log_settings(request)
