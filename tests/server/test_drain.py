"""SIGTERM drains: admitted requests and open streams finish, new ones get UNAVAILABLE, nothing is CANCELLED;
a second signal exits at once (issue 11 part 4). A real `tensorgate serve` process and a slow model."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import serve_subprocess
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.demo.models import build_slow

T = pb.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slow: ~100-300 ms per batch of up to 2 (a MatMul chain), one instance."""
    repo = tmp_path_factory.mktemp("drain")
    build_slow(repo / "slow" / "1" / "model.onnx", size=1024, steps=8)
    (repo / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 2\ndynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )
    return repo


def _request(i: int) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="slow", id=f"r{i}", inputs=[T(name="INPUT0", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[np.full((1, 4), i, np.float32).tobytes()],
    )


def _code(future: Future[pb.ModelInferResponse]) -> grpc.StatusCode:
    error = future.exception()
    return grpc.StatusCode.OK if error is None else error.code()  # type: ignore[attr-defined]


def _wait_exit(proc: object, limit: float) -> float:
    started = time.monotonic()
    proc.wait(limit)  # type: ignore[attr-defined]
    return time.monotonic() - started


@pytest.mark.parametrize("flavor", ["aio", "thread"])
def test_sigterm_drains_admitted_requests_and_streams(slow_repository: Path, flavor: str) -> None:
    with serve_subprocess(slow_repository, "--grpc-flavor", flavor, "--exit-timeout-secs", "60",
                          "--allow-metrics", "false") as (proc, port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_request(0), timeout=60)  # warm: the channel is connected, the model has run once
        # an open stream with two requests in flight, which the client keeps open
        release = threading.Event()

        def stream_requests() -> Iterator[pb.ModelInferRequest]:
            yield _request(100)
            yield _request(101)
            release.wait(60)

        stream = stub.ModelStreamInfer(stream_requests(), timeout=60)
        admitted = [stub.ModelInfer.future(_request(i), timeout=60) for i in range(1, 13)]
        time.sleep(0.3)  # on a connected channel they are in the server's queue by now
        # a burst on a fresh connection just before the signal: each is served or refused, never cancelled
        cold = grpc.insecure_channel(f"127.0.0.1:{port}")
        burst = [pb_grpc.GRPCInferenceServiceStub(cold).ModelInfer.future(_request(50 + i), timeout=60)
                 for i in range(8)]
        time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.1)
        # draining: not ready and health NOT_SERVING at once
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # what gRPC had received is handed over for at most 0.5 s; new requests after that get UNAVAILABLE
        time.sleep(max(0.0, signalled + 0.7 - time.monotonic()))
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(99), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()
        assert proc.poll() is None, "the process must still be draining"

        assert [_code(f) for f in admitted] == [grpc.StatusCode.OK] * 12
        for i, future in enumerate(admitted, start=1):
            assert np.array_equal(np.frombuffer(future.result().raw_output_contents[0], np.float32),
                                  np.full(4, i, np.float32))
        replies = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in stream:
                replies.append(reply)
        release.set()
        assert sorted(r.infer_response.id for r in replies) == ["r100", "r101"]
        assert not any(r.error_message for r in replies)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the stream ends once its requests are answered
        assert {_code(f) for f in burst} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        # the process stops soon after the last response, not at the exit timeout (the stream held it before)
        answered = time.monotonic()
        assert _wait_exit(proc, 60) < 10 and proc.returncode == 0, f"exit {answered - signalled:.1f} s"
        channel.close()
        cold.close()


def test_second_signal_exits_at_once(slow_repository: Path) -> None:
    with serve_subprocess(slow_repository, "--exit-timeout-secs", "60", "--allow-metrics", "false") as (proc, port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_request(0), timeout=60)
        queued = [stub.ModelInfer.future(_request(i), timeout=60) for i in range(40)]  # seconds of work
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # draining
        proc.send_signal(signal.SIGTERM)
        assert _wait_exit(proc, 10) < 3.0
        assert proc.returncode == 128 + signal.SIGTERM
        codes = [_code(f) for f in queued]
        assert codes.count(grpc.StatusCode.OK) < 40  # it did not wait for the queued work
        channel.close()
