"""--shared-memory system|cuda: tensors travel through shared memory instead of the gRPC message.

The shared-memory extensions (spec/protocol.md 1.5): bench writes every distinct request's inputs once into
one region, registers it, and each request names region, offset and byte size in the input's parameters
instead of carrying raw bytes. Outputs go to a second region when every output's size is known (fixed dims,
not BYTES); otherwise they come back in the response. ``system``: POSIX shared memory
(SystemSharedMemoryRegister, key "/<name>"), unlinked when the run ends. ``cuda``: device memory on GPU 0
exported as a CUDA IPC handle (CudaSharedMemoryRegister), through the same cuda-python seam the server
uses, freed when the run ends. Used only when the server lists the extension.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory
from typing import Any

import grpc

from tensorgate.clients.cuda_runtime import CudaRuntime
from tensorgate.clients.cuda_shm import CudaRegion
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

__all__ = ["EXTENSION", "CudaShmPlan", "RegionPlan", "ShmPlan"]

EXTENSION = "system_shared_memory"
_ALIGN = 64


def _set(params: object, region: str, offset: int, size: int) -> None:
    params["shared_memory_region"].string_param = region  # type: ignore[index]
    params["shared_memory_byte_size"].int64_param = size  # type: ignore[index]
    params["shared_memory_offset"].int64_param = offset  # type: ignore[index]


class RegionPlan:
    """Lays out inputs (and outputs) while requests are built; `create` then makes and registers the regions."""

    kind = ""  # the extension's prefix: system or cuda

    def __init__(self) -> None:
        tag = f"{os.getpid()}_{secrets.token_hex(4)}"
        self.input_region = f"tg_bench_in_{tag}"
        self.output_region = f"tg_bench_out_{tag}"
        self._inputs = bytearray()
        self._output_size = 0
        self._registered: list[str] = []

    def add_input(self, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> None:
        """Put one input's bytes in the input region and point the tensor at them."""
        offset = len(self._inputs)
        self._inputs += raw
        self._inputs += bytes(-len(self._inputs) % _ALIGN)
        _set(tensor.parameters, self.input_region, offset, len(raw))

    def add_outputs(self, request: pb.ModelInferRequest, outputs: list[tuple[str, int]]) -> None:
        """Ask for the outputs (name, bytes) in the output region, side by side; requests share the space."""
        offset = 0
        for name, size in outputs:
            _set(request.outputs.add(name=name).parameters, self.output_region, offset, size)
            offset += size + (-size % _ALIGN)
        self._output_size = max(self._output_size, offset)

    def _regions(self) -> list[tuple[str, int]]:
        """(name, bytes) of each region to make: the inputs', and the outputs' when any output goes there."""
        regions = [(self.input_region, max(len(self._inputs), 1))]
        if self._output_size:
            regions.append((self.output_region, self._output_size))
        return regions

    def _make(self) -> list[Any]:
        """Make the regions (inputs written) and return one registration request for each."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free what ``_make`` made; safe to call twice."""
        raise NotImplementedError

    async def create(self, url: str) -> None:
        """Make the regions and register them with the server.

        Raises:
            grpc.aio.AioRpcError: the server refused a registration.
            OSError, clients.cuda_runtime.CudaError: a region could not be made here.
        """
        requests = self._make()
        async with grpc.aio.insecure_channel(url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            register = stub.CudaSharedMemoryRegister if self.kind == "cuda" else stub.SystemSharedMemoryRegister
            for request in requests:
                await register(request, timeout=30)
                self._registered.append(request.name)

    async def close(self, url: str) -> None:
        """Unregister (best effort: the server may be gone), then free the regions."""
        if self._registered:
            async with grpc.aio.insecure_channel(url) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for name in self._registered:
                    try:
                        if self.kind == "cuda":
                            await stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name=name),
                                                                  timeout=10)
                        else:
                            await stub.SystemSharedMemoryUnregister(
                                pb.SystemSharedMemoryUnregisterRequest(name=name), timeout=10)
                    except grpc.aio.AioRpcError:
                        pass
        self._registered = []
        self._release()


class ShmPlan(RegionPlan):
    """--shared-memory system: POSIX shared-memory objects named after the regions."""

    kind = "system"

    def __init__(self) -> None:
        super().__init__()
        self._segments: list[shared_memory.SharedMemory] = []

    def _make(self) -> list[Any]:
        requests = []
        for name, size in self._regions():
            segment = shared_memory.SharedMemory(name=name, create=True, size=size)
            self._segments.append(segment)
            requests.append(pb.SystemSharedMemoryRegisterRequest(name=name, key=f"/{name}", offset=0, byte_size=size))
        buf = self._segments[0].buf
        assert buf is not None
        buf[: len(self._inputs)] = self._inputs
        return requests

    def _release(self) -> None:
        for segment in self._segments:
            segment.close()
            segment.unlink()
        self._segments = []


class CudaShmPlan(RegionPlan):
    """--shared-memory cuda: device memory on ``device_id``, exported as CUDA IPC handles.

    Args:
        runtime: the CUDA runtime (``clients.cuda_runtime.load_runtime()``'s; the caller checked there is one).
        device_id: the GPU the regions live on (the server opens them on the same ordinal).
    """

    kind = "cuda"

    def __init__(self, runtime: CudaRuntime, device_id: int = 0) -> None:
        super().__init__()
        self._runtime = runtime
        self._device = device_id
        self._allocations: list[CudaRegion] = []

    def _make(self) -> list[Any]:
        requests = []
        for name, size in self._regions():
            region = CudaRegion.create(size, self._device, self._runtime)
            self._allocations.append(region)
            requests.append(pb.CudaSharedMemoryRegisterRequest(
                name=name, raw_handle=region.raw_handle, device_id=self._device, byte_size=size))
        if self._inputs:
            self._allocations[0].write(bytes(self._inputs))
        return requests

    def _release(self) -> None:
        for region in self._allocations:
            region.destroy()
        self._allocations = []
