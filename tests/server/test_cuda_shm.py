"""CUDA shared memory (Triton's cuda_shared_memory extension): the no-GPU answers for real, registration,
bounds and lifetime over host memory standing in for the device, and a round trip on a real GPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from cuda_support import GPU_REASON, GPU_RUNTIME, HostCudaRuntime

from support import RunningServer
from tensorgate.clients.cuda_shm import CudaRegion
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.shm_store import SharedMemory

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
NBYTES = A.nbytes  # 64
HANDLE = bytes(range(64))  # the right size, opens nothing


def _stub(server: RunningServer) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = server.channel()
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _code(fn: object, request: object) -> tuple[grpc.StatusCode, str]:
    try:
        fn(request)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _window(params: object, region: str, offset: int, size: int) -> None:
    params["shared_memory_region"].string_param = region  # type: ignore[index]
    params["shared_memory_byte_size"].int64_param = size  # type: ignore[index]
    params["shared_memory_offset"].int64_param = offset  # type: ignore[index]


def _request(region: str, out_offset: int = 128) -> pb.ModelInferRequest:
    """INPUT0 at 0 and INPUT1 at 64 of `region`; OUTPUT0 at out_offset of it, OUTPUT1 in the response."""
    request = pb.ModelInferRequest(model_name="simple")
    for i, name in enumerate(("INPUT0", "INPUT1")):
        _window(request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).parameters, region, i * NBYTES, NBYTES)
    _window(request.outputs.add(name="OUTPUT0").parameters, region, out_offset, NBYTES)
    request.outputs.add(name="OUTPUT1")
    return request


def _register(name: str, handle: bytes, byte_size: int, device_id: int = 0) -> pb.CudaSharedMemoryRegisterRequest:
    return pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=handle, device_id=device_id, byte_size=byte_size)


# ---- no GPU here: the answers Triton built without GPUs gives, for real -----------------------------------------

NO_GPU = pytest.mark.skipif(GPU_RUNTIME is not None, reason="this host has a usable GPU")


@pytest.fixture(scope="module")
def shm_server(test_repository: Path) -> Iterator[RunningServer]:
    handle = RunningServer(test_repository, allow_client_shm=True).start()
    yield handle
    handle.stop()


@NO_GPU
def test_without_a_gpu_registration_is_refused_and_nothing_is_listed(shm_server: RunningServer) -> None:
    channel, stub = _stub(shm_server)
    with channel:
        assert "cuda_shared_memory" not in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        code, message = _code(stub.CudaSharedMemoryRegister, _register("r", HANDLE, 256))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "failed to register CUDA shared memory region: 'r', GPUs not supported" in message
        assert "no usable GPU" in message or "not installed" in message
        assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
        assert _code(stub.CudaSharedMemoryStatus, pb.CudaSharedMemoryStatusRequest(name="r"))[0] == \
            grpc.StatusCode.NOT_FOUND
        stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest())  # all: nothing to do
        stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="r"))
        code, message = _code(stub.ModelInfer, _request("r"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'r'" in message
        assert stub.ServerLive(pb.ServerLiveRequest()).live


@NO_GPU
def test_without_a_gpu_rest_answers_the_same(shm_server: RunningServer) -> None:
    import base64

    import httpx

    with httpx.Client(base_url=shm_server.http_url, timeout=30) as http:
        body = {"raw_handle": {"b64": base64.b64encode(HANDLE).decode()}, "device_id": 0, "byte_size": 256}
        r = http.post("/v2/cudasharedmemory/region/r/register", json=body)
        assert r.status_code == 400 and "GPUs not supported" in r.json()["error"]
        r = http.post("/v2/cudasharedmemory/region/r/register", json={**body, "raw_handle": {"b64": "!!"}})
        assert r.status_code == 400 and "base64" in r.json()["error"]
        assert http.get("/v2/cudasharedmemory/status").json() == []
        assert http.post("/v2/cudasharedmemory/unregister").status_code == 200


def test_requests_are_checked_before_cuda_is_asked(shm_server: RunningServer) -> None:
    channel, stub = _stub(shm_server)
    with channel:
        for request, words in (
            (_register("r", HANDLE[:63], 256), "64 bytes"),
            (_register("r", HANDLE + b"x", 256), "64 bytes"),
            (_register("r", HANDLE, 0), "byte_size must be > 0"),
            (_register("r", HANDLE, 1 << 50), "byte_size must be > 0"),
            (_register("bad/name", HANDLE, 256), "not valid"),
            (_register("x\nforged log line", HANDLE, 256), "not valid"),
        ):
            code, message = _code(stub.CudaSharedMemoryRegister, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in message, message
        assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions


def test_cuda_regions_are_off_by_default(server: RunningServer) -> None:
    channel, stub = _stub(server)
    with channel:
        code, message = _code(stub.CudaSharedMemoryRegister, _register("r", HANDLE, 256))
        assert code == grpc.StatusCode.UNAVAILABLE and "--allow-client-shm true" in message


def test_without_cuda_python_the_reason_says_so() -> None:
    script = ("import sys; sys.modules['cuda'] = None\n"
              "from tensorgate.clients.cuda_runtime import load_runtime\n"
              "print(load_runtime())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "(None, 'cuda-python is not installed" in done.stdout


# ---- registration, bounds and lifetime over host memory standing in for the device -------------------------------

@pytest.fixture(scope="module", params=["aio", "thread"])
def host_cuda(request: pytest.FixtureRequest,
              test_repository: Path) -> Iterator[tuple[RunningServer, HostCudaRuntime]]:
    runtime = HostCudaRuntime(devices=2)
    handle = RunningServer(test_repository, allow_client_shm=True, grpc_flavor=request.param)
    handle.server.plane.shm = SharedMemory(True, cuda_loader=lambda: (runtime, ""))
    handle.start()
    yield handle, runtime
    handle.stop()
    assert not runtime.open_handles, "a CUDA IPC handle stayed open after the server stopped"


@pytest.fixture
def region(host_cuda: tuple[RunningServer, HostCudaRuntime]) -> Iterator[CudaRegion]:
    made = CudaRegion.create(256, device_id=1, runtime=host_cuda[1])
    made.write(A.tobytes())
    made.write(B.tobytes(), offset=NBYTES)
    yield made
    made.destroy()


def test_inputs_and_outputs_travel_through_a_cuda_region(host_cuda: tuple[RunningServer, HostCudaRuntime],
                                                         region: CudaRegion) -> None:
    server, runtime = host_cuda
    channel, stub = _stub(server)
    with channel:
        assert "cuda_shared_memory" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        stub.CudaSharedMemoryRegister(_register("g", region.raw_handle, 256, device_id=1))
        try:
            status = stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(name="g")).regions["g"]
            assert (status.name, status.device_id, status.byte_size) == ("g", 1, 256)
            response = stub.ModelInfer(_request("g"))
            assert response.raw_output_contents[0] == b""  # OUTPUT0 went to the device, its entry stays empty
            got = np.frombuffer(region.read(NBYTES, offset=128), dtype=np.int32).reshape(1, 16)
            np.testing.assert_array_equal(got, A + B)
            np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], np.int32).reshape(1, 16),
                                          A - B)
            assert len(runtime.open_handles) == 1
        finally:
            stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="g"))
        assert not runtime.open_handles  # closed at unregister
        assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions


def test_registration_checks_against_the_device_and_the_allocation(
        host_cuda: tuple[RunningServer, HostCudaRuntime], region: CudaRegion) -> None:
    server, runtime = host_cuda
    channel, stub = _stub(server)
    register = stub.CudaSharedMemoryRegister
    with channel:
        for request, words in (
            (_register("g", region.raw_handle, 256, device_id=2), "device_id 2 does not exist"),
            (_register("g", region.raw_handle, 256, device_id=-1), "device_id -1 does not exist"),
            (_register("g", region.raw_handle, 257, device_id=1), "larger than the allocation"),
            (_register("g", HANDLE, 64, device_id=1), "failed to open CUDA IPC handle"),
        ):
            code, message = _code(register, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in message, message
        assert not runtime.open_handles  # the oversized claim's handle was closed again
        register(_register("g", region.raw_handle, 192, device_id=1))  # a window of the allocation is fine
        try:
            assert _code(register, _register("g", region.raw_handle, 64, device_id=1))[0] == \
                grpc.StatusCode.ALREADY_EXISTS
            code, message = _code(stub.ModelInfer, _request("g", out_offset=160))  # 160 + 64 > 192
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the region" in message
            code, message = _code(stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest(name="g"))
            assert code == grpc.StatusCode.NOT_FOUND and "registered as CUDA shared memory" in message
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="g"))  # not its kind
            assert "g" in stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
        finally:
            stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest())
        assert not runtime.open_handles


def test_system_and_cuda_regions_share_one_namespace(host_cuda: tuple[RunningServer, HostCudaRuntime],
                                                      region: CudaRegion) -> None:
    server, _ = host_cuda
    segment = shared_memory.SharedMemory(create=True, size=4096)
    channel, stub = _stub(server)
    try:
        with channel:
            stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                name="both", key="/" + segment.name, offset=0, byte_size=4096))
            code, _ = _code(stub.CudaSharedMemoryRegister, _register("both", region.raw_handle, 256, device_id=1))
            assert code == grpc.StatusCode.ALREADY_EXISTS
            code, message = _code(stub.CudaSharedMemoryStatus, pb.CudaSharedMemoryStatusRequest(name="both"))
            assert code == grpc.StatusCode.NOT_FOUND and "registered as system shared memory" in message
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="both"))
            stub.CudaSharedMemoryRegister(_register("both", region.raw_handle, 256, device_id=1))  # free again
            code, _ = _code(stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(
                name="both", key="/" + segment.name, offset=0, byte_size=4096))
            assert code == grpc.StatusCode.ALREADY_EXISTS
            stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="both"))
    finally:
        segment.close()
        segment.unlink()


def test_a_failing_copy_answers_internal_and_the_server_keeps_serving(
        host_cuda: tuple[RunningServer, HostCudaRuntime]) -> None:
    server, runtime = host_cuda
    gone = CudaRegion.create(256, device_id=0, runtime=runtime)
    channel, stub = _stub(server)
    with channel:
        stub.CudaSharedMemoryRegister(_register("gone", gone.raw_handle, 256))
        try:
            gone.destroy()  # the client frees the memory behind the server's back: the copy fails in CUDA
            code, message = _code(stub.ModelInfer, _request("gone"))
            assert code == grpc.StatusCode.INTERNAL and "cudaMemcpy" not in message
            assert stub.ServerLive(pb.ServerLiveRequest()).live
        finally:
            stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="gone"))
    assert not runtime.open_handles


def test_unregister_while_requests_use_the_region(host_cuda: tuple[RunningServer, HostCudaRuntime],
                                                  region: CudaRegion) -> None:
    server, runtime = host_cuda
    codes: dict[grpc.StatusCode, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        channel, stub = _stub(server)
        with channel:
            while not stop.is_set():
                code, _ = _code(stub.ModelInfer, _request("churn"))
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    channel, stub = _stub(server)
    with channel:
        for _ in range(40):
            stub.CudaSharedMemoryRegister(_register("churn", region.raw_handle, 256, device_id=1))
            stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="churn"))
        stop.set()
        for t in threads:
            t.join(30)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert sum(codes.values()) > 0
    assert not runtime.open_handles


# ---- on a GPU: device memory from another process -----------------------------------------------------------------

_OWNER = textwrap.dedent(r"""
    # Owns device memory the way a client does: cudaMalloc, cudaIpcGetMemHandle, then answers commands on stdin.
    import ctypes, sys
    import numpy as np
    from cuda.bindings import runtime as rt

    def ok(result):
        err, *values = result
        assert int(err) == 0, result
        return values[0] if values else None

    ok(rt.cudaSetDevice(0))
    ptr = ok(rt.cudaMalloc(256))
    host = np.zeros(64, np.int32)
    host[:16] = np.arange(16)
    host[16:32] = 3
    ok(rt.cudaMemcpy(ptr, host.ctypes.data, 256, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
    handle = ok(rt.cudaIpcGetMemHandle(ptr))
    print(bytes((ctypes.c_char * 64).from_address(handle.getPtr())).hex(), flush=True)
    for line in sys.stdin:
        if line.strip() == "read":
            ok(rt.cudaMemcpy(host.ctypes.data, ptr, 256, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
            print(host.tobytes().hex(), flush=True)
        else:
            break
    ok(rt.cudaFree(ptr))
""")


@pytest.mark.gpu
@pytest.mark.skipif(GPU_RUNTIME is None, reason=f"needs a GPU and cuda-python: {GPU_REASON}")
def test_round_trip_through_device_memory_of_another_process(test_repository: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert owner.stdin is not None and owner.stdout is not None
    handle = RunningServer(test_repository, allow_client_shm=True).start()
    try:
        raw = bytes.fromhex(owner.stdout.readline().strip())
        channel, stub = _stub(handle)
        with channel:
            assert "cuda_shared_memory" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
            stub.CudaSharedMemoryRegister(_register("gpu", raw, 256))
            response = stub.ModelInfer(_request("gpu"))
            np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], np.int32).reshape(1, 16),
                                          A - B)
            owner.stdin.write("read\n")
            owner.stdin.flush()
            device = np.frombuffer(bytes.fromhex(owner.stdout.readline().strip()), np.int32)
            np.testing.assert_array_equal(device[32:48].reshape(1, 16), A + B)
            stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest())
            assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
            code, message = _code(stub.CudaSharedMemoryRegister, _register("big", raw, 1 << 30))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "larger than the allocation" in message
            assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
    finally:
        handle.stop()
        owner.stdin.write("exit\n")
        owner.stdin.flush()
        assert owner.wait(30) == 0
