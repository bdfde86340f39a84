"""A tiny real gRPC server for bench tests: a v2 model that answers at once and can fail on purpose.

Not a mock of tensorgate: a grpc.aio servicer implementing ServerMetadata, ModelMetadata, ModelConfig,
ModelInfer and ModelStreamInfer for one model `toy` (INPUT0 FP32 [-1, 4] -> OUTPUT0, max_batch_size 8),
on its own event loop in a background thread. With `fail_every=2` every other inference is refused
with UNAVAILABLE (on a stream: an error_message).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.clients.pb import model_config_pb2 as mc

FAIL_MESSAGE = "toy server refuses every other request"


class ToyServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, fail_every: int, extensions: tuple[str, ...]) -> None:
        self.fail_every = fail_every
        self.extensions = extensions
        self.calls = 0
        self.regions: dict[str, tuple[str, int]] = {}  # name -> (key, byte_size)
        self.shm_inputs_read = 0
        self.shm_outputs_written = 0
        self.raw_input_bytes = 0

    def _fails(self) -> bool:
        self.calls += 1
        return self.fail_every > 0 and self.calls % self.fail_every == 0

    @staticmethod
    def _answer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        rows = request.inputs[0].shape[0] if request.inputs else 1
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name="OUTPUT0", datatype="FP32", shape=[rows, 4])],
            raw_output_contents=[bytes(16 * rows)])

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="toy", version="0", extensions=list(self.extensions))

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        if request.name != "toy":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name="toy", versions=["1"], platform="toy",
                                        inputs=[tensor(name="INPUT0", datatype="FP32", shape=[-1, 4])],
                                        outputs=[tensor(name="OUTPUT0", datatype="FP32", shape=[-1, 4])])

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        config = mc.ModelConfig(
            name="toy", max_batch_size=8,
            input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[4])],
            output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[4])])
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        if self._fails():
            await context.abort(grpc.StatusCode.UNAVAILABLE, FAIL_MESSAGE)
        self.raw_input_bytes += sum(len(raw) for raw in request.raw_input_contents)
        for tensor in [*request.inputs, *request.outputs]:
            params = tensor.parameters
            if "shared_memory_region" not in params:
                continue
            region = params["shared_memory_region"].string_param
            if region not in self.regions:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no region {region!r}")
            key, size = self.regions[region]
            end = params["shared_memory_offset"].int64_param + params["shared_memory_byte_size"].int64_param
            if end > size:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{tensor.name} beyond region {region!r}")
            if Path("/dev/shm", key.lstrip("/")).stat().st_size < end:  # POSIX shm objects live there on Linux
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"shm object {key!r} too small")
            if isinstance(tensor, pb.ModelInferRequest.InferInputTensor):
                self.shm_inputs_read += 1
            else:
                self.shm_outputs_written += 1
        return self._answer(request)

    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                         context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        self.regions[request.name] = (request.key, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                           context: Any) -> pb.SystemSharedMemoryUnregisterResponse:
        self.regions.pop(request.name, None)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: Any) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in requests:
            if self._fails():
                yield pb.ModelStreamInferResponse(error_message=FAIL_MESSAGE)
            else:
                yield pb.ModelStreamInferResponse(infer_response=self._answer(request))


class ToyServer:
    """The servicer on a loopback port, served from a background thread's event loop."""

    def __init__(self, fail_every: int = 0, extensions: tuple[str, ...] = ()) -> None:
        self.servicer = ToyServicer(fail_every, extensions)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="toy-server")
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    def start(self) -> ToyServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        assert self._server is not None
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def toy_server(fail_every: int = 0, extensions: tuple[str, ...] = ()) -> Iterator[ToyServer]:
    server = ToyServer(fail_every, extensions).start()
    try:
        yield server
    finally:
        server.stop()


#: a measurement short enough for tests: 0.2 s warm-up, windows of 0.3 s, stop after three
QUICK = ["--warmup-s", "0.2", "--window-ms", "300", "--max-windows", "3", "--stability-percentage", "100", "--quiet"]
