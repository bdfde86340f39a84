"""The asyncio client: InferenceClient's methods as coroutines over a grpc.aio channel.

Requests are built and responses read in ``_calls``/``_infer`` (shared with the
sync client); this module only awaits the calls, each inside ``rpc_errors()``.
Create it inside the event loop that will use it (grpc.aio channels belong to a loop).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import grpc

from . import _calls
from ._calls import DEFAULT_MAX_MESSAGE_BYTES, Call, CallOptions, Headers, StreamRequest
from ._errors import InferenceServerError, rpc_errors
from ._infer import InferInput, InferOptions, InferRequestedOutput, InferResult, build_infer_request
from ._multiplex import StreamMultiplexer
from ._targets import RetryPolicy, resolve_target
from .pb import grpc_service_pb2 as pb
from .pb import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # typing.Unpack is 3.11+; only the type checker needs it
    from typing_extensions import Unpack

__all__ = ["AsyncInferenceClient"]

_Resp = TypeVar("_Resp")
_Out = TypeVar("_Out")
_T = TypeVar("_T")


async def _each(items: AsyncIterable[_T] | Iterable[_T]) -> AsyncIterator[_T]:
    """Iterate a sync or async iterable the async way."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncInferenceClient:
    """An asyncio client for inference.GRPCInferenceService; see ``InferenceClient`` for each method.

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
        credentials: explicit channel credentials.
        channel_args: extra grpc channel options, applied after the defaults.
        max_message_bytes: send and receive limit; INT32_MAX like the server and tritonclient.
        multiplex: send ``infer()`` calls over one shared ModelStreamInfer stream instead of one unary
            RPC each (opt-in: cheaper per request on both sides; calls with ``headers`` still go unary, and a
            timed-out call is not cancelled on the server). Errors and results are the same as unary's, except
            that a refused request's status reads UNKNOWN (a stream error carries no code).
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
        multiplex: bool = False,
    ) -> None:
        target = resolve_target(url, retry)
        options = _calls.channel_options(max_message_bytes, channel_args, target.options)
        creds = _calls.channel_credentials(ssl, credentials, root_certificates, private_key, certificate_chain)
        self._channel = (
            grpc.aio.secure_channel(target.uri, creds, options)
            if creds is not None
            else grpc.aio.insecure_channel(target.uri, options)
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._mux = StreamMultiplexer(self._stub) if multiplex else None

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (cancels calls still running)."""
        if self._mux is not None:
            await self._mux.close()
        await self._channel.close()

    async def _unary(self, call: Call[Any, _Resp, _Out], options: CallOptions) -> _Out:
        timeout, meta = _calls.call_options(options)
        method: grpc.aio.UnaryUnaryMultiCallable[Any, _Resp] = getattr(self._stub, call.method)
        with rpc_errors():
            response = await method(call.request, timeout=timeout, metadata=meta)
        return call.finish(response)

    # ---- health (every method takes CallOptions: headers=, client_timeout=) -----------------

    async def is_server_live(self, **call: Unpack[CallOptions]) -> bool:
        """Whether the server process is up (ServerLive)."""
        return await self._unary(_calls.server_live(), call)

    async def is_server_ready(self, **call: Unpack[CallOptions]) -> bool:
        """Whether the server accepts inference (ServerReady)."""
        return await self._unary(_calls.server_ready(), call)

    async def is_model_ready(
        self, model_name: str, model_version: str = "", **call: Unpack[CallOptions]
    ) -> bool:
        """Whether a model (version) is loaded and ready; False for an unknown model."""
        return await self._unary(_calls.model_ready(model_name, model_version), call)

    # ---- metadata: the protobuf response, or tritonclient's dict form with as_json=True --------

    @overload
    async def get_server_metadata(
        self, *, as_json: Literal[False] = ..., **call: Unpack[CallOptions]
    ) -> pb.ServerMetadataResponse: ...
    @overload
    async def get_server_metadata(
        self, *, as_json: Literal[True], **call: Unpack[CallOptions]
    ) -> dict[str, Any]: ...
    async def get_server_metadata(
        self, *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.ServerMetadataResponse | dict[str, Any]:
        """Server name, version and extensions."""
        return await self._unary(_calls.server_metadata(as_json), call)

    @overload
    async def get_model_metadata(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[False] = ...,
        **call: Unpack[CallOptions],
    ) -> pb.ModelMetadataResponse: ...
    @overload
    async def get_model_metadata(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[True],
        **call: Unpack[CallOptions],
    ) -> dict[str, Any]: ...
    async def get_model_metadata(
        self, model_name: str, model_version: str = "", *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.ModelMetadataResponse | dict[str, Any]:
        """A model's versions, platform and tensors (shapes include the batch dim as -1)."""
        return await self._unary(_calls.model_metadata(model_name, model_version, as_json), call)

    @overload
    async def get_model_config(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[False] = ...,
        **call: Unpack[CallOptions],
    ) -> pb.ModelConfigResponse: ...
    @overload
    async def get_model_config(
        self,
        model_name: str,
        model_version: str = ...,
        *,
        as_json: Literal[True],
        **call: Unpack[CallOptions],
    ) -> dict[str, Any]: ...
    async def get_model_config(
        self, model_name: str, model_version: str = "", *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.ModelConfigResponse | dict[str, Any]:
        """A model's effective configuration (``response.config`` is an ``inference.ModelConfig``)."""
        return await self._unary(_calls.model_config(model_name, model_version, as_json), call)

    @overload
    async def get_model_repository_index(
        self, ready: bool = ..., *, as_json: Literal[False] = ..., **call: Unpack[CallOptions]
    ) -> pb.RepositoryIndexResponse: ...
    @overload
    async def get_model_repository_index(
        self, ready: bool = ..., *, as_json: Literal[True], **call: Unpack[CallOptions]
    ) -> dict[str, Any]: ...
    async def get_model_repository_index(
        self, ready: bool = False, *, as_json: bool = False, **call: Unpack[CallOptions]
    ) -> pb.RepositoryIndexResponse | dict[str, Any]:
        """Every model in the repository with its state and reason (only ready ones with `ready`)."""
        return await self._unary(_calls.repository_index(ready, as_json), call)

    async def load_model(
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
        return await self._unary(_calls.load_model(model_name, config, files), call)

    async def unload_model(
        self, model_name: str, unload_dependents: bool = False, **call: Unpack[CallOptions]
    ) -> None:
        """Unload a model; returns once its in-flight requests finished (bounded by the server)."""
        return await self._unary(_calls.unload_model(model_name, unload_dependents), call)

    @overload
    async def get_inference_statistics(
        self,
        model_name: str = ...,
        model_version: str = ...,
        *,
        as_json: Literal[False] = ...,
        **call: Unpack[CallOptions],
    ) -> pb.ModelStatisticsResponse: ...
    @overload
    async def get_inference_statistics(
        self,
        model_name: str = ...,
        model_version: str = ...,
        *,
        as_json: Literal[True],
        **call: Unpack[CallOptions],
    ) -> dict[str, Any]: ...
    async def get_inference_statistics(
        self,
        model_name: str = "",
        model_version: str = "",
        *,
        as_json: bool = False,
        **call: Unpack[CallOptions],
    ) -> pb.ModelStatisticsResponse | dict[str, Any]:
        """Cumulative statistics of one model, or of all models with an empty name."""
        return await self._unary(_calls.model_statistics(model_name, model_version, as_json), call)

    # ---- inference -----------------------------------------------------------------------

    async def infer(
        self,
        model_name: str,
        inputs: Iterable[InferInput],
        outputs: Iterable[InferRequestedOutput] | None = None,
        *,
        client_timeout: float | None = None,
        headers: Headers = None,
        **options: Unpack[InferOptions],
    ) -> InferResult:
        """Run one inference (ModelInfer); arguments as ``InferenceClient.infer``.

        Raises:
            InferenceServerError: the server refused or failed the request.
        """
        request = build_infer_request(model_name, inputs, outputs, **options)
        if self._mux is not None and not headers:
            return await self._mux.infer(request, client_timeout)
        return await self._unary(
            _calls.infer_call(request), {"headers": headers, "client_timeout": client_timeout}
        )

    async def stream_infer(
        self,
        requests: AsyncIterable[StreamRequest] | Iterable[StreamRequest],
        *,
        headers: Headers = None,
        stream_timeout: float | None = None,
    ) -> AsyncIterator[InferResult | InferenceServerError]:
        """Send every request on one ModelStreamInfer call; yield answers as they arrive.

        A refused request yields an ``InferenceServerError`` (with its ``request_id``) and
        the stream goes on; correlate answers by id.

        Args:
            requests: a sync or async iterable of ``infer()`` keyword mappings,
                ``(model_name, inputs[, outputs])`` tuples or ModelInferRequests.
            headers: request headers for the stream.
            stream_timeout: seconds until the whole stream is cut off.

        Returns:
            An async iterator of results and per-request errors.

        Raises:
            InferenceServerError: the stream itself failed.
            ValueError, TypeError: a request could not be built (raised after the answers
                to the requests before it).
        """
        failure: list[Exception] = []

        async def messages() -> AsyncIterator[pb.ModelInferRequest]:
            try:
                async for item in _each(requests):
                    yield _calls.stream_request(item)
            except Exception as exc:  # raised to the caller below, not inside grpc.aio's writer
                failure.append(exc)

        call = self._stub.ModelStreamInfer(
            messages(), timeout=stream_timeout, metadata=_calls.metadata(headers)
        )
        try:
            with rpc_errors():
                async for response in call:
                    yield _calls.stream_item(response)
        finally:
            call.cancel()
        if failure:
            raise failure[0]
