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

from .admission import Admission
from .errors import InvalidArgumentError, NotFoundError, RetiredError, ServerError, UnavailableError
from .lifecycle import ModelControl
from .registry import ModelRegistry
from .request import InferRequest
from .settings import MAX_MESSAGE_BYTES
from .shm_store import SharedMemory
from .telemetry.hub import Telemetry
from .wire import MalformedMessage, decode_request, repository_parameters

__all__ = ["EXTENSIONS", "SERVER_NAME", "DataPlane", "server_version"]

SERVER_NAME = "tensorgate"
# exactly the extensions whose RPCs and semantics work (plus cuda_shared_memory where a GPU makes it work)
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "logging",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "parameters",
    "schedule_policy",
    "statistics",
    "system_shared_memory",
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
        self, registry: ModelRegistry, strict_readiness: bool = False, telemetry: Telemetry | None = None,
        shm: SharedMemory | None = None, control: ModelControl | None = None,
        max_request_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.registry = registry
        self.max_request_bytes = max_request_bytes
        self.shm = shm or SharedMemory()
        # load, unload, poll, index: the model-repository extension (mode none unless the app says)
        self.control = control or ModelControl(registry)
        self.strict_readiness = strict_readiness
        # inference calls taken and still running; closed until the app starts, closed again to drain
        self.admission = Admission()
        self._version = server_version()
        # traces, metrics, TraceSetting/LogSettings (transports reach the tracer through it)
        self.telemetry = telemetry or Telemetry(registry, version=self._version)

    @property
    def accepting(self) -> bool:
        """Started and not draining."""
        return self.admission.open and not self.admission.draining

    @accepting.setter
    def accepting(self, value: bool) -> None:
        if value:
            self.admission.reopen()
        else:
            self.admission.begin_drain()  # not ready; InferenceServer.stop closes admission after

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
        extensions: tuple[str, ...] = EXTENSIONS
        if self.shm.cuda.available:  # cuda-python and a GPU here: CUDA regions can be opened
            extensions = tuple(sorted((*extensions, "cuda_shared_memory")))
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=extensions)

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
                for e in self.control.index(ready_only)
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

    # ---- shared memory (system and CUDA regions share one namespace) ---------------------

    def shm_status(self, name: str) -> pb.SystemSharedMemoryStatusResponse:
        if name and self.shm.cuda.has(name):
            raise NotFoundError(f"the region named '{name}' is registered as CUDA shared memory, not system "
                                "shared memory")
        response = pb.SystemSharedMemoryStatusResponse()
        for info in self.shm.system.status(name):
            response.regions[info.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=info.name, key=info.key, offset=info.offset, byte_size=info.byte_size))
        return response

    def shm_register(self, request: pb.SystemSharedMemoryRegisterRequest) -> pb.SystemSharedMemoryRegisterResponse:
        self.shm.system.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    def shm_unregister(self, name: str) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shm.system.unregister(name)  # a CUDA region's name unregisters nothing here (Triton's rule)
        return pb.SystemSharedMemoryUnregisterResponse()

    def cuda_shm_status(self, name: str) -> pb.CudaSharedMemoryStatusResponse:
        if name and self.shm.system.has(name):
            raise NotFoundError(f"the region named '{name}' is registered as system shared memory, not CUDA "
                                "shared memory")
        response = pb.CudaSharedMemoryStatusResponse()
        for info in self.shm.cuda.status(name):
            response.regions[info.name].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(
                name=info.name, device_id=info.device_id, byte_size=info.byte_size))
        return response

    def cuda_shm_register(self, request: pb.CudaSharedMemoryRegisterRequest) -> pb.CudaSharedMemoryRegisterResponse:
        """Opens a CUDA IPC handle (milliseconds on a GPU): transports run it off their event loop."""
        self.shm.cuda.register(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    def cuda_shm_unregister(self, name: str) -> pb.CudaSharedMemoryUnregisterResponse:
        self.shm.cuda.unregister(name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # ---- model control (gRPC and HTTP both call these) ----------------------------------

    def load_model(self, name: str, parameters: dict[str, object]) -> pb.RepositoryModelLoadResponse:
        """Blocks until the new version set serves (or failed); transports run it off their loop."""
        self.control.load(name, parameters)
        return pb.RepositoryModelLoadResponse()

    def unload_model(self, name: str, parameters: dict[str, object]) -> pb.RepositoryModelUnloadResponse:
        """Blocks until in-flight requests finished (bounded by --model-unload-timeout-secs)."""
        self.control.unload(name, parameters)
        return pb.RepositoryModelUnloadResponse()

    def repository_model_load(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        """RepositoryModelLoad / POST v2/repository/models/{m}/load, from the wire message (blocks)."""
        return self.load_model(request.model_name, repository_parameters(request))

    def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        """RepositoryModelUnload / POST v2/repository/models/{m}/unload, from the wire message (blocks)."""
        return self.unload_model(request.model_name, repository_parameters(request))

    # ---- inference ---------------------------------------------------------------

    def prepare(self, request: pb.ModelInferRequest, time_remaining: float | None = None) -> InferRequest:
        """Resolve the model and check and decode the request (raises ServerError).

        Args:
            request: the wire request.
            time_remaining: seconds left of the call's gRPC deadline, if it has one.
        """
        if isinstance(request, MalformedMessage):  # a stream's message that did not parse
            raise InvalidArgumentError(request.reason)
        arrival = time.monotonic_ns()
        mv = self.registry.resolve(request.model_name, request.model_version)
        guard = mv.input_guard
        if guard is not None:  # text models: cap the payload before decoding it
            guard.before(mv.name, request)
        prepared = decode_request(mv, request, arrival, self.max_request_bytes, self.shm)
        prepared.version_named = bool(request.model_version)
        if guard is not None:
            guard.after(mv.name, prepared.inputs)
        if time_remaining is not None:
            prepared.deadline_ns = arrival + int(time_remaining * 1e9)
        return prepared

    def submit(self, request: InferRequest) -> None:
        """Queue a prepared request (or answer it from the response cache); its sink is told when done.

        A rollout may retire the version a "latest" request resolved to between
        ``prepare`` and here: the request then goes to the version now serving
        when that one takes the same inputs (zero failed requests in a switch).
        """
        scheduler = request.model.scheduler
        if scheduler is None:
            raise UnavailableError(f"model '{request.model.name}' is not ready")
        try:
            self.registry.submit(request)
        except RetiredError as retired:
            if request.version_named:
                raise
            try:
                successor = self.registry.resolve(request.model.name)
            except ServerError:  # unloaded, not replaced: the request fails as retired (UNAVAILABLE)
                raise retired from None
            if successor is request.model or (successor.inputs, successor.outputs) != (
                request.model.inputs, request.model.outputs
            ):
                raise
            if successor.scheduler is None:
                raise
            request.model = successor
            self.registry.submit(request)

    def cancel(self, request: InferRequest) -> bool:
        """Drop a queued request whose client went away; False when it is already running."""
        scheduler = request.model.scheduler
        return scheduler is not None and scheduler.cancel(request)
