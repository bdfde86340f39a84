"""The blocking client: tritonclient.grpc's methods over one grpc channel.

Requests are built and responses read in ``_calls``/``_infer`` (shared with
the asyncio client); this module only performs the calls, each inside
``rpc_errors()`` so every failure is an ``InferenceServerError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import grpc

from . import _calls
from ._calls import DEFAULT_MAX_MESSAGE_BYTES, Call, CallOptions, Headers, StreamRequest
from ._errors import InferenceServerError, rpc_errors
from ._infer import InferInput, InferOptions, InferRequestedOutput, InferResult, build_infer_request
from ._stream import CallbackStream, StreamCallback
from ._targets import RetryPolicy, resolve_target
from .pb import grpc_service_pb2 as pb
from .pb import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # typing.Unpack is 3.11+; only the type checker needs it
    from typing_extensions import Unpack

__all__ = ["InferenceClient"]

_Resp = TypeVar("_Resp")
_Out = TypeVar("_Out")


class InferenceClient:
    """A blocking client for inference.GRPCInferenceService (Triton / KServe v2).

    Args:
        url: "host:port" of the server; several replicas as a list of "host:port" IP literals, or a
            gRPC target such as "dns:///name:port" (a headless Service): both balanced round-robin.
        retry: retry UNAVAILABLE (a replica draining, gone, or without the model) on the next replica,
            within the call's deadline: True (default, ``RetryPolicy()``), a ``RetryPolicy``, or False.
            Inference requests are idempotent, so a retry never runs a request twice with effect.
        ssl: use TLS (ignored when `credentials` is given).
        root_certificates: with ssl, a PEM file of the roots that verify the server (default: gRPC's bundle).
        private_key: with ssl, the client's PEM key file, for servers that require client certificates.
        certificate_chain: with ssl, the client's PEM certificate chain file (goes with private_key).
        credentials: explicit channel credentials (``grpc.ssl_channel_credentials(...)``).
        channel_args: extra grpc channel options, applied after the defaults.
        max_message_bytes: send and receive limit; INT32_MAX like the server and tritonclient.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "127.0.0.1:8001",
        *,
        retry: RetryPolicy | bool = True,
        ssl: bool = False,
        root_certificates: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        certificate_chain: str | os.PathLike[str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_args: Sequence[tuple[str, Any]] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        target = resolve_target(url, retry)
        options = _calls.channel_options(max_message_bytes, channel_args, target.options)
        creds = _calls.channel_credentials(ssl, credentials, root_certificates, private_key, certificate_chain)
        self._channel = (
            grpc.secure_channel(target.uri, creds, options)
            if creds is not None
            else grpc.insecure_channel(target.uri, options)
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._stream: CallbackStream | None = None

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop an open stream (waiting for its answers) and close the channel."""
        self.stop_stream()
        self._channel.close()

    def _unary(self, call: Call[Any, _Resp, _Out], options: CallOptions) -> _Out:
        timeout, meta = _calls.call_options(options)
        method: grpc.UnaryUnaryMultiCallable[Any, _Resp] = getattr(self._stub, call.method)
        with rpc_errors():
            response = method(call.request, timeout=timeout, metadata=meta)
        return call.finish(response)

    # ---- health (every method takes CallOptions: headers=, client_timeout=) -----------------

    def is_server_live(self, **call: Unpack[CallOptions]) -> bool:
        """Whether the server process is up (ServerLive)."""
        return self._unary(_calls.server_live(), call)

    def is_server_ready(self, **call: Unpack[CallOptions]) -> bool:
        """Whether the server accepts inference (ServerReady)."""
        return self._unary(_calls.server_ready(), call)

    def is_model_ready(self, model_name: str, model_version: str = "", **call: Unpack[CallOptions]) -> bool:
        """Whether a model (version) is loaded and ready; False for an unknown model."""
        return self._unary(_calls.model_ready(model_name, model_version), call)

    # ---- metadata: the protobuf response, or tritonclient's dict form with as_json=True --------

    @overload
    def get_server_metadata(
        self, *, as_json: Literal[False] = ..., **call: Unpack[CallOptions]
    ) -> pb.ServerMetadataResponse: ...
    @overload
    def get_server_metadata(
        self, *, as_json: Literal[True], **call: Unpack[CallOptions]
    ) -> dict[str, Any]: ...
    def get_server_metadata(
        self, *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.ServerMetadataResponse | dict[str, Any]:
        """Server name, version and extensions."""
        return self._unary(_calls.server_metadata(as_json), call)

    @overload
    def get_model_metadata(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[False] = ...,
        **call: Unpack[CallOptions],
    ) -> pb.ModelMetadataResponse: ...
    @overload
    def get_model_metadata(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[True],
        **call: Unpack[CallOptions],
    ) -> dict[str, Any]: ...
    def get_model_metadata(
        self, model_name: str, model_version: str = "", *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.ModelMetadataResponse | dict[str, Any]:
        """A model's versions, platform and tensors (shapes include the batch dim as -1)."""
        return self._unary(_calls.model_metadata(model_name, model_version, as_json), call)

    @overload
    def get_model_config(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[False] = ...,
        **call: Unpack[CallOptions],
    ) -> pb.ModelConfigResponse: ...
    @overload
    def get_model_config(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[True],
        **call: Unpack[CallOptions],
    ) -> dict[str, Any]: ...
    def get_model_config(
        self, model_name: str, model_version: str = "", *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.ModelConfigResponse | dict[str, Any]:
        """A model's effective configuration (``response.config`` is an ``inference.ModelConfig``)."""
        return self._unary(_calls.model_config(model_name, model_version, as_json), call)

    @overload
    def get_model_repository_index(
        self, ready: bool = ..., *, as_json: Literal[False] = ..., **call: Unpack[CallOptions]
    ) -> pb.RepositoryIndexResponse: ...
    @overload
    def get_model_repository_index(
        self, ready: bool = ..., *, as_json: Literal[True], **call: Unpack[CallOptions]
    ) -> dict[str, Any]: ...
    def get_model_repository_index(
        self, ready: bool = False, *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.RepositoryIndexResponse | dict[str, Any]:
        """Every model in the repository with its state and reason (only ready ones with `ready`)."""
        return self._unary(_calls.repository_index(ready, as_json), call)

    def load_model(
        self,
        model_name: str,
        config: str | None = None,
        files: Mapping[str, bytes] | None = None,
        **call: Unpack[CallOptions],
    ) -> None:
        """Load or reload a model (explicit model control), as tritonclient's ``load_model``.

        Args:
            model_name: the model.
            config: a JSON ModelConfig that replaces config.pbtxt.
            files: ``{"file:<version>/<name>": bytes}``: the model's files, sent in the request
                (then ``config`` is required and the repository's folder is not used).
        """
        return self._unary(_calls.load_model(model_name, config, files), call)

    def unload_model(
        self, model_name: str, unload_dependents: bool = False, **call: Unpack[CallOptions]
    ) -> None:
        """Unload a model; returns once its in-flight requests finished (bounded by the server)."""
        return self._unary(_calls.unload_model(model_name, unload_dependents), call)

    @overload
    def get_inference_statistics(
        self,
        model_name: str = ...,
        model_version: str = ...,
        *,
        as_json: Literal[False] = ...,
        **call: Unpack[CallOptions],
    ) -> pb.ModelStatisticsResponse: ...
    @overload
    def get_inference_statistics(
        self,
        model_name: str = ...,
        model_version: str = ...,
        *,
        as_json: Literal[True],
        **call: Unpack[CallOptions],
    ) -> dict[str, Any]: ...
    def get_inference_statistics(
        self,
        model_name: str = "",
        model_version: str = "",
        *,
        as_json: bool = False,
        **call: Unpack[CallOptions],
    ) -> pb.ModelStatisticsResponse | dict[str, Any]:
        """Cumulative statistics of one model, or of all models with an empty name."""
        return self._unary(_calls.model_statistics(model_name, model_version, as_json), call)

    # ---- inference -----------------------------------------------------------------------

    def infer(
        self,
        model_name: str,
        inputs: Iterable[InferInput],
        outputs: Iterable[InferRequestedOutput] | None = None,
        *,
        client_timeout: float | None = None,
        headers: Headers = None,
        **options: Unpack[InferOptions],
    ) -> InferResult:
        """Run one inference (ModelInfer).

        Args:
            model_name: the model to run.
            inputs: the inputs, each with data set.
            outputs: the outputs to return (None: all).
            client_timeout: seconds before the client gives up (DEADLINE_EXCEEDED).
            headers: request headers (gRPC metadata).
            **options: model_version, request_id, sequence_id/start/end, priority, timeout (µs),
                parameters; see ``InferOptions``.

        Returns:
            The result; ``as_numpy(name)`` decodes an output.

        Raises:
            InferenceServerError: the server refused or failed the request.
        """
        request = build_infer_request(model_name, inputs, outputs, **options)
        return self._unary(_calls.infer_call(request), {"headers": headers, "client_timeout": client_timeout})

    def stream_infer(
        self,
        requests: Iterable[StreamRequest],
        *,
        headers: Headers = None,
        stream_timeout: float | None = None,
    ) -> Iterator[InferResult | InferenceServerError]:
        """Send every request on one ModelStreamInfer call; yield answers as they arrive.

        A request the server refuses yields an ``InferenceServerError`` (its ``request_id``
        says which) and the stream goes on. Answers may come out of order: correlate by id.

        Args:
            requests: each an ``infer()`` keyword mapping, a ``(model_name, inputs[, outputs])``
                tuple or a ModelInferRequest; read lazily by gRPC's sending thread.
            headers: request headers for the stream.
            stream_timeout: seconds until the whole stream is cut off.

        Returns:
            An iterator of results and per-request errors.

        Raises:
            InferenceServerError: the stream itself failed.
            ValueError, TypeError: a request could not be built (raised after the answers
                to the requests before it).
        """
        failure: list[Exception] = []

        def messages() -> Iterator[pb.ModelInferRequest]:
            try:
                for item in requests:
                    yield _calls.stream_request(item)
            except Exception as exc:  # raised to the caller below, not in gRPC's thread
                failure.append(exc)

        call = self._stub.ModelStreamInfer(
            messages(), timeout=stream_timeout, metadata=_calls.metadata(headers)
        )
        try:
            with rpc_errors():
                for response in call:
                    yield _calls.stream_item(response)
        finally:
            call.cancel()
        if failure:
            raise failure[0]

    # ---- tritonclient's callback streaming ---------------------------------------------------

    def start_stream(
        self, callback: StreamCallback, *, stream_timeout: float | None = None, headers: Headers = None
    ) -> None:
        """Open the client's one stream; `callback(result, error)` gets each answer on a reader thread.

        Raises:
            RuntimeError: a stream is already open.
        """
        if self._stream is not None:
            raise RuntimeError("a stream is already open; call stop_stream() first (one stream per client)")
        self._stream = CallbackStream(self._stub, callback, headers, stream_timeout)

    def async_stream_infer(
        self,
        model_name: str,
        inputs: Iterable[InferInput],
        outputs: Iterable[InferRequestedOutput] | None = None,
        **options: Unpack[InferOptions],
    ) -> None:
        """Queue one request on the open stream and return at once; its answer goes to the callback.

        Arguments are ``infer()``'s; give each request a `request_id` to correlate answers.

        Raises:
            RuntimeError: no stream is open.
        """
        if self._stream is None:
            raise RuntimeError("no stream is open; call start_stream(callback) first")
        self._stream.send(build_infer_request(model_name, inputs, outputs, **options))

    def stop_stream(self, cancel_requests: bool = False) -> None:
        """Close the open stream (no-op without one), waiting for pending answers unless cancelled."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(cancel_requests)
