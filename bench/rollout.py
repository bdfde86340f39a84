"""Model lifecycle figures: a rollout under load, a broken rollout under load, and load/unload cycles.

    python -m tensorgate.bench.rollout [--concurrency 16] [--seconds 4] [--cycles 20] [--warmup-count 200] [--json out.json]

A tensorgate server (its own process, explicit model control) serves "mlp" version 1 while `concurrency`
closed-loop grpc.aio clients send requests for "latest". Then version 2 is added and loaded (the switch),
then a broken version 3 is loaded (it must fail and leave version 2 serving). Each phase reports requests
sent, failed by status, and p50/p99 latency of the requests sent before, during and after the load call.
Last, `cycles` load/unload cycles of a second model: the server's RSS, threads and open files after vs
before (measured after one warm-up cycle, so one-time allocations do not count).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tensorgate.clients import InferenceClient
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

from .servers import ServerProcess, start_tensorgate

__all__ = ["main", "run"]

_CONFIG = """max_batch_size: 16
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { kind: KIND_CPU count: 1 } ]
model_warmup [ { name: "w" batch_size: 16 count: {warmup}
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 784 ] random_data: true } } } ]
"""
_SIZES = (784, 1024, 1024, 10)  # the demo MLP, about 1.8M weights


def _repository(root: Path, warmup: int) -> Path:
    from tensorgate.server.demo.models import build_mlp

    for name in ("mlp", "cycled"):
        build_mlp(root / name / "1" / "model.onnx", _SIZES)
        (root / name / "config.pbtxt").write_text(_CONFIG.replace("{warmup}", str(max(1, warmup))))
    return root


def _proc(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class _Driver:
    """Closed-loop clients; every request's (send time, latency, status) is kept."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.concurrency = concurrency
        self.records: list[tuple[float, float, str]] = []
        self.stop = threading.Event()

    async def _run(self) -> None:
        x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
        request = pb.ModelInferRequest(
            model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32",
                                                                               shape=[1, 784])],
            raw_input_contents=[x.tobytes()])
        async with grpc.aio.insecure_channel(self.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def worker() -> None:
                while not self.stop.is_set():
                    start = time.monotonic()
                    try:
                        await stub.ModelInfer(request, timeout=30)
                        code = "OK"
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code().name
                    self.records.append((start, time.monotonic() - start, code))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        return thread


def _window(records: list[tuple[float, float, str]], start: float, end: float) -> dict[str, Any]:
    inside = [r for r in records if start <= r[0] < end]
    latencies = np.array([r[1] for r in inside if r[2] == "OK"]) * 1000
    codes = collections.Counter(r[2] for r in inside)
    return {
        "sent": len(inside), "failed": len(inside) - codes.get("OK", 0), "codes": dict(codes),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
    }


def _rollout(server: ServerProcess, repo: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    from tensorgate.server.demo.models import build_mlp

    driver = _Driver(server.url, concurrency)
    thread = driver.start()
    phases: dict[str, Any] = {}
    try:
        with InferenceClient(server.url) as client:
            time.sleep(seconds)
            t0 = time.monotonic()
            build_mlp(repo / "mlp" / "2" / "model.onnx", _SIZES, seed=1)
            client.load_model("mlp")
            t1 = time.monotonic()
            time.sleep(seconds)
            (repo / "mlp" / "3").mkdir()
            (repo / "mlp" / "3" / "model.onnx").write_bytes(b"not an onnx model")
            t2 = time.monotonic()
            try:
                client.load_model("mlp")
                broken_error = ""
            except Exception as exc:  # expected: the broken version is refused
                broken_error = str(exc)
            t3 = time.monotonic()
            time.sleep(seconds)
            t4 = time.monotonic()
            served = client.get_model_metadata("mlp").versions
    finally:
        driver.stop.set()
        thread.join(60)
    r = driver.records
    start = r[0][0] if r else t0
    phases["before"] = _window(r, start + 1.0, t0)  # the first second is connection set-up
    phases["switch"] = _window(r, t0, t1) | {"load_seconds": round(t1 - t0, 2)}
    phases["after_switch"] = _window(r, t1, t2)
    phases["broken_load"] = _window(r, t2, t3) | {"load_seconds": round(t3 - t2, 2), "error": broken_error[:200]}
    phases["after_broken"] = _window(r, t3, t4)
    phases["total"] = _window(r, 0, float("inf"))
    phases["served_versions_at_end"] = list(served)
    return phases


def _cycles(server: ServerProcess, cycles: int) -> dict[str, Any]:
    with InferenceClient(server.url) as client:
        def cycle() -> None:
            client.load_model("cycled")
            client.unload_model("cycled")

        cycle()
        time.sleep(0.5)
        before = _proc(server.pid)
        samples = []
        for _ in range(cycles):
            cycle()
            samples.append(round(_proc(server.pid)["rss_mb"], 1))
        time.sleep(0.5)
        after = _proc(server.pid)
    # glibc and ONNX Runtime arenas make RSS swing by a few MB from one cycle to the next: the samples
    # show whether it trends (a leak) or swings around a level
    return {"cycles": cycles, "before": before, "after": after,
            "rss_ratio": round(after["rss_mb"] / before["rss_mb"], 4), "rss_mb_per_cycle": samples}


def run(concurrency: int, seconds: float, cycles: int, warmup: int = 200) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tg-rollout-") as tmp:
        repo = _repository(Path(tmp), warmup)
        server = start_tensorgate(repo, ["--model-control-mode", "explicit", "--load-model", "mlp"])
        try:
            rollout = _rollout(server, repo, concurrency, seconds)
            cycled = _cycles(server, cycles)
        finally:
            server.stop()
    return {"concurrency": concurrency, "warmup_count": warmup, "rollout": rollout, "load_unload": cycled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tensorgate.bench.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load before and after each load")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--warmup-count", type=int, default=200,
                        help="model_warmup count of each version (batch 16): how long a load builds beside "
                        "the serving version")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run(args.concurrency, args.seconds, args.cycles, args.warmup_count)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    failed = result["rollout"]["total"]["failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
