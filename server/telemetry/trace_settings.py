"""Trace settings in force: global and per model, the samplers, and the TraceSetting RPC.

Triton's TraceSetting does not work in OpenTelemetry mode; tensorgate's does (an
extension), in the message format of Triton's trace extension: keys
``trace_level`` (OFF | TIMESTAMPS), ``trace_rate``, ``trace_count``, and the
read-only ``trace_file``, ``log_frequency`` ("0") and ``trace_mode``. A model's
setting follows the global one for every key it does not set itself; an empty
value clears a model's key (or resets a global key to its startup value).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from tensorgate.clients.pb import grpc_service_pb2 as pb

from ..errors import InvalidArgumentError
from .options import TRACE_LEVELS, TraceConfig

__all__ = ["Sampler", "TraceSettings"]

_KEYS = ("trace_level", "trace_rate", "trace_count")
_READ_ONLY = ("trace_file", "log_frequency", "trace_mode")


class Sampler:
    """One setting in force and its counters: Triton's 1-in-``rate`` sampling, at most ``count`` traces."""

    __slots__ = ("_lock", "_seen", "count", "level", "on", "rate")

    def __init__(self, level: str, rate: int, count: int) -> None:
        self.level = level
        self.rate = rate
        self.count = count  # remaining traces; -1 = no limit
        self.on = level != "OFF"
        self._seen = 0
        self._lock = threading.Lock()

    def sample(self) -> bool:
        """Whether to trace the next request that carries no trace context."""
        if not self.rate or not self.count:
            return False
        with self._lock:
            self._seen += 1
            if self._seen % self.rate or not self.count:
                return False
            if self.count > 0:
                self.count -= 1
            return True

    def values(self) -> dict[str, str]:
        return {"trace_level": self.level, "trace_rate": str(self.rate), "trace_count": str(self.count)}


class TraceSettings:
    """The global setting, per-model overrides, and the sampler each model uses."""

    def __init__(self, config: TraceConfig, on_change: Callable[[], None] = lambda: None) -> None:
        self._startup = {"trace_level": config.level, "trace_rate": str(config.rate),
                         "trace_count": str(config.count)}
        self._file = config.file
        self._global = Sampler(config.level, config.rate, config.count)
        self._overrides: dict[str, dict[str, str]] = {}
        self._models: dict[str, Sampler] = {}
        self._lock = threading.Lock()
        self._on_change = on_change

    def sampler(self, model: str) -> Sampler:
        """The sampler for a model's requests (the hot path: one dict lookup)."""
        return self._models.get(model) or self._global

    @property
    def any_on(self) -> bool:
        """Some model may be traced: the global level or a model's is not OFF."""
        return self._global.on or any(s.on for s in self._models.values())

    def values(self, model: str = "") -> dict[str, list[str]]:
        sampler = self._models.get(model, self._global) if model else self._global
        out = {k: [v] for k, v in sampler.values().items()}
        out["trace_file"] = [self._file]
        out["log_frequency"] = ["0"]
        out["trace_mode"] = ["opentelemetry"]
        return out

    # ---- changes -------------------------------------------------------------------

    def update(self, changes: Mapping[str, Sequence[str]], model: str = "") -> None:
        """Apply a TraceSetting request's settings (all checked before any is applied)."""
        checked = {key: _check(key, list(values)) for key, values in changes.items()}
        checked = {key: value for key, value in checked.items() if key in _KEYS}  # read-only: no-ops
        with self._lock:
            if model:
                override = dict(self._overrides.get(model, {}))
                for key, value in checked.items():
                    if value is None:
                        override.pop(key, None)
                    else:
                        override[key] = value
                if override:
                    self._overrides[model] = override
                else:
                    self._overrides.pop(model, None)
            else:
                current = self._global.values()
                for key, value in checked.items():
                    current[key] = self._startup[key] if value is None else value
                if checked:
                    self._global = _sampler(current)
            self._rebuild()
        self._on_change()

    def _rebuild(self) -> None:
        base = self._global.values()
        models: dict[str, Sampler] = {}
        for model, override in self._overrides.items():
            old = self._models.get(model)
            merged = {**base, **override}
            models[model] = old if old is not None and old.values() == merged else _sampler(merged)
        self._models = models

    def rpc(self, request: pb.TraceSettingRequest, model_known: Callable[[str], bool]) -> pb.TraceSettingResponse:
        """TraceSetting: apply the request's settings (if any), answer the settings in force."""
        model = request.model_name
        if model and not model_known(model):
            raise InvalidArgumentError(f"Request for unknown model : '{model}'")
        if request.settings:
            self.update({k: list(v.value) for k, v in request.settings.items()}, model)
        response = pb.TraceSettingResponse()
        for key, values in self.values(model).items():
            response.settings[key].value.extend(values)
        return response


def _sampler(values: Mapping[str, str]) -> Sampler:
    return Sampler(values["trace_level"], int(values["trace_rate"]), int(values["trace_count"]))


def _check(key: str, values: list[str]) -> str | None:
    """The normalised value of one setting, or None to clear it; raises InvalidArgumentError."""
    if key in _READ_ONLY:
        harmless = not values or (key == "log_frequency" and values == ["0"]) or (
            key == "trace_file" and values == [""]
        )
        if harmless:
            return None
        reason = {
            "trace_file": "the trace file is set at startup (--trace-config opentelemetry,file=PATH)",
            "log_frequency": "log_frequency applies to Triton's own trace files; tensorgate exports "
            "OpenTelemetry spans as they finish",
            "trace_mode": "tensorgate traces in opentelemetry mode only",
        }[key]
        raise InvalidArgumentError(f"trace setting '{key}' cannot be changed: {reason}")
    if key not in _KEYS:
        raise InvalidArgumentError(
            f"unknown trace setting '{key}'; expected {', '.join(_KEYS + _READ_ONLY)}"
        )
    if not values:
        return None
    if key == "trace_level":
        levels = {v.strip().upper() for v in values}
        if "TENSORS" in levels:
            raise InvalidArgumentError("trace level TENSORS is not supported in opentelemetry mode")
        unknown = levels - set(TRACE_LEVELS)
        if unknown:
            raise InvalidArgumentError(
                f"unknown trace level {sorted(unknown)}; expected {' or '.join(TRACE_LEVELS)}"
            )
        return "TIMESTAMPS" if "TIMESTAMPS" in levels else "OFF"
    if len(values) != 1:
        raise InvalidArgumentError(f"trace setting '{key}' takes one value, got {len(values)}")
    try:
        number = int(values[0])
    except ValueError:
        raise InvalidArgumentError(f"trace setting '{key}' must be an integer, got '{values[0]}'") from None
    minimum = 0 if key == "trace_rate" else -1
    if number < minimum:
        raise InvalidArgumentError(f"trace setting '{key}' must be >= {minimum}, got {number}")
    return str(number)
