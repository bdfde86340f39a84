"""What a SIGTERM does to requests in flight: a closed-loop load on a slow model, then the signal.

    python -m tensorgate.bench.drain --concurrency 24 --seconds 3 [--grpc-flavor thread]

Starts ``tensorgate serve`` on a model that takes a few hundred ms per batch,
runs `concurrency` clients (each its own connection, one request at a time),
sends SIGTERM, and reports every request that was in flight at the signal
(sent before it, answered after it) by status code, the requests sent after it,
how long the process took to exit, and the server's own drain lines.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .servers import ServerProcess, start_tensorgate

__all__ = ["main", "run_drain"]


def _build(folder: Path) -> Path:
    from tensorgate.server.demo.models import build_slow

    build_slow(folder / "slow" / "1" / "model.onnx", size=1024, steps=8)
    (folder / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )
    return folder


def _request() -> pb.ModelInferRequest:
    T = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(model_name="slow", inputs=[T(name="INPUT0", datatype="FP32", shape=[1, 4])],
                                raw_input_contents=[np.ones((1, 4), np.float32).tobytes()])


def _code(error: BaseException | None) -> str:
    if error is None:
        return "OK"
    return error.code().name if isinstance(error, grpc.RpcError) else type(error).__name__


def run_drain(server: ServerProcess, concurrency: int, seconds: float, new_connections: bool = False,
              burst: int = 0) -> dict[str, Any]:
    signalled = threading.Event()
    at_signal: list[float] = []
    records: list[tuple[float, float, str]] = []  # (sent, answered, code)
    lock = threading.Lock()
    request = _request()

    def one(stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
        sent = time.monotonic()
        try:
            stub.ModelInfer(request, timeout=120)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        with lock:
            records.append((sent, time.monotonic(), code))
        return not signalled.is_set() or code == "OK"

    def client() -> None:
        if new_connections:  # a connection per request: calls can be caught before a handler takes them
            while True:
                with grpc.insecure_channel(server.url) as channel:
                    if not one(pb_grpc.GRPCInferenceServiceStub(channel)):
                        return
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while one(stub):
                pass

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    # a burst on a fresh connection just before the signal: gRPC holds these before any handler sees them
    burst_channel = grpc.insecure_channel(server.url)
    burst_stub = pb_grpc.GRPCInferenceServiceStub(burst_channel)
    burst_calls = [burst_stub.ModelInfer.future(request, timeout=120) for _ in range(burst)]
    time.sleep(0.005)
    at_signal.append(time.monotonic())
    server.proc.send_signal(signal.SIGTERM)
    signalled.set()
    server.proc.wait(120)
    exited = time.monotonic() - at_signal[0]
    for t in threads:
        t.join(30)
    burst_codes = Counter(_code(f.exception()) for f in burst_calls)
    burst_channel.close()
    t0 = at_signal[0]
    in_flight = Counter(code for sent, answered, code in records if sent < t0 <= answered)
    after = Counter(code for sent, _, code in records if sent >= t0)
    late = sorted((round(sent - t0, 3), round(answered - t0, 3), code) for sent, answered, code in records
                  if sent >= t0 and code not in ("OK", "UNAVAILABLE"))
    return {
        "concurrency": concurrency,
        "new_connections": new_connections,
        "in_flight_at_sigterm": sum(in_flight.values()),
        "in_flight_outcomes": dict(in_flight),
        "burst_5ms_before_sigterm": dict(burst_codes),
        "sent_after_sigterm": dict(after),
        "sent_after_sigterm_not_unavailable": late[:10],  # (sent, answered) seconds after the signal
        "ok_before_sigterm": sum(1 for sent, answered, code in records if answered < t0 and code == "OK"),
        "exit_seconds_after_sigterm": round(exited, 2),
        "exit_code": server.proc.returncode,
        "server_lines": [line.strip() for line in server.lines if "drain" in line or "shutting down" in line],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tensorgate.bench.drain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=24)
    p.add_argument("--seconds", type=float, default=3.0, help="load before the signal (default 3)")
    p.add_argument("--grpc-flavor", choices=("aio", "thread"), default="aio")
    p.add_argument("--exit-timeout-secs", type=float, default=30.0)
    p.add_argument("--new-connections", action="store_true", help="each client opens a connection per request")
    p.add_argument("--burst", type=int, default=16,
                   help="also send this many requests on a fresh connection 5 ms before the signal (default 16)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tg-drain-") as folder:
        server = start_tensorgate(_build(Path(folder)), ["--allow-metrics", "false", "--grpc-flavor",
                                                         args.grpc_flavor, "--exit-timeout-secs",
                                                         str(args.exit_timeout_secs)])
        try:
            report = run_drain(server, args.concurrency, args.seconds, args.new_connections, args.burst)
        finally:
            server.stop()
    print(json.dumps(report, indent=2))
    outcomes = {**report["in_flight_outcomes"], **report["burst_5ms_before_sigterm"]}
    lost = sum(n for code, n in outcomes.items() if code != "OK")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
