"""The transport-agnostic data plane: every RPC's work, with no gRPC in it.

The servicer (grpc.aio today; a thread-pool flavour can reuse this as is)
turns wire calls into these methods and ServerError into status codes. The
inference path is split in two so a transport can wait its own way:
``prepare`` checks and decodes (raising ServerError), ``submit`` queues the
request, and the scheduler later hands it to the request's sink.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .errors import InvalidArgumentError, NotFoundError, ServerError
from .registry import ModelRegistry
from .request import InferRequest
from .telemetry.hub import Telemetry
from .wire import decode_request

__all__ = ["EXTENSIONS", "SERVER_NAME", "DataPlane", "server_version"]

SERVER_NAME = "tensorgate"
# exactly the extensions whose RPCs and semantics work
EXTENSIONS = (
    "classification",
    "logging",
    "model_configuration",
    "parameters",
    "schedule_policy",
    "statistics",
    "trace",
)


def server_version() -> str:
    try:
        return _dist_version("tensorgate")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+source"


class DataPlane:
    """Answers every implemented RPC from the registry."""

    def __init__(
        self, registry: ModelRegistry, strict_readiness: bool = False, telemetry: Telemetry | None = None
    ) -> None:
        self.registry = registry
        self.strict_readiness = strict_readiness
        self.accepting = False  # set by the app: started and not draining
        self._version = server_version()
        # traces, metrics, TraceSetting/LogSettings (transports reach the tracer through it)
        self.telemetry = telemetry or Telemetry(registry, version=self._version)

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        """Started, not draining, no model loading; strict: every model ready too (Triton's default)."""
        if not self.accepting or self.registry.loading:
            return False
        return self.registry.all_ready if self.strict_readiness else True

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)

    def model_ready(self, name: str, version: str) -> bool:
        try:
            return self.registry.find(name, version).ready
        except (NotFoundError, Exception):
            return False

    def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        mv = self.registry.resolve(name, version)
        batching = mv.batching
        ready_versions = [v.version_str for v in self.registry.versions(name) if v.ready]
        Tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=name,
            versions=ready_versions,
            platform=mv.config.platform,
            inputs=[Tensor(name=t.name, datatype=t.datatype, shape=t.wire_shape(batching)) for t in mv.inputs.values()],
            outputs=[
                Tensor(name=t.name, datatype=t.datatype, shape=t.wire_shape(batching)) for t in mv.outputs.values()
            ],
        )

    def model_config(self, name: str, version: str) -> pb.ModelConfigResponse:
        mv = self.registry.resolve(name, version)
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(mv.config)
        return response

    def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        Index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                Index(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in self.registry.index(ready_only)
            ]
        )

    def model_statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        """Ready versions' statistics; Triton answers INVALID_ARGUMENT for a model with none."""
        if name:
            try:
                versions = [self.registry.find(name, version)] if version else self.registry.versions(name)
            except ServerError:
                versions = []
            versions = [mv for mv in versions if mv.ready]
            if not versions:
                raise InvalidArgumentError(f"requested model '{name}' is not available")
        else:
            versions = [mv for mv in self.registry.all_versions() if mv.ready]
        response = pb.ModelStatisticsResponse()
        for mv in versions:
            if mv.scheduler is not None:
                response.model_stats.append(mv.scheduler.statistics.to_pb(mv.name, mv.version_str))
        return response

    # ---- inference ---------------------------------------------------------------

    def prepare(self, request: pb.ModelInferRequest, time_remaining: float | None = None) -> InferRequest:
        """Resolve the model and check and decode the request (raises ServerError).

        Args:
            request: the wire request.
            time_remaining: seconds left of the call's gRPC deadline, if it has one.
        """
        arrival = time.monotonic_ns()
        mv = self.registry.resolve(request.model_name, request.model_version)
        guard = mv.input_guard
        if guard is not None:  # text models: cap the payload before decoding it
            guard.before(mv.name, request)
        prepared = decode_request(mv, request, arrival)
        if guard is not None:
            guard.check(prepared)
        if time_remaining is not None:
            prepared.deadline_ns = arrival + int(time_remaining * 1e9)
        return prepared

    def submit(self, request: InferRequest) -> None:
        """Queue a prepared request (or answer it from the response cache); its sink is told when done."""
        self.registry.submit(request)

    def cancel(self, request: InferRequest) -> bool:
        """Drop a queued request whose client went away; False when it is already running."""
        scheduler = request.model.scheduler
        return scheduler is not None and scheduler.cancel(request)
