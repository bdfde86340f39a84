"""Request parsing that cannot fail inside gRPC, for every service the server hosts.

gRPC parses a request with the handler's ``request_deserializer`` before any of
our code runs: a body that is not a valid protobuf message then raises inside
grpc, which answers UNKNOWN ("Unexpected DecodeError"; INTERNAL in the thread
flavour) and logs a ~730-byte traceback per call. ``SafeRegistrar`` gives every
handler (inference, health, reflection) a parser that returns a
``MalformedMessage`` instead, and answers INVALID_ARGUMENT with a short message,
logged at debug level only. On ModelStreamInfer a malformed message gets its own
error_message and the stream stays open (the data plane refuses it, as Triton
answers per-request errors on a stream); other streams end with INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from .wire import MalformedMessage

__all__ = ["SafeRegistrar"]

_STREAMS_HANDLE_MALFORMED = frozenset({"/inference.GRPCInferenceService/ModelStreamInfer"})


def _parser(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError from the C parser, and anything else a parser may raise
            return MalformedMessage(name)

    return parse


def _sync_behaviour(handler: Any, method: str) -> Any:
    behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
    if not handler.request_streaming:
        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, MalformedMessage):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return behaviour(request, context)

        return unary
    if method in _STREAMS_HANDLE_MALFORMED:
        return behaviour

    def streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def checked() -> Iterator[Any]:
            for request in requests:
                if isinstance(request, MalformedMessage):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                yield request

        return behaviour(checked(), context)

    return streaming


def _aio_behaviour(handler: Any, method: str) -> Any:
    behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
    if not handler.request_streaming:
        if inspect.isasyncgenfunction(behaviour):
            async def unary_gen(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if isinstance(request, MalformedMessage):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                async for item in behaviour(request, context):
                    yield item

            return unary_gen

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, MalformedMessage):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await behaviour(request, context)

        return unary
    if method in _STREAMS_HANDLE_MALFORMED:
        return behaviour

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, MalformedMessage):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            yield request

    if inspect.isasyncgenfunction(behaviour):
        async def streaming_gen(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for item in behaviour(checked(requests, context), context):
                yield item

        return streaming_gen

    async def streaming(requests: AsyncIterator[Any], context: Any) -> Any:
        return await behaviour(checked(requests, context), context)

    return streaming


def _rebuild(handler: Any, behaviour: Any) -> Any:
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behaviour, request_deserializer=_parser(handler.request_deserializer),
                   response_serializer=handler.response_serializer)


class _SafeGeneric(grpc.GenericRpcHandler):
    """Looks a call's handler up in the wrapped generic handler and gives it the safe parser."""

    def __init__(self, inner: grpc.GenericRpcHandler, aio: bool) -> None:
        self._inner = inner
        self._aio = aio
        self._cache: dict[str, tuple[Any, Any]] = {}  # method -> (original, safe): bounded by the services

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._cache[method] = (handler, _safe(handler, method, self._aio))
        return cached[1]


def _safe(handler: Any, method: str, aio: bool) -> Any:
    if handler.request_deserializer is None:
        return handler
    behaviour = _aio_behaviour(handler, method) if aio else _sync_behaviour(handler, method)
    return _rebuild(handler, behaviour)


class SafeRegistrar:
    """Stands in for the server when services register (generated ``add_*_to_server``, health, reflection).

    Every handler they add gets the safe parser; registration happens once, so calls pay
    nothing beyond the malformed check.
    """

    def __init__(self, server: grpc.Server | grpc.aio.Server, aio: bool) -> None:
        self._server = server
        self._aio = aio

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(tuple(_SafeGeneric(h, self._aio) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        if hasattr(self._server, "add_registered_method_handlers"):
            safe = {name: _safe(h, f"/{service}/{name}", self._aio) for name, h in handlers.items()}
            self._server.add_registered_method_handlers(service, safe)
