"""tensorgate bench --shared-memory cuda: refused clearly without a GPU; its regions work and are freed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cuda_support import GPU_RUNTIME, HostCudaRuntime

from support import RunningServer
from tensorgate.bench.cli import main as bench_main
from tensorgate.bench.inputs import build_requests, discover_model
from tensorgate.bench.shm import CudaShmPlan
from tensorgate.clients import AsyncInferenceClient
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.shm_store import SharedMemory


@pytest.mark.skipif(GPU_RUNTIME is not None, reason="this host has a usable GPU")
def test_cuda_is_refused_on_a_host_without_a_gpu(server: RunningServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(["--url", server.url, "--model", "simple", "--shared-memory", "cuda",
                       "--json", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--shared-memory cuda needs a GPU on this host" in err and "no usable GPU" in err


@pytest.fixture
def host_cuda(test_repository: Path) -> Iterator[tuple[RunningServer, HostCudaRuntime]]:
    runtime = HostCudaRuntime()
    handle = RunningServer(test_repository, allow_client_shm=True)
    handle.server.plane.shm = SharedMemory(True, cuda_loader=lambda: (runtime, ""))
    handle.start()
    yield handle, runtime
    handle.stop()


def test_cuda_plan_registers_serves_and_frees(host_cuda: tuple[RunningServer, HostCudaRuntime]) -> None:
    server, runtime = host_cuda

    async def run() -> tuple[bytes, CudaShmPlan]:
        async with AsyncInferenceClient(server.url) as client:
            model = await discover_model(client, "simple")
        plan = CudaShmPlan(runtime, device_id=0)
        built = build_requests(model, batch_size=2, data="zero", shm=plan)
        await plan.create(server.url)
        return built[0].payload, plan

    payload, plan = asyncio.run(run())
    request = pb.ModelInferRequest.FromString(payload)
    assert not request.raw_input_contents  # the tensors travel in device memory
    with server.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        regions = stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
        assert set(regions) == {plan.input_region, plan.output_region}
        response = stub.ModelInfer(request)
        assert list(response.raw_output_contents) == [b"", b""]  # both outputs went to the device
        asyncio.run(plan.close(server.url))
        assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
        code = None
        try:
            stub.ModelInfer(request)
        except grpc.RpcError as exc:
            code = exc.code()
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # the regions are gone
    assert not runtime.open_handles and runtime.allocated() == 0  # closed by the server, freed by bench
