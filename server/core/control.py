"""Control calls between a front end and the engine core (load, unload, statistics), and the statistics view.

Control messages are few and small: pickled tuples over their own socket, between
processes of the same server (the core checks the peer's uid), each with an id so
several can be outstanding (a long unload never holds up a statistics call).
"""

from __future__ import annotations

import copy
import itertools
import logging
import pickle
import sys
import threading
from typing import Any

from ..errors import UnavailableError
from ..statistics import Counted, ModelStatistics
from .channel import Channel

__all__ = ["CONTROL_CALL", "CONTROL_LOG", "CONTROL_REPLY", "ControlClient", "LogForwarder", "RemoteStatistics", "read_call", "snapshot_statistics"]

CONTROL_CALL, CONTROL_REPLY, CONTROL_LOG = 16, 17, 18
_PLAIN = (str, int, float, bool, type(None))
_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
           "cache_miss", "inference_count", "execution_count", "last_inference_ms", "batches", "failure_reasons",
           "queue_full")


def read_call(body: memoryview) -> tuple[int, str, dict[str, Any]]:
    call_id, op, args = pickle.loads(body)
    if not isinstance(op, str) or not op.isidentifier() or not isinstance(args, dict):
        raise ValueError("malformed control call")
    return int(call_id), op, args


def snapshot_statistics(stats: ModelStatistics) -> dict[str, Any]:
    with stats._lock:
        return {name: copy.deepcopy(getattr(stats, name)) for name in _FIELDS}


class ControlClient:
    """The front end's side: ``call`` blocks its thread (never the event loop's reader) for the answer."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, list[Any]] = {}  # id -> [event, ok, result]
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._read, name="tg-core-control", daemon=True).start()

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """The core's answer; raises UnavailableError when the core is gone or does not answer in time,
        RuntimeError with the core's reason when the call failed there."""
        call_id = next(self._ids)
        slot: list[Any] = [threading.Event(), False, "the engine core exited"]
        with self._lock:
            if self._closed:
                raise UnavailableError("the engine core is not running; retry")
            self._waiting[call_id] = slot
        try:
            self._channel.send_object(CONTROL_CALL, (call_id, op, args))
            if not slot[0].wait(timeout):
                raise UnavailableError(f"the engine core did not answer {op} in {timeout} s")
        except OSError:
            raise UnavailableError("the engine core is not running; retry") from None
        finally:
            with self._lock:
                self._waiting.pop(call_id, None)
        if not slot[1]:
            if slot[2] == "the engine core exited":
                raise UnavailableError("the engine core exited; retry")
            raise RuntimeError(slot[2])
        return slot[2]

    def _read(self) -> None:
        try:
            for kind, body in self._channel.frames():
                if kind == CONTROL_LOG:
                    _emit(pickle.loads(body))
                    continue
                if kind != CONTROL_REPLY:
                    continue
                call_id, ok, result = pickle.loads(body)
                with self._lock:
                    slot = self._waiting.get(call_id)
                if slot is not None:
                    slot[1], slot[2] = ok, result
                    slot[0].set()
        except Exception:  # a broken control socket is a dead core: every waiter is told below
            pass
        with self._lock:
            self._closed = True
            waiting = list(self._waiting.values())
        for slot in waiting:
            slot[0].set()


class LogForwarder(logging.Handler):
    """In the core: every record goes to the front end that started it, which logs it as its own (same
    format, same --log-file, JSON or not); the record's message is formatted here, its extra fields kept."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: v for k, v in record.__dict__.items() if isinstance(v, _PLAIN)}
            fields["msg"], fields["args"] = record.getMessage(), None
            if record.exc_info:
                fields["exc_text"] = self._formatter.formatException(record.exc_info)
            fields["tensorgate_core"] = True
            self._channel.send_object(CONTROL_LOG, fields)
        except OSError:  # the front end has gone (the core is stopping): the line goes to stderr instead
            sys.stderr.write(f"tensorgate engine core: {record.levelname} {record.name}: {record.getMessage()}\n")
        except Exception:  # logging must never take the core down
            self.handleError(record)


def _emit(fields: dict[str, Any]) -> None:
    logger = logging.getLogger(str(fields.get("name", "tensorgate.core")))
    record = logging.makeLogRecord(fields)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class RemoteStatistics(ModelStatistics):
    """A model's statistics as the core counts them, plus what this front end counted itself (cache hits).

    Records go to the front end's own counters; the fields are read from the core once, when first used,
    so a cache miss recording its time costs no round trip.
    """

    def __init__(self, local: ModelStatistics, fetch: Any) -> None:  # no super().__init__: fields come lazily
        self.__dict__["_local"] = local
        self.__dict__["_fetch"] = fetch

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_local", "_fetch"):
            raise AttributeError(name)
        self._fill()
        return self.__dict__[name] if name in self.__dict__ else super().__getattribute__(name)

    def _fill(self) -> None:
        merged = ModelStatistics()
        snapshot = self._fetch()
        for key, value in (snapshot or {}).items():
            setattr(merged, key, value)
        local: ModelStatistics = self.__dict__["_local"]
        with local._lock:
            for name in ("success", "fail", "queue", "cache_hit", "cache_miss"):
                ours = getattr(local, name)
                getattr(merged, name).add(ours.count, ours.ns)
            for reason, count in local.failure_reasons.items():
                merged.failure_reasons[reason] = merged.failure_reasons.get(reason, 0) + count
            merged.last_inference_ms = max(merged.last_inference_ms, local.last_inference_ms)
            merged.inference_count += local.inference_count
            merged.execution_count += local.execution_count
        self.__dict__.update(merged.__dict__)

    # records: into the front end's counters
    def record_cache_hit(self, request: Counted, lookup_ns: int, end: int) -> None:
        self.__dict__["_local"].record_cache_hit(request, lookup_ns, end)

    def record_cache_miss(self, ns: int) -> None:
        self.__dict__["_local"].record_cache_miss(ns)

    def record_failures(self, requests: Any, end: int, reason: str = "OTHER") -> None:
        self.__dict__["_local"].record_failures(requests, end, reason)

    def record_queue_full(self, request: Counted, end: int) -> None:
        self.__dict__["_local"].record_queue_full(request, end)
