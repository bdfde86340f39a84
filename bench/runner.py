"""One bench run: discover the model, then for each load level warm up and measure windows until stable.

Per level: a warm-up (discarded), then windows of `window_s` until throughput and p99 of the last three
agree within the stability threshold (``stability.is_stable``), or `max_windows` / `max_seconds` pass.
With ``ceiling`` the same level is then measured against the two echo servers, interleaved with the
server so the noisy machine treats all three alike; after the sweep ONNX Runtime's in-process figure is
taken at batch 1 and at each mean batch the server formed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from tensorgate.clients import AsyncInferenceClient
from tensorgate.clients.cuda_runtime import CudaError, load_runtime

from . import ceilings
from .inputs import build_requests, discover_model
from .load import LoadSpec, resolve_engine
from .machine import MachineCpu
from .results import level_dict, window_dict
from .server_stats import ServerStats, StatsDelta
from .servers import ServerProcess
from .shm import CudaShmPlan, RegionPlan, ShmPlan
from .stability import is_stable
from .window import WindowSample
from .workers import Generators, make_generators

__all__ = ["BenchConfig", "BenchError", "Progress", "run_bench"]


class BenchError(Exception):
    """The run cannot go on (no such model, unusable inputs, a flag the server does not support)."""


@dataclass
class BenchConfig:
    """Everything a run needs; `concurrency` or `request_rate` gives the levels."""

    url: str
    model: str
    model_version: str = ""
    concurrency: list[int] = field(default_factory=list)
    request_rate: list[float] = field(default_factory=list)
    poisson: bool = False
    streaming: bool = False
    batch_size: int = 1
    data: str = "random"
    shapes: dict[str, list[int]] = field(default_factory=dict)
    string_length: int = 16
    timeout_s: float | None = None
    warmup_s: float = 2.0
    window_s: float = 5.0
    stability: float = 0.10
    max_windows: int = 10
    max_seconds: float = 60.0
    client_processes: int = 1
    channels: int = 0
    max_inflight: int = 256
    late_ms: float = 2.0
    engine: str = "auto"
    server_stats: bool = True
    shared_memory: str = "none"
    ceiling: bool = False
    model_file: Path | None = None
    ceiling_seconds: float = 3.0
    ceiling_threads: int = 1


class Progress(Protocol):
    """What the live display is told (``live.LiveProgress``; ``NullProgress`` when quiet)."""

    def level_started(self, target: str, label: str) -> None: ...
    def tick(self, elapsed_s: float, inflight: int | None) -> None: ...
    def window_done(self, window: dict[str, Any], stable: bool) -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    """Progress that shows nothing."""

    def level_started(self, target: str, label: str) -> None:
        pass

    def tick(self, elapsed_s: float, inflight: int | None) -> None:
        pass

    def window_done(self, window: dict[str, Any], stable: bool) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class _Runner:
    def __init__(self, config: BenchConfig, progress: Progress, generators: Generators,
                 requests: tuple[tuple[bytes, int], ...]) -> None:
        self.config = config
        self.progress = progress
        self.generators = generators
        self.requests = requests
        self.machine = MachineCpu()

    def spec(self, url: str, level: dict[str, Any]) -> LoadSpec:
        c = self.config
        return LoadSpec(url=url, requests=self.requests, concurrency=int(level.get("concurrency", 0)),
                        request_rate=float(level.get("request_rate", 0.0)), poisson=c.poisson,
                        max_inflight=c.max_inflight, streaming=c.streaming, timeout_s=c.timeout_s,
                        channels=c.channels, late_ns=int(c.late_ms * 1e6),
                        engine=resolve_engine(c.engine, int(level.get("concurrency", 0)), "request_rate" in level,
                                              c.streaming))

    async def _wait(self, seconds: float, started: float) -> None:
        """Sleep through a window, telling the display how it goes about once a second."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            self.progress.tick(time.monotonic() - started, self.generators.inflight())

    async def measure(self, target: str, url: str, level: dict[str, Any], stats: ServerStats | None) -> dict[str, Any]:
        c = self.config
        label = ", ".join(f"{k} {v:g}" for k, v in level.items())
        self.progress.level_started(target, label)
        try:
            await self.generators.start(self.spec(url, level))
        except (asyncio.TimeoutError, grpc.RpcError, OSError, RuntimeError) as exc:
            await self.generators.stop()
            raise BenchError(f"could not start the load on {url}: {type(exc).__name__} {exc}") from exc
        samples: list[WindowSample] = []
        windows: list[dict[str, Any]] = []
        deltas: list[StatsDelta | None] = []
        stable = False
        try:
            started = time.monotonic()
            await self._wait(c.warmup_s, started)
            await self.generators.cut()
            self.machine.reset()
            if stats is not None:
                await stats.reset()
            while True:
                await self._wait(c.window_s, started)
                sample = await self.generators.cut()
                busy = self.machine.busy()
                delta = await stats.delta() if stats is not None else None
                samples.append(sample)
                deltas.append(delta)
                windows.append(window_dict(len(windows), sample, busy, delta))
                stable = is_stable([s.infer_per_sec for s in samples],
                                   [s.histogram.percentile_ns(99) for s in samples], c.stability)
                self.progress.window_done(windows[-1], stable)
                if stable or len(windows) >= c.max_windows or time.monotonic() - started >= c.max_seconds:
                    break
        finally:
            await self.generators.stop()
        if not stable:
            self.progress.message(f"{target} at {label}: not stable within {c.stability:.0%} after "
                                  f"{len(windows)} windows; reporting the last ones")
        return level_dict(level, samples, windows, deltas, stable)


def _levels(config: BenchConfig) -> list[dict[str, Any]]:
    if config.request_rate:
        return [{"request_rate": r} for r in config.request_rate]
    return [{"concurrency": c} for c in (config.concurrency or [1])]


def _ratios(result: dict[str, Any], echoes: dict[str, dict[str, Any]], ort: dict[int, float]) -> dict[str, Any]:
    """The server's throughput as a fraction of each ceiling measured in this run."""
    mine = result["throughput_infer_per_sec"]
    out: dict[str, Any] = {}
    for key, echo in echoes.items():
        out[key] = {k: echo[k] for k in ("throughput_infer_per_sec", "throughput_req_per_sec", "p50_ms", "p99_ms",
                                         "errors", "stable")}
        out[f"ratio_to_{key}"] = mine / echo["throughput_infer_per_sec"] if echo["throughput_infer_per_sec"] else None
    if ort:
        out["ort_batch1_infer_per_sec"] = ort.get(1)
        out["ratio_to_ort_batch1"] = mine / ort[1] if ort.get(1) else None
        batch = _mean_batch(result)
        out["ort_mean_batch"] = batch
        out["ort_mean_batch_infer_per_sec"] = ort.get(batch)
        out["ratio_to_ort_mean_batch"] = mine / ort[batch] if ort.get(batch) else None
    return out


def _mean_batch(result: dict[str, Any]) -> int:
    server = result.get("server") or {}
    return max(1, round(server.get("mean_batch") or 0)) if server.get("mean_batch") else 1


def _region_plan(kind: str) -> RegionPlan | None:
    """The shared-memory layout for ``--shared-memory kind``; cuda is refused here when this host has no GPU."""
    if kind == "system":
        return ShmPlan()
    if kind == "cuda":
        runtime, reason = load_runtime()
        if runtime is None:
            raise BenchError(f"--shared-memory cuda needs a GPU on this host (bench allocates the device memory the "
                             f"server reads): {reason}")
        return CudaShmPlan(runtime)
    return None


async def run_bench(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every level; returns the report (see ``results`` for the level objects).

    Raises:
        BenchError: the model or its inputs cannot be used, or a requested feature is not advertised.
        clients.InferenceServerError: the server refused a metadata call.
    """
    progress = progress or NullProgress()
    c = config
    plan = _region_plan(c.shared_memory)  # before any call: cuda is refused at once on a host without a GPU
    # no client-side retries: a load tester counts every answer the server gives, as perf_analyzer does
    async with AsyncInferenceClient(c.url, retry=False) as client:
        server = await client.get_server_metadata(client_timeout=30)
        extensions = sorted(server.extensions)
        if c.shared_memory != "none" and f"{c.shared_memory}_shared_memory" not in extensions:
            raise BenchError(f"--shared-memory {c.shared_memory}: server {server.name or c.url!r} does not "
                             f"advertise the {c.shared_memory}_shared_memory extension (it advertises: "
                             f"{', '.join(extensions) or 'none'})")
        model = await discover_model(client, c.model, c.model_version)
        if model.decoupled and not c.streaming:
            raise BenchError(f"model {c.model!r} is decoupled: use --streaming")
        try:
            built = build_requests(model, batch_size=c.batch_size, data=c.data, shapes=c.shapes,
                                   string_length=c.string_length, shm=plan)
        except (ValueError, OSError, KeyError) as exc:
            raise BenchError(str(exc)) from exc
        if plan is not None:
            try:
                await plan.create(c.url)
            except (grpc.aio.AioRpcError, OSError, CudaError) as exc:
                await plan.close(c.url)
                raise BenchError(f"--shared-memory {c.shared_memory}: could not set up the regions: {exc}") from exc
        stats = ServerStats(client, c.model, c.model_version) if c.server_stats and "statistics" in extensions \
            else None
        report: dict[str, Any] = {
            "tool": "tensorgate bench", "url": c.url, "model": c.model, "model_version": c.model_version,
            "mode": "request_rate" if c.request_rate else "concurrency", "streaming": c.streaming,
            "batch_size": c.batch_size, "poisson": c.poisson, "data": c.data, "shared_memory": c.shared_memory,
            "request_bytes": [r.size for r in built],
            "server": {"name": server.name, "version": server.version, "extensions": extensions,
                       "statistics": stats is not None},
            "settings": {"warmup_s": c.warmup_s, "window_s": c.window_s, "stability": c.stability,
                         "max_windows": c.max_windows, "max_seconds": c.max_seconds,
                         "client_processes": c.client_processes, "channels": c.channels,
                         "max_inflight": c.max_inflight, "timeout_s": c.timeout_s, "late_ms": c.late_ms,
                         "engine": c.engine},
            "results": [],
        }
        try:
            await _sweep(c, progress, tuple((r.payload, r.rows) for r in built), stats, report)
        finally:
            if plan is not None:
                await plan.close(c.url)
    if c.ceiling:
        report["ort_ceiling"] = await _ort(c, report, progress)
    return report


async def _sweep(c: BenchConfig, progress: Progress, requests: tuple[tuple[bytes, int], ...],
                 stats: ServerStats | None, report: dict[str, Any]) -> None:
    """Every level against the server (and, with --ceiling, against both echoes right after it)."""
    loop = asyncio.get_running_loop()
    echoes: dict[str, ServerProcess] = {}
    generators = make_generators(c.client_processes)
    runner = _Runner(c, progress, generators, requests)
    try:
        if c.ceiling:
            progress.message("starting the echo ceilings (grpc.aio and thread pool) on loopback")
            echoes = await loop.run_in_executor(None, ceilings.start_echoes, c.url, c.model)
        for level in _levels(c):
            result = await runner.measure("server", c.url, level, stats)
            echo_results = {key: await runner.measure(key, echo.url, level, None) for key, echo in echoes.items()}
            result["ceilings"] = _ratios(result, echo_results, {}) if echoes else None
            report["results"].append(result)
    finally:
        await generators.close()
        for echo in echoes.values():
            echo.stop()


async def _ort(c: BenchConfig, report: dict[str, Any], progress: Progress) -> dict[str, Any] | None:
    """ONNX Runtime in-process at batch 1 and every mean batch the server formed; ratios added per level."""
    if c.model_file is None:
        progress.message("--ceiling without --model-file: no in-process ONNX Runtime ceiling")
        return None
    batches = {1, c.batch_size, *(_mean_batch(r) for r in report["results"])}
    progress.message(f"in-process ONNX Runtime ceiling at batch {', '.join(map(str, sorted(batches)))}")
    loop = asyncio.get_running_loop()
    try:
        ort = await loop.run_in_executor(None, ceilings.ort_ceiling, c.model_file, batches, c.ceiling_seconds,
                                         c.ceiling_threads)
    except (RuntimeError, OSError) as exc:
        progress.message(str(exc))
        return {"error": str(exc)}
    for result in report["results"]:
        result["ceilings"] = {**(result.get("ceilings") or {}), **_ratios(result, {}, ort)}
    return {"model_file": str(c.model_file), "threads": c.ceiling_threads,
            "infer_per_sec_by_batch": {str(b): v for b, v in sorted(ort.items())}}
