"""Zero-downtime rollout: a new version set beside the old, an atomic switch, drained unloads, poll mode."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from lifecycle_support import ADD_SUB_CONFIG, add_sub_repository, index_rows, infer_add_sub

from support import RunningServer, running_server
from tensorgate.clients import InferenceClient, InferenceServerError, InferInput
from tensorgate.server.demo.models import build_add_sub, build_mlp
from tensorgate.server.errors import RetiredError

# a warm-up long enough that a load is seen LOADING beside the serving version
# long enough (3000 runs) that a poll every 10 ms sees version 2 LOADING beside a READY version 1
SLOW_WARMUP = """
model_warmup [ { name: "w" batch_size: 8 count: 3000
  inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }
  inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } } } ]
"""


class Load:
    """Clients sending requests for "latest" in a closed loop until stopped; counts what came back."""

    def __init__(self, url: str, model: str = "simple", clients: int = 4) -> None:
        self.sent = 0
        self.failed: list[str] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, model)) for _ in range(clients)]

    def _run(self, url: str, model: str) -> None:
        with InferenceClient(url) as client:
            for _ in range(100_000):  # bounded
                if self._stop.is_set():
                    return
                try:
                    version = infer_add_sub(client, model).model_version
                    with self._lock:
                        self.sent += 1
                        self.versions.append(version)
                except InferenceServerError as exc:
                    with self._lock:
                        self.sent += 1
                        self.failed.append(str(exc))

    @contextmanager
    def running(self) -> Iterator[Load]:
        for t in self._threads:
            t.start()
        try:
            time.sleep(0.3)
            yield self
            time.sleep(0.3)
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(30)


def _wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_a_new_version_takes_over_with_no_failed_request(tmp_path: Path, flavor: str) -> None:
    repo = add_sub_repository(tmp_path)
    with running_server(repo, grpc_flavor=flavor, model_control_mode="explicit", load_models=("*",)) as srv, \
            InferenceClient(srv.url) as client:
        build_add_sub(repo / "simple" / "2" / "model.onnx")
        (repo / "simple" / "config.pbtxt").write_text(ADD_SUB_CONFIG + SLOW_WARMUP)
        seen: list[dict[tuple[str, str], tuple[str, str]]] = []
        with Load(srv.url).running() as load:
            loader = threading.Thread(target=client.load_model, args=("simple",))
            loader.start()
            while loader.is_alive():
                seen.append(index_rows(client))
                time.sleep(0.01)
            loader.join()
        assert load.failed == [] and load.sent > 20
        assert "1" in load.versions and load.versions[-1] == "2"
        # version 2 was LOADING while version 1 was READY and serving
        assert any(r.get(("simple", "2"), ("",))[0] == "LOADING" and r[("simple", "1")][0] == "READY" for r in seen)
        srv.server.registry.wait_retired(30)
        rows = index_rows(client)
        assert rows[("simple", "2")] == ("READY", "") and rows[("simple", "1")] == ("UNAVAILABLE", "unloaded")
        assert srv.server.registry.find("simple", "2").warmup_runs == 3000  # warm-up ran before READY


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_a_broken_new_version_leaves_the_old_one_serving(tmp_path: Path, flavor: str) -> None:
    repo = add_sub_repository(tmp_path)
    with running_server(repo, grpc_flavor=flavor, model_control_mode="explicit", load_models=("*",)) as srv, \
            InferenceClient(srv.url) as client:
        (repo / "simple" / "2").mkdir()
        (repo / "simple" / "2" / "model.onnx").write_bytes(b"not an onnx model")
        with Load(srv.url).running() as load:
            with pytest.raises(InferenceServerError) as info:
                client.load_model("simple")
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert "version 2" in info.value.message and "versions [1] keep serving" in info.value.message
        assert load.failed == [] and set(load.versions) == {"1"}
        rows = index_rows(client)
        assert rows[("simple", "1")] == ("READY", "")
        assert rows[("simple", "2")][0] == "UNAVAILABLE" and rows[("simple", "2")][1]
        # a broken config too: the old version keeps serving and the error says why
        shutil.rmtree(repo / "simple" / "2")
        (repo / "simple" / "config.pbtxt").write_text(ADD_SUB_CONFIG.replace('"INPUT1"', '"x"'))
        with pytest.raises(InferenceServerError) as info:
            client.load_model("simple")
        assert "input 'x' in config.pbtxt is not in the model" in info.value.message
        assert infer_add_sub(client).model_version == "1"


def _slow_repository(root: Path) -> Path:
    # slow enough (about 0.1-0.3 s a request on one thread) that a flood is still queued when it has all arrived
    build_mlp(root / "slow" / "1" / "model.onnx", (512, 4096, 4096, 10))
    (root / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 64\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    )
    return root


def _flood(srv: RunningServer, count: int) -> tuple[list[threading.Thread], list[object]]:
    results: list[object] = []
    x = np.ones((64, 512), np.float32)  # no dynamic batching: each request runs alone, 64 rows

    def one() -> None:
        # no client retries: a request refused while unloading must show its own status, not a retry's
        with InferenceClient(srv.url, retry=False) as client:
            try:
                client.infer("slow", [InferInput("INPUT0", [64, 512], "FP32").set_data_from_numpy(x)])
                results.append("ok")
            except InferenceServerError as exc:
                results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    scheduler = srv.server.registry.find("slow").scheduler
    assert scheduler is not None
    _wait_for(lambda: scheduler.pending + len(results) >= count, 60)  # every request arrived
    assert scheduler.pending >= 2  # some still queued behind the running one
    return threads, results


def test_unload_waits_for_queued_requests(tmp_path: Path) -> None:
    with running_server(_slow_repository(tmp_path), model_control_mode="explicit", load_models=("*",)) as srv, \
            InferenceClient(srv.url) as client:
        threads, results = _flood(srv, 16)
        unloader = threading.Thread(target=client.unload_model, args=("slow",))  # returns once drained
        unloader.start()
        states = []
        while unloader.is_alive():
            states.append(index_rows(client)[("slow", "1")][0])
            time.sleep(0.01)
        unloader.join()
        for t in threads:
            t.join(30)
        assert results == ["ok"] * 16
        assert "UNLOADING" in states and index_rows(client)[("slow", "1")] == ("UNAVAILABLE", "unloaded")


def test_unload_fails_what_is_still_queued_after_its_bound(tmp_path: Path) -> None:
    with running_server(_slow_repository(tmp_path), model_control_mode="explicit", load_models=("*",),
                        model_unload_timeout_secs=0.0) as srv, InferenceClient(srv.url) as client:
        threads, results = _flood(srv, 16)
        client.unload_model("slow")
        for t in threads:
            t.join(30)
        failed = [r for r in results if isinstance(r, InferenceServerError)]
        assert failed and len(results) == 16
        for exc in failed:
            assert exc.status == grpc.StatusCode.UNAVAILABLE
            assert "was unloaded before this request ran" in exc.message
        assert client.is_server_live()


def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    repo = add_sub_repository(tmp_path)
    with running_server(repo, model_control_mode="poll", repository_poll_secs=0.2) as srv, \
            InferenceClient(srv.url) as client:
        def ready() -> set[tuple[str, str]]:
            return {k for k, v in index_rows(client).items() if v[0] == "READY"}

        build_add_sub(repo / "simple" / "2" / "model.onnx")  # an added version (latest 1: replaces 1)
        _wait_for(lambda: ready() == {("simple", "2")})
        assert infer_add_sub(client).model_version == "2"

        shutil.rmtree(repo / "simple" / "2")  # a removed version: back to 1
        _wait_for(lambda: ready() == {("simple", "1")})
        assert infer_add_sub(client).model_version == "1"

        (repo / "simple" / "config.pbtxt").write_text(ADD_SUB_CONFIG.replace("max_batch_size: 8", "max_batch_size: 2"))
        _wait_for(lambda: client.get_model_config("simple").config.max_batch_size == 2)

        add_sub_repository(repo, "added")  # an added model
        _wait_for(lambda: ("added", "1") in ready())
        shutil.rmtree(repo / "added")  # a removed model
        _wait_for(lambda: ("added", "1") not in ready())
        assert index_rows(client)[("added", "1")] == ("UNAVAILABLE", "unloaded")


def _threads() -> Counter[str]:
    # the event loop's default executor (where loads run) grows to its fixed bound lazily: not a leak
    return Counter(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_load_unload_cycles_leak_no_threads_or_fds(tmp_path: Path) -> None:
    repo = add_sub_repository(tmp_path)
    with running_server(repo, model_control_mode="explicit") as srv, InferenceClient(srv.url) as client:
        def cycle() -> None:
            client.load_model("simple")
            infer_add_sub(client)
            client.unload_model("simple")

        cycle()
        threads, fds = _threads(), _fds()
        for _ in range(20):
            cycle()
        srv.server.registry.wait_retired(30)
        assert not _threads() - threads  # no name more often than before (a worker per instance and cycle)
        assert _fds() <= fds + 2  # gRPC may open a pipe or two for its own pollers


class _Collect:
    """A completion sink that remembers what it was handed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.requests: list[object] = []

    def deliver(self, requests: object) -> None:
        self.requests.extend(requests)  # type: ignore[call-overload]
        self.done.set()


def test_a_request_resolved_just_before_the_switch_runs_on_the_new_version(tmp_path: Path) -> None:
    """The race a rollout must not lose: "latest" resolved to v1, v1 retired before the request is queued."""
    from tensorgate.clients import InferInput as In
    from tensorgate.clients._infer import build_infer_request

    repo = add_sub_repository(tmp_path)
    with running_server(repo, model_control_mode="explicit", load_models=("*",)) as srv:
        a = np.zeros((1, 16), np.int32)
        wire = build_infer_request("simple", [In("INPUT0", [1, 16], "INT32").set_data_from_numpy(a),
                                              In("INPUT1", [1, 16], "INT32").set_data_from_numpy(a)])
        plane = srv.server.plane
        latest, pinned = plane.prepare(wire), plane.prepare(build_infer_request(
            "simple", [In("INPUT0", [1, 16], "INT32").set_data_from_numpy(a),
                       In("INPUT1", [1, 16], "INT32").set_data_from_numpy(a)], model_version="1"))
        build_add_sub(repo / "simple" / "2" / "model.onnx")
        srv.server.control.load("simple", {})
        srv.server.registry.wait_retired(30)  # version 1 has stopped taking requests
        sink = _Collect()
        latest.sink = sink
        plane.submit(latest)
        assert sink.done.wait(10) and latest.error is None and latest.model.version == 2
        with pytest.raises(RetiredError) as info:
            plane.submit(pinned)  # a client that named version 1 gets its honest answer
        assert "version 1 is unloading" in str(info.value)
