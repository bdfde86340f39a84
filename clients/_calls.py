"""What each RPC sends and how its answer is read, with no I/O: the part both clients share.

Each function returns a ``Call``: the stub method's name, the request message and
the function that turns the response into what the public method returns. The
sync and asyncio clients only perform the call (``method(request, ...)`` or
``await method(request, ...)``) inside ``rpc_errors()``, so request building
and response reading exist once. Channel options and header metadata live here
for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

import grpc
from google.protobuf.message import Message

from ._errors import STREAM_ERROR_STATUS, InferenceServerError
from ._infer import InferResult, build_infer_request, message_to_dict
from .pb import grpc_service_pb2 as pb

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Call",
    "CallOptions",
    "Headers",
    "StreamRequest",
    "call_options",
    "channel_credentials",
    "channel_options",
    "infer_call",
    "load_model",
    "metadata",
    "model_config",
    "model_metadata",
    "model_ready",
    "model_statistics",
    "repository_index",
    "server_live",
    "server_metadata",
    "server_ready",
    "stream_item",
    "stream_request",
    "unload_model",
]

#: INT32_MAX: protobuf's hard limit, the server's default and tritonclient's channel setting.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1

#: Request headers, sent as gRPC metadata (keys lower-cased: gRPC refuses upper case).
Headers = Mapping[str, str] | None

#: One request of a stream: ``infer()``'s keyword arguments as a mapping, a tuple
#: ``(model_name, inputs[, outputs])``, or a ready ModelInferRequest.
StreamRequest = Mapping[str, Any] | tuple[Any, ...] | pb.ModelInferRequest

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Out = TypeVar("_Out")


@dataclass(frozen=True)
class Call(Generic[_Req, _Resp, _Out]):
    """One unary RPC, described: which stub method, what to send, how to read the answer."""

    method: str
    request: _Req
    finish: Callable[[_Resp], _Out]


def channel_options(
    max_message_bytes: int,
    channel_args: Sequence[tuple[str, Any]] | None,
    target_options: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Message limits and the target's service config first; the caller's channel_args come last so they win."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *target_options,
        *(channel_args or ()),
    ]


def _read_pem(path: str | os.PathLike[str] | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(
    ssl: bool,
    credentials: grpc.ChannelCredentials | None,
    root_certificates: str | os.PathLike[str] | None = None,
    private_key: str | os.PathLike[str] | None = None,
    certificate_chain: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials | None:
    """None means an insecure channel.

    As tritonclient: with ``ssl`` the three optional PEM *files* are read here (root certificates
    that verify the server, default gRPC's bundled roots; the client's key and certificate chain for
    mutual TLS). Explicit ``credentials`` win over all of them.
    """
    if credentials is not None:
        return credentials
    if not ssl:
        if root_certificates or private_key or certificate_chain:
            raise ValueError("root_certificates, private_key and certificate_chain need ssl=True")
        return None
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain go together (a client certificate needs both)")
    return grpc.ssl_channel_credentials(
        _read_pem(root_certificates), _read_pem(private_key), _read_pem(certificate_chain)
    )


class CallOptions(TypedDict, total=False):
    """Per-call options every unary method takes as keyword arguments.

    headers: request headers, sent as gRPC metadata.
    client_timeout: seconds before the client gives up (DEADLINE_EXCEEDED); None waits forever.
    """

    headers: Headers
    client_timeout: float | None


def call_options(options: CallOptions) -> tuple[float | None, tuple[tuple[str, str], ...] | None]:
    """(timeout, metadata) for grpc; an unknown key is a TypeError, as a bad keyword would be."""
    unknown = options.keys() - CallOptions.__optional_keys__
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; expected headers, client_timeout")
    return options.get("client_timeout"), metadata(options.get("headers"))


def metadata(headers: Headers) -> tuple[tuple[str, str], ...] | None:
    """Headers as gRPC metadata."""
    if not headers:
        return None
    return tuple((key.lower(), value) for key, value in headers.items())


_Msg = TypeVar("_Msg", bound=Message)


def _json_or(as_json: bool) -> Callable[[_Msg], _Msg | dict[str, Any]]:
    """The response as it is, or tritonclient's as_json dict."""

    def finish(message: _Msg) -> _Msg | dict[str, Any]:
        return message_to_dict(message) if as_json else message

    return finish


def server_live() -> Call[pb.ServerLiveRequest, pb.ServerLiveResponse, bool]:
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)


def server_ready() -> Call[pb.ServerReadyRequest, pb.ServerReadyResponse, bool]:
    return Call("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)


def model_ready(name: str, version: str) -> Call[pb.ModelReadyRequest, pb.ModelReadyResponse, bool]:
    return Call("ModelReady", pb.ModelReadyRequest(name=name, version=version), lambda r: r.ready)


def server_metadata(
    as_json: bool,
) -> Call[pb.ServerMetadataRequest, pb.ServerMetadataResponse, pb.ServerMetadataResponse | dict[str, Any]]:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), _json_or(as_json))


def model_metadata(
    name: str, version: str, as_json: bool
) -> Call[pb.ModelMetadataRequest, pb.ModelMetadataResponse, pb.ModelMetadataResponse | dict[str, Any]]:
    return Call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version), _json_or(as_json))


def model_config(
    name: str, version: str, as_json: bool
) -> Call[pb.ModelConfigRequest, pb.ModelConfigResponse, pb.ModelConfigResponse | dict[str, Any]]:
    return Call("ModelConfig", pb.ModelConfigRequest(name=name, version=version), _json_or(as_json))


def repository_index(
    ready: bool, as_json: bool
) -> Call[pb.RepositoryIndexRequest, pb.RepositoryIndexResponse, pb.RepositoryIndexResponse | dict[str, Any]]:
    return Call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready), _json_or(as_json))


def load_model(
    name: str, config: str | None, files: Mapping[str, bytes] | None
) -> Call[pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse, None]:
    """tritonclient's load_model: `config` a JSON ModelConfig, `files` {"file:<version>/<name>": bytes}."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if config is not None:
        request.parameters["config"].string_param = config
    for key, content in (files or {}).items():
        if not key.startswith("file:"):
            raise ValueError(f"file override keys start with 'file:' (e.g. 'file:1/model.onnx'), got {key!r}")
        request.parameters[key].bytes_param = content
    return Call("RepositoryModelLoad", request, lambda r: None)


def unload_model(
    name: str, unload_dependents: bool
) -> Call[pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse, None]:
    request = pb.RepositoryModelUnloadRequest(model_name=name)
    request.parameters["unload_dependents"].bool_param = unload_dependents
    return Call("RepositoryModelUnload", request, lambda r: None)


def model_statistics(
    name: str, version: str, as_json: bool
) -> Call[pb.ModelStatisticsRequest, pb.ModelStatisticsResponse, pb.ModelStatisticsResponse | dict[str, Any]]:
    return Call("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version), _json_or(as_json))


def infer_call(
    request: pb.ModelInferRequest,
) -> Call[pb.ModelInferRequest, pb.ModelInferResponse, InferResult]:
    return Call("ModelInfer", request, InferResult)


def stream_request(item: StreamRequest) -> pb.ModelInferRequest:
    """Turn one stream item (kwargs mapping, tuple or message) into a ModelInferRequest."""
    if isinstance(item, pb.ModelInferRequest):
        return item
    if isinstance(item, tuple):
        return build_infer_request(*item)
    if isinstance(item, Mapping):
        return build_infer_request(**item)
    raise TypeError(
        "a stream request is a mapping of infer() arguments, a (model_name, inputs[, outputs]) tuple "
        f"or a ModelInferRequest, not {type(item).__name__}"
    )


def stream_item(response: pb.ModelStreamInferResponse) -> InferResult | InferenceServerError:
    """A stream response as a result, or as an error carrying the failed request's id."""
    if response.error_message:
        return InferenceServerError(
            STREAM_ERROR_STATUS, response.error_message, request_id=response.infer_response.id
        )
    return InferResult(response.infer_response)
