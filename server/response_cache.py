"""Triton's response cache: a server-wide LRU bounded by bytes, used by models that enable it.

``--cache-config local,size=BYTES`` makes the cache; a model opts in with
``response_cache { enable: true }``. The key hashes the model name and
version, every input's name, datatype, shape and bytes (in name order), and
the requested outputs (with any classification count), so different inputs
never share an entry. A request with parameters of its own (custom keys that
a model could read) bypasses the cache; priority, timeout and the sequence
keys do not change a result and do not. A hit is answered at once, without
touching the batcher: it counts as a success and a queue entry (0 ns) and in
``cache_hit``, never in inference_count or compute_*; a miss runs as usual and
its outputs are copied into the cache when it succeeds (``cache_miss`` counts
lookup plus insertion). Cached arrays are read-only copies, so a cached answer
equals the computed one bit for bit.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import numpy_to_raw

if TYPE_CHECKING:
    from .request import CompletionSink, InferRequest

__all__ = ["CacheConfigError", "ResponseCache", "parse_cache_config", "submit_request"]

log = logging.getLogger("tensorgate.response_cache")
_now = time.monotonic_ns
_ENTRY_OVERHEAD = 128  # bytes charged per entry besides its arrays (key, bookkeeping)

Outputs = dict[str, npt.NDArray[Any]]


class CacheConfigError(ValueError):
    """A --cache-config value that cannot be used."""


def parse_cache_config(values: Sequence[str]) -> int | None:
    """The local cache's size in bytes from ``--cache-config`` values (``local,size=N``); None = no cache."""
    size: int | None = None
    for value in values:
        kind, _, rest = value.partition(",")
        if kind.strip() != "local":
            raise CacheConfigError(f"--cache-config: only the 'local' cache exists, got '{kind.strip()}'")
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, _, raw = item.partition("=")
            if key.strip() != "size":
                raise CacheConfigError(f"--cache-config local: unknown setting '{key.strip()}' (known: size)")
            try:
                size = int(raw)
            except ValueError:
                raise CacheConfigError(f"--cache-config local: size must be a byte count, got '{raw}'") from None
            if size < 0:
                raise CacheConfigError("--cache-config local: size must be >= 0")
    return size


def _nbytes(outputs: Outputs) -> int:
    total = _ENTRY_OVERHEAD
    for name, array in outputs.items():
        total += len(name) + (sum(len(v) for v in array.reshape(-1)) if array.dtype == np.object_ else array.nbytes)
    return total


def request_key(request: InferRequest) -> bytes:
    """The cache key: model, version, inputs (name, datatype, shape, bytes) and requested outputs."""
    model = request.model
    h = hashlib.blake2b(digest_size=32)
    h.update(f"{len(model.name)}:{model.name}:{model.version}".encode())
    for name in sorted(request.inputs):
        array = request.inputs[name]
        info = model.inputs.get(name)
        datatype = info.datatype if info is not None else str(array.dtype)
        h.update(f"|{len(name)}:{name}:{datatype}:{array.dtype.str}:{array.shape}".encode())
        if array.dtype == np.object_:
            raw = numpy_to_raw(array, datatype)
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
        else:
            contiguous = np.ascontiguousarray(array)
            h.update(contiguous.nbytes.to_bytes(8, "little"))
            h.update(contiguous.reshape(-1).view(np.uint8).data)
    for out in request.requested:
        h.update(f"|out:{len(out.name)}:{out.name}:{out.classification}".encode())
    return h.digest()


class ResponseCache:
    """Responses by key, least recently used evicted first, never more than ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.evictions = 0
        self.lookups = 0
        self._entries: collections.OrderedDict[bytes, tuple[Outputs, int]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._sinks: weakref.WeakKeyDictionary[Any, _InsertSink] = weakref.WeakKeyDictionary()

    def insert_sink(self, sink: CompletionSink | None) -> _InsertSink:
        """The sink that inserts a missed request's answer, then hands it to ``sink`` (one per sink)."""
        if sink is None:
            return _InsertSink(None, self, weak=False)
        try:
            with self._lock:
                wrapper = self._sinks.get(sink)
                if wrapper is None:
                    wrapper = self._sinks[sink] = _InsertSink(sink, self)
        except TypeError:  # a sink that cannot be weakly referenced: one wrapper per request
            wrapper = _InsertSink(sink, self, weak=False)
        return wrapper

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Outputs | None:
        with self._lock:
            self.lookups += 1
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: bytes, outputs: Outputs) -> bool:
        """Copy ``outputs`` in; False when one entry alone is larger than the cache."""
        frozen: Outputs = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.flags.writeable = False
            frozen[name] = copy
        size = _nbytes(frozen)
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used_bytes -= old[1]
            while self._entries and self.used_bytes + size > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self.used_bytes -= freed
                self.evictions += 1
            self._entries[key] = (frozen, size)
            self.used_bytes += size
        return True


class _InsertSink:
    """Stands in for a transport's sink: copies missed requests' outputs into the cache, then hands them on.

    One per transport sink (not per request), so a batch still reaches its transport in one hand-off.
    It holds the transport's sink weakly: a stream that has ended drops its late answers.
    """

    __slots__ = ("__weakref__", "cache", "sink")

    def __init__(self, sink: CompletionSink | None, cache: ResponseCache, weak: bool = True) -> None:
        self.sink: Callable[[], CompletionSink | None] = (
            weakref.ref(sink) if sink is not None and weak else lambda: sink)
        self.cache = cache

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        for r in requests:
            entry = r.cache_entry
            if entry is None:
                continue
            r.cache_entry = None
            key, lookup_ns = entry
            start = _now()
            if r.error is None and r.outputs is not None:
                try:
                    self.cache.put(key, r.outputs)
                except Exception:  # a cache fault must never fail the request
                    log.exception("inserting into the response cache failed for model %s", r.model.name)
            scheduler = r.model.scheduler
            if scheduler is not None:
                scheduler.statistics.record_cache_miss(lookup_ns + _now() - start)
        sink = self.sink()
        if sink is not None:
            sink.deliver(requests)


def submit_request(request: InferRequest, cache: ResponseCache | None) -> None:
    """Queue a request on its model, answering it from the response cache when it can.

    Raises what the model's scheduler raises (queue full, unloading).
    """
    model = request.model
    scheduler = model.scheduler
    assert scheduler is not None
    if cache is None or not model.response_cache or request.parameters:
        scheduler.submit(request)
        return
    start = _now()
    key = request_key(request)
    hit = cache.get(key)
    if hit is not None:
        request.outputs = hit
        end = _now()
        scheduler.statistics.record_cache_hit(request, end - start, end)
        trace = request.trace
        if trace is not None:
            trace.cache_hit_ns = end
        sink = request.sink
        if sink is not None:
            sink.deliver([request])
        return
    request.cache_entry = (key, _now() - start)
    request.sink = cache.insert_sink(request.sink)
    scheduler.submit(request)
