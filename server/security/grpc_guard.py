"""The gRPC side of access control: each method's group, and interceptors for both server flavours.

The interceptors only look at the method name and the metadata, before any
request is parsed: a refused call's body is never deserialised. A refusal is
answered with a handler of the same kind (unary or streaming) as the real one,
so ModelStreamInfer is refused with a status like any unary call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from .access import AccessPolicy, Refusal, RefusalKind

__all__ = ["METHOD_GROUPS", "AccessInterceptor", "AioAccessInterceptor", "group_of", "status_of"]

_INFERENCE = "/inference.GRPCInferenceService/"

#: Every RPC's group, as Triton assigns them (grpc_server.cc's RestrictedCategory).
METHOD_GROUPS: dict[str, str] = {
    **{_INFERENCE + m: "health" for m in ("ServerLive", "ServerReady", "ModelReady")},
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
    **{_INFERENCE + m: "metadata" for m in ("ServerMetadata", "ModelMetadata")},
    **{_INFERENCE + m: "inference" for m in ("ModelInfer", "ModelStreamInfer")},
    _INFERENCE + "ModelConfig": "model-config",
    _INFERENCE + "ModelStatistics": "statistics",
    **{_INFERENCE + m: "model-repository"
       for m in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")},
    **{_INFERENCE + f"{kind}SharedMemory{op}": "shared-memory"
       for kind in ("System", "Cuda") for op in ("Status", "Register", "Unregister")},
    _INFERENCE + "TraceSetting": "trace",
    _INFERENCE + "LogSettings": "logging",
}
# Server reflection is not in Triton; it describes the services, so it counts as metadata.
_REFLECTION_PREFIX = "/grpc.reflection."
#: An unknown method still gets a group, so a restriction can never be sidestepped by a new name.
_FALLBACK_GROUP = "inference"

_STATUS = {
    RefusalKind.RESTRICTED: grpc.StatusCode.UNAVAILABLE,  # Triton's code
    RefusalKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
}


def group_of(method: str) -> str:
    """The access group of a full method name (``/package.Service/Method``)."""
    group = METHOD_GROUPS.get(method)
    if group is not None:
        return group
    return "metadata" if method.startswith(_REFLECTION_PREFIX) else _FALLBACK_GROUP


def status_of(refusal: Refusal) -> grpc.StatusCode:
    return _STATUS[refusal.kind]


def _headers(metadata: Sequence[tuple[str, str | bytes]] | None, wanted: frozenset[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in wanted and isinstance(value, str):
            found[key] = value
    return found


def _decide(policy: AccessPolicy, details: grpc.HandlerCallDetails) -> Refusal | None:
    group = group_of(details.method)
    if not policy.guarded(group):
        return None
    metadata = details.invocation_metadata
    return policy.check(group, _headers(metadata, policy.headers))


def _refusing_handler(
    handler: grpc.RpcMethodHandler[Any, Any], abort: Callable[[Any, Any], Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the refused one's kind whose body aborts; requests stay unparsed bytes."""
    streaming_in = bool(handler.request_streaming)
    streaming_out = bool(handler.response_streaming)
    serializer = handler.response_serializer
    if streaming_in and streaming_out:
        return grpc.stream_stream_rpc_method_handler(abort, None, serializer)
    if streaming_in:
        return grpc.stream_unary_rpc_method_handler(abort, None, serializer)
    if streaming_out:
        return grpc.unary_stream_rpc_method_handler(abort, None, serializer)
    return grpc.unary_unary_rpc_method_handler(abort, None, serializer)


class AioAccessInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio flavour: refused calls end with the policy's status before any handler runs."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        refusal = _decide(self._policy, handler_call_details) if handler is not None else None
        if refusal is None or handler is None:
            return handler
        code, message = status_of(refusal), refusal.message

        async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(code, message)

        return _refusing_handler(handler, abort)


class AccessInterceptor(grpc.ServerInterceptor):
    """Thread-pool flavour of ``AioAccessInterceptor``."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        refusal = _decide(self._policy, handler_call_details) if handler is not None else None
        if refusal is None or handler is None:
            return handler
        code, message = status_of(refusal), refusal.message

        def abort(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

        return _refusing_handler(handler, abort)


def aio_interceptors(policy: AccessPolicy | None) -> list[grpc.aio.ServerInterceptor]:
    """The grpc.aio server's interceptors: none when nothing can be refused (no cost per call)."""
    return [AioAccessInterceptor(policy)] if policy is not None and policy.active else []


def thread_interceptors(policy: AccessPolicy | None) -> list[grpc.ServerInterceptor]:
    """The thread-pool server's interceptors: none when nothing can be refused."""
    return [AccessInterceptor(policy)] if policy is not None and policy.active else []
