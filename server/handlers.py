"""inference.GRPCInferenceService's method handlers, with request parsing that cannot fail inside gRPC.

The generated ``add_GRPCInferenceServiceServicer_to_server`` parses with
``FromString``: a body that is not a valid protobuf message then raises inside
grpc, which answers UNKNOWN ("Unexpected DecodeError") and logs a traceback per
call. Here a body that does not parse becomes a ``MalformedMessage``, and the
handler answers INVALID_ARGUMENT with a short message (a stream answers that
one request with an error_message and stays open), logged at debug level only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from clients.pb import grpc_service_pb2 as pb

from .wire import MalformedMessage

__all__ = ["SERVICE", "add_inference_servicer"]

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _parser(message_class: type[Message]) -> Callable[[bytes], Any]:
    name = message_class.DESCRIPTOR.name

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, RuntimeError, ValueError):  # the C parser raises DecodeError; guard its kin too
            return MalformedMessage(name)

    return parse


def _abort_sync(context: grpc.ServicerContext, message: MalformedMessage) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message.reason)


def _unary_sync(method: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedMessage):
            _abort_sync(context, request)
        return method(request, context)

    return handle


def _unary_aio(method: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, MalformedMessage):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await method(request, context)

    return handle


def add_inference_servicer(servicer: Any, server: grpc.Server | grpc.aio.Server, aio: bool) -> None:
    """Register every RPC of the service on `server`, the servicer's methods behind safe parsers.

    Streams get the MalformedMessage items as they come: the data plane refuses each
    with INVALID_ARGUMENT on the stream (error_message), so one bad message does not end it.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        parse = _parser(request_class)
        serialize = response_class.SerializeToString
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, request_deserializer=parse, response_serializer=serialize
            )
        else:
            wrapped = _unary_aio(behaviour) if aio else _unary_sync(behaviour)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                wrapped, request_deserializer=parse, response_serializer=serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.62: faster method lookup
        server.add_registered_method_handlers(SERVICE.full_name, handlers)
