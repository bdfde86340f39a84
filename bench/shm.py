"""--shared-memory system: tensors travel through POSIX shared memory instead of the gRPC message.

The system shared-memory extension (spec/protocol.md 1.5): bench writes every distinct request's inputs
once into one region, registers it (SystemSharedMemoryRegister, key "/<name>"), and each request names
region, offset and byte size in the input's parameters instead of carrying raw bytes. Outputs go to a
second region when every output's size is known (fixed dims, not BYTES); otherwise they come back in the
response. Regions are unregistered and unlinked when the run ends. Used only when the server lists
``system_shared_memory`` among its extensions.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory

import grpc

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

__all__ = ["EXTENSION", "ShmPlan"]

EXTENSION = "system_shared_memory"
_ALIGN = 64


def _set(params: object, region: str, offset: int, size: int) -> None:
    params["shared_memory_region"].string_param = region  # type: ignore[index]
    params["shared_memory_byte_size"].int64_param = size  # type: ignore[index]
    params["shared_memory_offset"].int64_param = offset  # type: ignore[index]


class ShmPlan:
    """Lays out inputs (and outputs) while requests are built; `create` then makes and registers regions."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}_{secrets.token_hex(4)}"
        self.input_region = f"tg_bench_in_{tag}"
        self.output_region = f"tg_bench_out_{tag}"
        self._inputs = bytearray()
        self._output_size = 0
        self._segments: list[shared_memory.SharedMemory] = []
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

    def _segment(self, name: str, size: int) -> shared_memory.SharedMemory:
        segment = shared_memory.SharedMemory(name=name, create=True, size=max(size, 1))
        self._segments.append(segment)
        return segment

    async def create(self, url: str) -> None:
        """Create the regions and register them with the server.

        Raises:
            grpc.aio.AioRpcError: the server refused a registration.
        """
        regions = [(self.input_region, len(self._inputs))]
        if self._output_size:
            regions.append((self.output_region, self._output_size))
        segment = self._segment(self.input_region, len(self._inputs))
        assert segment.buf is not None
        segment.buf[: len(self._inputs)] = self._inputs
        if self._output_size:
            self._segment(self.output_region, self._output_size)
        async with grpc.aio.insecure_channel(url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for name, size in regions:
                await stub.SystemSharedMemoryRegister(
                    pb.SystemSharedMemoryRegisterRequest(name=name, key=f"/{name}", offset=0, byte_size=max(size, 1)),
                    timeout=30)
                self._registered.append(name)

    async def close(self, url: str) -> None:
        """Unregister (best effort: the server may be gone) and unlink the regions."""
        if self._registered:
            async with grpc.aio.insecure_channel(url) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for name in self._registered:
                    try:
                        await stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=name),
                                                                timeout=10)
                    except grpc.aio.AioRpcError:
                        pass
        self._registered = []
        for segment in self._segments:
            segment.close()
            segment.unlink()
        self._segments = []
