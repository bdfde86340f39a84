"""System shared memory (Triton's extension): registration, inputs and outputs by region, bounds, lifetime."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest

from support import RunningServer
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
NBYTES = A.nbytes  # 64


@pytest.fixture(scope="module", params=["aio", "thread"])
def shm_server(request: pytest.FixtureRequest, test_repository: Path) -> Iterator[RunningServer]:
    handle = RunningServer(test_repository, allow_client_shm=True, grpc_flavor=request.param).start()
    yield handle
    handle.stop()


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    seg = shared_memory.SharedMemory(create=True, size=4096)
    yield seg
    seg.close()
    seg.unlink()


def _stub(server: RunningServer) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = server.channel()
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _window(params: object, region: str, offset: int, size: int) -> None:
    params["shared_memory_region"].string_param = region  # type: ignore[index]
    params["shared_memory_byte_size"].int64_param = size  # type: ignore[index]
    params["shared_memory_offset"].int64_param = offset  # type: ignore[index]


def _request(region: str | None, out_offset: int = 128, out_size: int = NBYTES,
             in_size: int = NBYTES) -> pb.ModelInferRequest:
    """INPUT0 at 0 and INPUT1 at 64 of `region` (or raw when None); OUTPUT0 at out_offset, OUTPUT1 raw."""
    request = pb.ModelInferRequest(model_name="simple")
    for i, name in enumerate(("INPUT0", "INPUT1")):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        if region is None:
            request.raw_input_contents.append((A if i == 0 else B).tobytes())
        else:
            _window(tensor.parameters, region, i * NBYTES, in_size)
    out0 = request.outputs.add(name="OUTPUT0")
    if region is not None:
        _window(out0.parameters, region, out_offset, out_size)
    request.outputs.add(name="OUTPUT1")
    return request


def _fill(seg: shared_memory.SharedMemory) -> None:
    seg.buf[:NBYTES] = A.tobytes()
    seg.buf[NBYTES:2 * NBYTES] = B.tobytes()


def test_inputs_and_outputs_travel_through_a_region(shm_server: RunningServer,
                                                    segment: shared_memory.SharedMemory) -> None:
    _fill(segment)
    channel, stub = _stub(shm_server)
    with channel:
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name="r", key="/" + segment.name, offset=0, byte_size=segment.size))
        status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="r"))
        assert status.regions["r"].key == "/" + segment.name and status.regions["r"].byte_size == segment.size
        response = stub.ModelInfer(_request("r"))
        assert response.raw_output_contents[0] == b""  # OUTPUT0 went to the region, its entry stays empty
        got = np.frombuffer(bytes(segment.buf[128:128 + NBYTES]), dtype=np.int32).reshape(1, 16)
        np.testing.assert_array_equal(got, A + B)
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], np.int32).reshape(1, 16), A - B)
        # the same answer as over the wire
        wire = stub.ModelInfer(_request(None))
        assert np.frombuffer(wire.raw_output_contents[0], np.int32).tobytes() == got.tobytes()
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="r"))
        assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions


def _code(fn: object, request: object) -> tuple[grpc.StatusCode, str]:
    try:
        fn(request)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("key", ["/../etc/passwd", "/a/b", "etc_no_slash", "/", "//x", "/..",
                                 "/tensorgate_no_such_object", "/x\nforged log line"])
def test_keys_that_are_not_shm_objects_are_refused(shm_server: RunningServer, key: str) -> None:
    channel, stub = _stub(shm_server)
    with channel:
        code, _ = _code(stub.SystemSharedMemoryRegister,
                        pb.SystemSharedMemoryRegisterRequest(name="bad", key=key, offset=0, byte_size=64))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions


def test_a_symlink_in_dev_shm_is_not_followed(shm_server: RunningServer, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"s" * 4096)
    link = Path("/dev/shm") / f"tensorgate_test_link_{os.getpid()}"
    link.symlink_to(target)
    try:
        channel, stub = _stub(shm_server)
        with channel:
            code, _ = _code(stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(
                name="link", key="/" + link.name, offset=0, byte_size=64))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        link.unlink()


def test_bounds_and_names_are_checked(shm_server: RunningServer, segment: shared_memory.SharedMemory) -> None:
    _fill(segment)
    key = "/" + segment.name
    channel, stub = _stub(shm_server)
    with channel:
        register = stub.SystemSharedMemoryRegister
        assert _code(register, pb.SystemSharedMemoryRegisterRequest(
            name="big", key=key, offset=0, byte_size=segment.size + 1))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(register, pb.SystemSharedMemoryRegisterRequest(
            name="past", key=key, offset=4000, byte_size=200))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(register, pb.SystemSharedMemoryRegisterRequest(
            name="zero", key=key, offset=0, byte_size=0))[0] == grpc.StatusCode.INVALID_ARGUMENT
        register(pb.SystemSharedMemoryRegisterRequest(name="small", key=key, offset=0, byte_size=160))
        try:
            assert _code(register, pb.SystemSharedMemoryRegisterRequest(
                name="small", key=key, offset=0, byte_size=64))[0] == grpc.StatusCode.ALREADY_EXISTS
            infer = stub.ModelInfer
            # OUTPUT0 at 128 needs 64 bytes, the region ends at 160
            code, message = _code(infer, _request("small"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the region" in message
            # a window that does not match the tensor's size is refused before anything is read
            code, message = _code(infer, _request("small", out_offset=96, in_size=60))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in message
            code, message = _code(infer, _request("nosuchregion"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "nosuchregion" in message
            assert _code(stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest(
                name="nosuchregion"))[0] == grpc.StatusCode.NOT_FOUND
            # an output region too small for the output
            code, message = _code(infer, _request("small", out_offset=128, out_size=16))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            # an unknown name unregisters nothing and is not an error (Triton's rule)
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="nosuchregion"))
            assert stub.ServerLive(pb.ServerLiveRequest()).live
        finally:
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())


def _mapped(name: str) -> bool:
    return name in Path("/proc/self/maps").read_text()  # the in-process server shares this process


def test_nothing_stays_mapped_after_unregister(shm_server: RunningServer,
                                                segment: shared_memory.SharedMemory) -> None:
    key = "/" + segment.name
    channel, stub = _stub(shm_server)
    with channel:
        for i in range(3):
            stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                name=f"m{i}", key=key, offset=0, byte_size=segment.size))
        before = Path("/proc/self/maps").read_text().count(segment.name)
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())  # all
        after = Path("/proc/self/maps").read_text().count(segment.name)
    assert before - after == 3  # the test's own mapping of the segment stays


def test_unregister_while_requests_use_the_region(shm_server: RunningServer,
                                                  segment: shared_memory.SharedMemory) -> None:
    _fill(segment)
    key = "/" + segment.name
    codes: dict[grpc.StatusCode, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        channel, stub = _stub(shm_server)
        with channel:
            while not stop.is_set():
                code, _ = _code(stub.ModelInfer, _request("churn"))
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    channel, stub = _stub(shm_server)
    with channel:
        for _ in range(40):
            stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                name="churn", key=key, offset=0, byte_size=segment.size))
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="churn"))
        stop.set()
        for t in threads:
            t.join(30)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert sum(codes.values()) > 0


def test_regions_are_off_by_default(server: RunningServer, segment: shared_memory.SharedMemory) -> None:
    channel, stub = _stub(server)
    with channel:
        code, message = _code(stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(
            name="r", key="/" + segment.name, offset=0, byte_size=64))
        assert code == grpc.StatusCode.UNAVAILABLE and "--allow-client-shm true" in message
        code, _ = _code(stub.ModelInfer, _request("r"))
        assert code == grpc.StatusCode.UNAVAILABLE


def test_bench_shm_compare_drives_both_paths(tmp_path: Path) -> None:
    from tensorgate.bench.shm_compare import _window, build_repository

    repo = build_repository(tmp_path / "repo")
    handle = RunningServer(repo, allow_client_shm=True).start()
    try:
        for shm in ("none", "system"):
            result = _window(handle.url, "image", 1, shm, 300, tmp_path / f"{shm}.json")
            assert result["throughput_infer_per_sec"] > 0 and result["errors"] == 0
    finally:
        handle.stop()
