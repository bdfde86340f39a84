"""--engine-core process (issue 13 part 1): the engine core in its own process, tensors through shared memory.

A real server with a real core process: a killed core is restarted (its in-flight requests fail UNAVAILABLE
at once, later ones are served), a message naming a block outside the arena is refused by the core, nothing
stays mapped or named after a stop or a kill, oversized tensors take the inline path, and the flag is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from support import REPO_ROOT, RunningServer, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.server.core import protocol
from tensorgate.server.core.arena import Allocator, Arena, ArenaError
from tensorgate.server.core.client import EngineCoreClient
from tensorgate.server.core.protocol import SUBMIT, encode_submit, frame, read_submit
from tensorgate.server.demo.models import build_slow
from tensorgate.server.errors import InvalidArgumentError, UnavailableError
from tensorgate.server.request import InferRequest, RequestedOutput
from tensorgate.server.settings import ServerSettings

T = pb.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def core_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("core")
    build_slow(repo / "slow" / "1" / "model.onnx", size=1024, steps=8)
    (repo / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 4\ndynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n")
    write_model(repo, "simple", 'max_batch_size: 8\ndynamic_batching { }\n')
    return repo


def _slow(i: int) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="slow", id=f"r{i}", inputs=[T(name="INPUT0", datatype="FP32", shape=[1, 4])],
                                raw_input_contents=[np.full((1, 4), i, np.float32).tobytes()])


def _simple(value: int, rows: int = 1) -> pb.ModelInferRequest:
    data = np.full((rows, 16), value, np.int32).tobytes()
    return pb.ModelInferRequest(
        model_name="simple",
        inputs=[T(name="INPUT0", datatype="INT32", shape=[rows, 16]), T(name="INPUT1", datatype="INT32", shape=[rows, 16])],
        raw_input_contents=[data, data])


def _memfd_maps(pid: int, inodes: set[int] | None = None) -> list[str]:
    """The tensorgate arenas mapped in a process (only these inodes, when given: other servers of the
    session may have theirs)."""
    with open(f"/proc/{pid}/maps") as maps:
        lines = [line for line in maps if "memfd:tensorgate" in line]
    return [line for line in lines if inodes is None or int(line.split()[4]) in inodes]


@pytest.fixture(params=["loop", "thread"])
def process_server(core_repository: Path, request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """A server whose core's answers are read by the event loop (the default) or by a reader thread."""
    monkeypatch.setenv("TENSORGATE_CORE_READER", request.param)
    handle = RunningServer(core_repository, engine_core="process").start()
    assert handle.server.core is not None and handle.server.core.reader == request.param
    yield handle
    handle.stop()


def test_requests_run_in_the_core_process(process_server: RunningServer) -> None:
    core = process_server.server.core
    assert core is not None and core.pid and core.pid != os.getpid()
    stub = pb_grpc.GRPCInferenceServiceStub(process_server.channel())
    reply = stub.ModelInfer(_simple(3), timeout=30)
    out = np.frombuffer(reply.raw_output_contents[0], np.int32)
    assert (out == 6).all()
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple"), timeout=30).model_stats[0]
    assert stats.inference_stats.success.count == 1 and stats.execution_count == 1  # the core counted it
    # the engine is not in the front end: no ONNX Runtime session was created in this process's threads
    assert process_server.server.registry.resolve("simple").engine.__class__.__name__ == "RemoteEngine"


def test_killed_core_is_restarted_in_flight_fail_unavailable(process_server: RunningServer) -> None:
    core = process_server.server.core
    assert core is not None
    stub = pb_grpc.GRPCInferenceServiceStub(process_server.channel())
    stub.ModelInfer(_slow(0), timeout=60)  # warm
    old_pid = core.pid
    in_flight = [stub.ModelInfer.future(_slow(i), timeout=60) for i in range(1, 9)]
    time.sleep(0.3)  # queued and running in the core
    killed = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    codes = []
    for future in in_flight:
        error = future.exception(timeout=30)
        codes.append(grpc.StatusCode.OK if error is None else error.code())
    answered = time.monotonic() - killed
    assert grpc.StatusCode.UNAVAILABLE in codes, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert answered < 10, f"in-flight requests took {answered:.1f} s to fail"
    deadline = time.monotonic() + 120
    while True:  # the restarted core loads the models again, then serves
        try:
            reply = stub.ModelInfer(_simple(5), timeout=30)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert time.monotonic() < deadline, "the core was not restarted"
            time.sleep(0.2)
    assert (np.frombuffer(reply.raw_output_contents[0], np.int32) == 10).all()
    assert core.pid != old_pid and core.restarts == 1
    stub.ModelInfer(_slow(99), timeout=60)
    assert not os.path.exists(f"/proc/{old_pid}/status") or "zombie" in open(f"/proc/{old_pid}/status").read()


@pytest.fixture()
def client(core_repository: Path) -> Iterator[tuple[EngineCoreClient, object]]:
    core = EngineCoreClient(arena_bytes=1 << 16)
    core.start()
    mv = core.load_version("simple", 1, core_repository / "simple" / "1" / "model.onnx",
                           mc.ModelConfig(name="simple", max_batch_size=8), max_batch_size_given=True)
    assert mv.ready, mv.reason
    yield core, mv
    assert mv.scheduler is not None
    mv.scheduler.stop(5)
    core.stop()


class _Collect:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.requests: list[InferRequest] = []

    def deliver(self, requests: object) -> None:
        self.requests.extend(requests)  # type: ignore[call-overload]
        self.done.set()


def _core_request(mv: object, rows: int, value: int = 1) -> InferRequest:
    arrays = {name: np.full((rows, 16), value, np.int32) for name in ("INPUT0", "INPUT1")}
    r = InferRequest(mv, "x", arrays, [RequestedOutput("OUTPUT0", 0)], rows,  # type: ignore[arg-type]
                     tuple((n, a.shape[1:]) for n, a in arrays.items()), time.monotonic_ns())
    r.sink = _Collect()
    return r


def test_offset_outside_the_arena_is_refused_by_the_core(client: tuple[EngineCoreClient, object]) -> None:
    core, mv = client
    slot = mv.scheduler._slot  # type: ignore[attr-defined]
    request = _core_request(mv, 1)
    blocks: list[int] = []
    good = encode_submit(77, slot.handle, request, slot.inputs, slot.output_index, core.input_arena,
                         Allocator(core.input_arena.size), blocks)
    body = bytearray(good[5:])
    # the first tensor's offset sits after the fixed header and its index/dtype/rank (4 bytes)
    at = protocol._SUBMIT.size + 4
    body[at:at + 8] = (core.input_arena.size + 4096).to_bytes(8, "little", signed=True)
    with pytest.raises(ArenaError):
        read_submit(memoryview(bytes(body)), core.input_arena)  # the core's own check, here in-process
    core._inflight[77] = (request, [], slot)  # as submit() records it
    slot.pending += 1
    assert core._data is not None
    core._data.send(frame(SUBMIT, bytes(body)))
    assert request.sink.done.wait(10)  # type: ignore[union-attr]
    assert isinstance(request.error, InvalidArgumentError) and "outside the arena" in str(request.error)
    # the core kept serving
    ok = _core_request(mv, 2, 4)
    mv.scheduler.submit(ok)  # type: ignore[attr-defined]
    assert ok.sink.done.wait(10) and ok.error is None  # type: ignore[union-attr]
    assert (ok.outputs["OUTPUT0"] == 8).all()  # type: ignore[index]


def test_oversized_tensors_take_the_inline_path(client: tuple[EngineCoreClient, object]) -> None:
    _core, mv = client
    big = _core_request(mv, 8, 2)  # fits: 8 x 16 x 4 bytes per input
    mv.scheduler.submit(big)  # type: ignore[attr-defined]
    assert big.sink.done.wait(10) and big.error is None  # type: ignore[union-attr]
    # now an arena too small for anything: every tensor goes inline, nothing fails
    small = EngineCoreClient(arena_bytes=64)
    small.start()
    try:
        mv2 = small.load_version("simple", 1, Path(mv.path) / "1" / "model.onnx",  # type: ignore[attr-defined]
                                 mc.ModelConfig(name="simple", max_batch_size=8), max_batch_size_given=True)
        r = _core_request(mv2, 8, 3)
        mv2.scheduler.submit(r)  # type: ignore[union-attr]
        assert r.sink.done.wait(10) and r.error is None, r.error  # type: ignore[union-attr]
        assert (r.outputs["OUTPUT0"] == 6).all()  # type: ignore[index]
        mv2.scheduler.stop(5)  # type: ignore[union-attr]
    finally:
        small.stop()


def test_nothing_stays_mapped_after_stop_or_kill(core_repository: Path) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    core = EngineCoreClient()
    core.start()
    first = core.pid
    inodes = {os.fstat(core.input_arena.fd).st_ino, os.fstat(core.output_arena.fd).st_ino}
    assert len(_memfd_maps(first, inodes)) == 2 and len(_memfd_maps(os.getpid(), inodes)) == 2
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while core.pid == first or not core._up:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = core.pid
    core.stop()
    assert not _memfd_maps(os.getpid(), inodes), "the arenas are still mapped in the front end"
    assert core.process is not None and core.process.poll() is not None
    assert not os.path.exists(f"/proc/{second}/maps")
    # memfds have no name: nothing of ours in /dev/shm, even after a kill (others' tests may add theirs)
    assert not {n for n in set(os.listdir("/dev/shm")) - shm_before if "tensorgate-inputs" in n or "arena" in n}


def test_calls_after_stop_fail_unavailable() -> None:
    core = EngineCoreClient()
    core.start()
    core.stop()
    with pytest.raises(UnavailableError):
        core._call("ping")


def test_engine_core_flag_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="engine core 'gpu' is not one of inline, process"):
        ServerSettings(engine_core="gpu")
    monkeypatch.setenv("TENSORGATE_ENGINE_CORE", "Process")
    assert ServerSettings().engine_core == "process"
    monkeypatch.setenv("TENSORGATE_ENGINE_CORE", "bogus")
    with pytest.raises(ValueError, match="TENSORGATE_ENGINE_CORE"):
        ServerSettings()
    env = {k: v for k, v in os.environ.items() if k != "TENSORGATE_ENGINE_CORE"}
    for extra in (["--engine-core", "sideways"], ["--engine-core", "process", "--workers", "2"]):
        result = subprocess.run([sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", "0", *extra],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "--engine-core" in result.stderr


# ---- --frontends N: several front ends, one engine core ----------------------------------------------------

def _slow_request(mv: object, value: float) -> InferRequest:
    arrays = {"INPUT0": np.full((1, 4), value, np.float32)}
    r = InferRequest(mv, "s", arrays, [RequestedOutput("OUTPUT0", 0)], 1,  # type: ignore[arg-type]
                     (("INPUT0", (4,)),), time.monotonic_ns())
    r.sink = _Collect()
    return r


def test_two_front_ends_share_one_version_and_one_batch(core_repository: Path) -> None:
    owner = EngineCoreClient(listen=True)
    owner.start()
    second = EngineCoreClient(connect=owner.socket_path)
    try:
        assert oct(os.stat(os.path.dirname(owner.socket_path)).st_mode & 0o777) == "0o700"
        second.start()
        config = mc.ModelConfig(name="slow", max_batch_size=8)
        config.dynamic_batching.max_queue_delay_microseconds = 100_000
        config.instance_group.add(count=1)
        model_file = core_repository / "slow" / "1" / "model.onnx"
        versions = [c.load_version("slow", 1, model_file, config, max_batch_size_given=True) for c in (owner, second)]
        assert all(mv.ready for mv in versions)
        slots = [mv.scheduler._slot for mv in versions]  # type: ignore[union-attr]
        assert slots[0].handle == slots[1].handle  # one engine copy, one queue
        for _ in range(3):
            sent = [(i % 2, _slow_request(versions[i % 2], i)) for i in range(8)]
            for which, r in sent:
                versions[which].scheduler.submit(r)  # type: ignore[union-attr]
            for _, r in sent:
                assert r.sink.done.wait(60) and r.error is None, r.error  # type: ignore[union-attr]
                assert (r.outputs["OUTPUT0"] == r.inputs["INPUT0"]).all()  # type: ignore[index]
            starts: dict[int, set[int]] = {}
            for which, r in sent:
                starts.setdefault(r.compute_start_ns, set()).add(which)
            if any(len(fronts) == 2 for fronts in starts.values()):
                break
        else:
            pytest.fail(f"no batch held requests from both front ends: {starts}")
        # statistics are the core's: exact and the same at either front end
        a = versions[0].scheduler.statistics.to_pb("slow", "1")  # type: ignore[union-attr]
        b = versions[1].scheduler.statistics.to_pb("slow", "1")  # type: ignore[union-attr]
        assert a == b and a.inference_stats.success.count >= 8
        # the core stays up while one front end still holds the version
        versions[1].scheduler.stop(5)  # type: ignore[union-attr]
        last = _slow_request(versions[0], 7)
        versions[0].scheduler.submit(last)  # type: ignore[union-attr]
        assert last.sink.done.wait(60) and last.error is None  # type: ignore[union-attr]
        versions[0].scheduler.stop(5)  # type: ignore[union-attr]
    finally:
        second.stop()
        owner.stop()
    assert not os.path.exists(owner.socket_path)


def test_the_core_socket_is_private_to_the_user(core_repository: Path) -> None:
    owner = EngineCoreClient(listen=True)
    owner.start()
    try:
        # the socket lives in a folder only this user can enter; the core also checks the peer's uid
        folder = os.path.dirname(owner.socket_path)
        assert os.stat(folder).st_uid == os.getuid() and os.stat(folder).st_mode & 0o077 == 0
        stranger = EngineCoreClient(connect=os.path.join(folder, "missing.sock"))
        with pytest.raises(OSError):
            stranger.start()
        stranger.stop()
    finally:
        owner.stop()


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                cmdline = cmd.read().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append((int(entry), cmdline))
    return out


def test_serve_frontends_two_processes_one_core(core_repository: Path) -> None:
    from support import serve_subprocess

    with serve_subprocess(core_repository, "--frontends", "2", "--allow-http", "false") as (proc, port):
        kids = _children(proc.pid)
        cores = [pid for pid, cmd in kids if "tensorgate.server.core.engine" in cmd]
        fronts = [pid for pid, cmd in kids if "tensorgate.server serve" in cmd and "--core-socket" in cmd]
        assert len(cores) == 1 and len(fronts) == 1, kids
        assert _children(fronts[0]) == []  # the second front end has no engine core of its own
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]  # new connections: both fronts
        try:
            futures = [pb_grpc.GRPCInferenceServiceStub(c).ModelInfer.future(_simple(i), timeout=60)
                       for i, c in enumerate(channels) for _ in range(4)]
            for i, future in enumerate(futures):
                out = np.frombuffer(future.result().raw_output_contents[0], np.int32)
                assert (out == 2 * (i // 4)).all()
            counts = {pb_grpc.GRPCInferenceServiceStub(c).ModelStatistics(
                pb.ModelStatisticsRequest(name="simple"), timeout=30).model_stats[0].inference_stats.success.count
                for c in channels}
            assert counts == {32}, counts  # the core's count, the same whichever front end answers
        finally:
            for c in channels:
                c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for pid in (*cores, *fronts):
            assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_frontends_refuse_explicit_model_control(core_repository: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tensorgate.server", "serve", "--grpc-port", "0", "--frontends",
                             "2", "--model-control-mode", "explicit"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "--frontends N does not combine with --model-control-mode explicit" in result.stderr


def test_arenas_are_sealed_and_blocks_are_bounds_checked() -> None:
    arena = Arena.create(1 << 12, "tensorgate-test")
    try:
        with pytest.raises(OSError):
            os.ftruncate(arena.fd, 16)  # sealed: nobody can shrink it under the other side's mapping
        loose = os.memfd_create("tensorgate-unsealed")
        os.ftruncate(loose, 4096)
        with pytest.raises(ArenaError, match="sealed"):
            Arena.attach(loose)
        os.close(loose)
        for offset, nbytes in ((-1, 4), (4096, 1), (4000, 200), (0, -5)):
            with pytest.raises(ArenaError):
                arena.check(offset, nbytes)
        alloc = Allocator(1 << 12)
        blocks = [alloc.alloc(100) for _ in range(32)]
        assert -1 not in blocks and len(set(blocks)) == 32 and alloc.alloc(100) == -1  # 32 x 128 fills it
        for b in blocks[::2] + blocks[1::2]:
            alloc.free(b)
        assert alloc.alloc(4096) == 0  # every free range joined back into one
    finally:
        arena.close()


def test_a_restarted_core_takes_both_front_ends_back(core_repository: Path) -> None:
    owner = EngineCoreClient(listen=True)
    owner.start()
    second = EngineCoreClient(connect=owner.socket_path)
    try:
        second.start()
        config = mc.ModelConfig(name="simple", max_batch_size=8)
        model_file = core_repository / "simple" / "1" / "model.onnx"
        versions = [c.load_version("simple", 1, model_file, config, max_batch_size_given=True) for c in (owner, second)]
        first_pid = owner.pid
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        for mv in versions:  # each front end loads its versions again once it is back with the new core
            slot = mv.scheduler._slot  # type: ignore[union-attr]
            while True:
                r = _core_request(mv, 1, 2)
                try:
                    mv.scheduler.submit(r)  # type: ignore[union-attr]
                except UnavailableError:
                    assert time.monotonic() < deadline, "not back in time"
                    time.sleep(0.1)
                    continue
                assert r.sink.done.wait(30)  # type: ignore[union-attr]
                if isinstance(r.error, UnavailableError):  # sent just as the core died: it fails, never hangs
                    continue
                assert r.error is None, r.error
                break
            assert slot.handle
        assert owner.pid != first_pid and owner.restarts == 1 and second.restarts == 1
        assert versions[0].scheduler._slot.handle == versions[1].scheduler._slot.handle  # type: ignore[union-attr]
    finally:
        second.stop()
        owner.stop()


def test_front_ends_loading_one_config_share_its_load_key_whatever_the_map_order(tmp_path: Path) -> None:
    """Two front ends serialize a config's parameters map in different orders (per-process hash seeds):
    the core must still see one version, or each front end gets its own engine and queue."""
    from tensorgate.clients.pb import model_config_pb2 as mc
    from tensorgate.server.core.engine import _load_key

    a, b = mc.ModelConfig(name="m"), mc.ModelConfig(name="m")
    a.parameters["adaptive_queue_delay"].string_value = "true"
    b.parameters["intra_op_thread_count"].string_value = "1"
    one, other = a.SerializeToString() + b.SerializeToString(), b.SerializeToString() + a.SerializeToString()
    assert one != other and mc.ModelConfig.FromString(one) == mc.ModelConfig.FromString(other)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    assert _load_key("m", 1, str(model), one, False) == _load_key("m", 1, str(model), other, False)
