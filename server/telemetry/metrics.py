"""Prometheus metrics, read at scrape time from the counters the server already keeps.

Per model (labels ``model``, ``version``) with Triton's names and semantics, all
taken from the statistics extension's own counters (statistics.py), so the two
always agree and a request pays nothing for metrics:
``nv_inference_request_success``, ``nv_inference_request_failure{reason}``
(REJECTED: queue full or timed out in the queue; CANCELED; BACKEND: the engine
failed; OTHER), ``nv_inference_count`` (rows), ``nv_inference_exec_count``
(engine runs), ``nv_inference_pending_request_count``, and the cumulative
``nv_inference_{request,queue,compute_input,compute_infer,compute_output}_duration_us``.
As in Triton, a request counts once it reaches a model's scheduler: one refused
before (unknown model, invalid input) is counted by neither.

Also: the engine cache (``tensorgate_engine_cache_*``), host CPU and memory
(``nv_cpu_*``), the server process (``process_*``), GPUs through NVML
(``nv_gpu_*``, ``nv_energy_consumption``: the names perf_analyzer's
``--collect-metrics`` reads), model readiness, and the response cache
(``nv_cache_*``: per model for models that enable it, plus the cache's own
entries, lookups, evictions and utilisation).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tensorgate.engines.cache import STATS

if TYPE_CHECKING:
    from ..registry import ModelRegistry
    from ..response_cache import ResponseCache

__all__ = ["FAILURE_REASONS", "EngineCacheCollector", "GpuCollector", "HostCollector", "ModelCollector",
           "family", "process_collector"]

log = logging.getLogger("tensorgate.telemetry.metrics")

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def family(name: str, documentation: str, kind: str) -> Metric:
    """A metric family whose samples carry exactly ``name`` (Triton's counters have no _total suffix)."""
    return Metric(name, documentation, kind)


_DURATIONS = (
    ("nv_inference_request_duration_us", "success", "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "queue", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "compute_input",
     "Cumulative compute input duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "compute_infer",
     "Cumulative compute inference duration in microseconds"),
    ("nv_inference_compute_output_duration_us", "compute_output",
     "Cumulative inference compute output duration in microseconds"),
)


# Triton's per-model response cache families (from cache_hit / cache_miss in ModelStatistics)
_CACHE = (
    ("nv_cache_num_hits_per_model", "cache_hit", "count", "Number of cache hits per model"),
    ("nv_cache_num_misses_per_model", "cache_miss", "count", "Number of cache misses per model"),
    ("nv_cache_hit_duration_per_model", "cache_hit", "us",
     "Total cache hit duration per model, in microseconds"),
    ("nv_cache_miss_duration_per_model", "cache_miss", "us",
     "Total cache miss (lookup + insertion) duration per model, in microseconds"),
)


def _cache_families(cache: ResponseCache) -> Iterator[Metric]:
    """The server-wide response cache: entries, lookups, evictions, utilisation."""
    for name, doc, kind, value in (
        ("nv_cache_num_entries", "Number of responses stored in the response cache", "gauge", len(cache)),
        ("nv_cache_num_lookups", "Number of response cache lookups", "counter", cache.lookups),
        ("nv_cache_num_evictions", "Number of response cache evictions", "counter", cache.evictions),
        ("nv_cache_util", "Response cache utilization [0.0 - 1.0]", "gauge",
         cache.used_bytes / cache.max_bytes if cache.max_bytes else 0.0),
    ):
        metric = family(name, doc, kind)
        metric.add_sample(name, {}, float(value))
        yield metric


class ModelCollector(Collector):
    """Triton's per-model nv_inference_* families, from each ready version's ModelStatistics."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        success = family("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
                         "counter")
        failure = family("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                         "counter")
        count = family("nv_inference_count", "Number of inferences performed (does not include cached requests)",
                       "counter")
        execs = family("nv_inference_exec_count",
                       "Number of model executions performed (does not include cached requests)", "counter")
        pending = family("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests awaiting execution per-model.", "gauge")
        durations = [(family(name, doc, "counter"), field) for name, field, doc in _DURATIONS]
        ready = family("tensorgate_model_ready", "1 when the model version is READY, else 0", "gauge")
        queue_full = family("tensorgate_inference_queue_full_total", "Requests refused at once because the model's "
                            "queue was at max_queue_size (also in nv_inference_request_failure{reason=REJECTED})",
                            "counter")
        cache = [(family(name, doc, "counter"), field, unit) for name, field, unit, doc in _CACHE]
        for entry in self._registry.index():
            if entry.version:
                ready.add_sample("tensorgate_model_ready", {"model": entry.name, "version": entry.version},
                                 1.0 if entry.state == "READY" else 0.0)
        for mv in self._registry.all_versions():
            scheduler = mv.scheduler
            if scheduler is None or not mv.ready:
                continue
            labels = {"model": mv.name, "version": mv.version_str}
            stats = scheduler.statistics
            reasons = dict(getattr(stats, "failure_reasons", {}))
            snapshot = stats.to_pb(mv.name, mv.version_str)
            infer = snapshot.inference_stats
            success.add_sample(success.name, labels, infer.success.count)
            for reason in FAILURE_REASONS:
                failure.add_sample(failure.name, {**labels, "reason": reason}, reasons.get(reason, 0))
            count.add_sample(count.name, labels, snapshot.inference_count)
            execs.add_sample(execs.name, labels, snapshot.execution_count)
            pending.add_sample(pending.name, labels, scheduler.pending)
            queue_full.add_sample(queue_full.name, labels, getattr(stats, "queue_full", 0))
            for metric, field in durations:
                metric.add_sample(metric.name, labels, getattr(infer, field).ns // 1000)
            if mv.response_cache:
                for metric, field, unit in cache:
                    value = getattr(infer, field)
                    metric.add_sample(metric.name, labels, value.count if unit == "count" else value.ns // 1000)
        yield from (success, failure, count, execs, pending, *(m for m, _ in durations), ready, queue_full)
        if self._registry.response_cache is not None:
            yield from (m for m, _, _ in cache)
            yield from _cache_families(self._registry.response_cache)


class EngineCacheCollector(Collector):
    """The engine cache's process-wide counters (engines.cache.STATS)."""

    def collect(self) -> Iterable[Metric]:
        snap = STATS.snapshot()
        for key, doc in (
            ("hits", "Engine cache lookups that found a valid engine or precision artifact"),
            ("misses", "Engine cache lookups that had to build"),
            ("corrupt", "Engine cache entries found corrupt or mismatching and rebuilt"),
            ("evictions", "Engine cache entries evicted by the size bound"),
            ("scratch_builds", "Engine builds kept in a per-process scratch folder: the cache could not take them"),
            ("check_failures", "Cached entries that missed the accuracy gate when checked at load, then rebuilt"),
        ):
            metric = family(f"tensorgate_engine_cache_{key}_total", doc, "counter")
            metric.add_sample(metric.name, {}, snap[key])
            yield metric
        built = family("tensorgate_engine_build_seconds_total",
                       "Seconds spent building engines and precision artifacts", "counter")
        built.add_sample(built.name, {}, snap["build_seconds"])
        yield built


class HostCollector(Collector):
    """Triton's nv_cpu_* families: host CPU utilisation since the last scrape and host memory (Linux /proc)."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None

    @staticmethod
    def _cpu_times() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    @staticmethod
    def _memory() -> tuple[int, int]:
        info: dict[str, int] = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        total = info.get("MemTotal", 0)
        return total, total - info.get("MemAvailable", info.get("MemFree", 0))

    def collect(self) -> Iterable[Metric]:
        try:
            total, idle = self._cpu_times()
            mem_total, mem_used = self._memory()
        except (OSError, ValueError, IndexError):  # not Linux: no host families
            return
        last = self._last or (0, 0)
        self._last = (total, idle)
        busy = (total - last[0]) - (idle - last[1])
        util = busy / (total - last[0]) if total > last[0] else 0.0
        for name, doc, value in (
            ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", util),
            ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", mem_total),
            ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", mem_used),
        ):
            metric = family(name, doc, "gauge")
            metric.add_sample(name, {}, value)
            yield metric


class GpuCollector(Collector):
    """Triton's nv_gpu_* families per GPU (label gpu_uuid), read through NVML at scrape time."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._devices: list[tuple[str, Any]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                self._devices.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
            self._nvml = pynvml
        except Exception as exc:  # no NVML library, no driver, no GPU: no GPU families
            log.debug("no GPU metrics: %s", exc)

    @property
    def gpus(self) -> int:
        return len(self._devices)

    def _read(self, fn: str, handle: Any) -> Any:
        try:
            return getattr(self._nvml, fn)(handle)
        except Exception:  # a query this GPU does not support (power on some boards)
            return None

    def collect(self) -> Iterator[Metric]:
        if self._nvml is None or not self._devices:
            return
        names = (
            ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge"),
            ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge"),
            ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge"),
            ("nv_gpu_power_usage", "GPU power usage in watts", "gauge"),
            ("nv_gpu_power_limit", "GPU power management limit in watts", "gauge"),
            ("nv_energy_consumption", "GPU energy consumption in joules since the driver was loaded",
             "counter"),
        )
        metrics = {name: family(name, doc, kind) for name, doc, kind in names}
        for uuid, handle in self._devices:
            labels = {"gpu_uuid": uuid}
            util = self._read("nvmlDeviceGetUtilizationRates", handle)
            memory = self._read("nvmlDeviceGetMemoryInfo", handle)
            power = self._read("nvmlDeviceGetPowerUsage", handle)
            limit = self._read("nvmlDeviceGetEnforcedPowerLimit", handle)
            energy = self._read("nvmlDeviceGetTotalEnergyConsumption", handle)
            values = {
                "nv_gpu_utilization": util.gpu / 100.0 if util is not None else None,
                "nv_gpu_memory_total_bytes": memory.total if memory is not None else None,
                "nv_gpu_memory_used_bytes": memory.used if memory is not None else None,
                "nv_gpu_power_usage": power / 1000.0 if power is not None else None,
                "nv_gpu_power_limit": limit / 1000.0 if limit is not None else None,
                "nv_energy_consumption": energy / 1000.0 if energy is not None else None,
            }
            for name, value in values.items():
                if value is not None:
                    metrics[name].add_sample(name, labels, float(value))
        yield from metrics.values()


def process_collector() -> ProcessCollector | None:
    """The standard process_* families (CPU seconds, resident memory, open files) where /proc exists."""
    return ProcessCollector(registry=None) if os.path.isdir("/proc/self") else None
