"""Structured logs and the LogSettings RPC.

Log lines about a model's state carry ``model``, ``version`` and ``state``; lines
about a failed request carry ``request_id``, ``trace_id`` (from the request's
trace, or the W3C traceparent the client sent) and ``grpc_code``. The
``default`` and ``ISO8601`` formats (Triton's two) show them in the text;
``json`` writes one object per line with them as fields.

Logging is process-wide, so one LogControl (``LOGS``) owns it. ``tensorgate
serve`` installs its handler on the root logger; the LogSettings RPC (keys
``log_file``, ``log_info``, ``log_warning``, ``log_error``, ``log_verbose_level``,
``log_format``, as in Triton) changes it at run time. A server embedded in
another program without ``install`` only has its ``tensorgate`` logger's level
changed by the RPC.

Clients choose much of what is logged (model names, versions, request ids,
parameters), so every line is escaped: control characters, newlines and the
Unicode line separators become visible escapes, in the plain formats and in
JSON alike, and no client can forge a line. ``log_file`` may only name a file
directly inside ``--log-dir`` (refused without it), opened without following
symlinks, so the RPC cannot reach the rest of the file system.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
import time
from typing import Any, TextIO

from tensorgate.clients.pb import grpc_service_pb2 as pb

from ..errors import InvalidArgumentError
from .log_fields import model_state, request_fields
from .options import LOG_FORMATS, TelemetrySettings
from .tracing import parse_traceparent

__all__ = [
    "LOGS",
    "LogControl",
    "configure_logs",
    "escape_log_text",
    "failure_trace_id",
    "model_state",
    "request_fields",
]

log = logging.getLogger("tensorgate.telemetry.logs")

_NO_LOCK = threading.Lock()
_FIELDS = ("model", "version", "state", "reason", "request_id", "trace_id", "grpc_code")
_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _escape_table() -> dict[int, str]:
    table = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
    return table


_ESCAPES = _escape_table()


def escape_log_text(text: str) -> str:
    """One log line stays one line: control characters and line separators become visible escapes."""
    return text.translate(_ESCAPES)


def failure_trace_id(exc: BaseException, context: Any) -> str:
    """The trace id to log with a failed request: its trace's, else the traceparent the client sent.

    Called on failure paths only, so reading the metadata costs nothing on success.
    """
    traced = getattr(exc, "trace_id", "")
    if traced:
        return str(traced)
    try:
        metadata = context.invocation_metadata() or ()
    except Exception:  # a context without metadata (tests, closed calls)
        return ""
    for key, value in metadata:
        if key == "traceparent":
            parsed = parse_traceparent(value)
            return f"{parsed[0]:032x}" if parsed else ""
    return ""


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": escape_log_text(record.getMessage()),
        }
        for key in _FIELDS:
            value = record.__dict__.get(key)
            if value not in (None, ""):
                out[key] = escape_log_text(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _PlainFormatter(logging.Formatter):
    """Triton's default format, the message escaped (a traceback, ours, keeps its lines)."""

    def __init__(self) -> None:
        super().__init__(_PLAIN)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_log_text(record.message)
        return super().formatMessage(record)


class _IsoFormatter(_PlainFormatter):

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _formatter(name: str) -> logging.Formatter:
    if name == "json":
        return _JsonFormatter()
    if name == "ISO8601":
        return _IsoFormatter()
    return _PlainFormatter()


class _OwnedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for a file opened here: closing the handler closes the file."""

    def close(self) -> None:
        with self.lock if self.lock is not None else _NO_LOCK:
            self.flush()
            self.stream.close()
        super().close()


class LogControl:
    """The process's log settings and the handler that applies them."""

    def __init__(self) -> None:
        self.file = ""
        self.info = True
        self.warning = True
        self.error = True
        self.verbose = 0
        self.format = "default"
        self.log_dir = ""  # where the LogSettings RPC may put log_file; "" = it may not move it
        self._stream: TextIO | None = None  # where log_file "" writes (stderr unless install named one)
        self._handler: logging.Handler | None = None
        self._logger = logging.getLogger()
        self._lock = threading.Lock()

    @property
    def installed(self) -> bool:
        return self._handler is not None

    def _gate(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return self.error
        if level >= logging.WARNING:
            return self.warning
        if level >= logging.INFO:
            return self.info
        return self.verbose > 0

    def install(self, *, verbose: int = 0, log_format: str = "default", log_file: str = "", info: bool = True,
                warning: bool = True, error: bool = True, stream: TextIO | None = None,
                logger: logging.Logger | None = None, log_dir: str = "") -> None:
        """Own the output of ``logger`` (the root logger: `tensorgate serve`); replaces its handlers."""
        with self._lock:
            self.log_dir = log_dir
            self._stream = stream
            self.verbose, self.format, self.info, self.warning, self.error = verbose, log_format, info, warning, error
            root = self._logger = logger or logging.getLogger()
            for handler in list(root.handlers):
                root.removeHandler(handler)
            self.file = log_file
            self._handler = self._open(log_file, stream)
            root.addHandler(self._handler)
            self._apply_levels()

    def _open(self, log_file: str, stream: TextIO | None = None, opened: TextIO | None = None) -> logging.Handler:
        handler: logging.Handler
        if opened is not None:
            handler = _OwnedStreamHandler(opened)
        elif log_file:  # the operator's --log-file: any path
            handler = logging.FileHandler(log_file, encoding="utf-8")
        else:
            handler = logging.StreamHandler(stream or self._stream or sys.stderr)
        handler.addFilter(self._gate)
        handler.setFormatter(_formatter(self.format))
        return handler

    def _apply_levels(self) -> None:
        if self._handler is not None:
            self._logger.setLevel(logging.DEBUG if self.verbose > 0 else logging.INFO)
            self._handler.setFormatter(_formatter(self.format))
            return
        lowest = next((lv for lv, on in ((logging.DEBUG, self.verbose > 0), (logging.INFO, self.info),
                                         (logging.WARNING, self.warning), (logging.ERROR, self.error)) if on),
                      logging.CRITICAL + 1)
        logging.getLogger("tensorgate").setLevel(lowest)

    # ---- the LogSettings RPC ---------------------------------------------------------------

    def rpc(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        """Apply the request's settings (all checked first), answer the settings in force."""
        changes: dict[str, Any] = {}
        for key, value in request.settings.items():
            which = value.WhichOneof("parameter_choice")
            if key in ("log_info", "log_warning", "log_error"):
                if which != "bool_param":
                    raise InvalidArgumentError(f"log setting '{key}' must be a bool_param")
                changes[key] = value.bool_param
            elif key == "log_verbose_level":
                if which != "uint32_param":
                    raise InvalidArgumentError("log setting 'log_verbose_level' must be a uint32_param")
                changes[key] = value.uint32_param
            elif key in ("log_format", "log_file"):
                if which != "string_param":
                    raise InvalidArgumentError(f"log setting '{key}' must be a string_param")
                if key == "log_format" and value.string_param not in LOG_FORMATS:
                    raise InvalidArgumentError(
                        f"unknown log_format '{value.string_param}'; expected one of {', '.join(LOG_FORMATS)}"
                    )
                changes[key] = value.string_param
            else:  # Triton ignores keys it does not know
                log.warning("LogSettings: ignoring unknown setting '%s'", key)
        if changes:
            self._change(changes)
        return self.to_pb()

    def _change(self, changes: dict[str, Any]) -> None:
        with self._lock:
            if "log_file" in changes and changes["log_file"] != self.file:
                self._switch_file(changes["log_file"])
            self.info = changes.get("log_info", self.info)
            self.warning = changes.get("log_warning", self.warning)
            self.error = changes.get("log_error", self.error)
            self.verbose = changes.get("log_verbose_level", self.verbose)
            self.format = changes.get("log_format", self.format)
            self._apply_levels()

    def _switch_file(self, path: str) -> None:
        if self._handler is None:
            raise InvalidArgumentError("log_file can only be changed on a server started by `tensorgate serve`")
        handler = self._open("", opened=_open_in_log_dir(self.log_dir, path)) if path else self._open("")
        self._logger.addHandler(handler)
        self._logger.removeHandler(self._handler)
        self._handler.close()
        self._handler = handler
        self.file = path

    def to_pb(self) -> pb.LogSettingsResponse:
        response = pb.LogSettingsResponse()
        s = response.settings
        s["log_file"].string_param = self.file
        s["log_info"].bool_param = self.info
        s["log_warning"].bool_param = self.warning
        s["log_error"].bool_param = self.error
        s["log_verbose_level"].uint32_param = self.verbose
        s["log_format"].string_param = self.format
        return response

    def uninstall(self) -> None:
        """Give the logger back (tests): remove the handler, forget the settings' effect."""
        with self._lock:
            if self._handler is not None:
                self._logger.removeHandler(self._handler)
                self._handler.close()
                self._handler = None
            self._logger = logging.getLogger()

    def snapshot(self) -> dict[str, Any]:
        return {"log_file": self.file, "log_info": self.info, "log_warning": self.warning, "log_error": self.error,
                "log_verbose_level": self.verbose, "log_format": self.format}


_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _open_in_log_dir(log_dir: str, path: str) -> TextIO:
    """Open `path` for append, only when it names a regular file directly inside `log_dir`.

    The file is opened relative to the folder's own descriptor with O_NOFOLLOW, so
    neither ``..``, nor an absolute path elsewhere, nor a symlink planted in the
    folder (before or after the check) leads out of it; a FIFO or device is refused.
    """
    shown = escape_log_text(path if len(path) <= 200 else path[:200] + "...")
    if not log_dir:
        raise InvalidArgumentError(
            "log_file cannot be changed: the server was started without --log-dir (log files may only be "
            "created inside that folder)"
        )
    folder = os.path.realpath(log_dir)
    name = os.path.basename(path)
    parent = os.path.dirname(path)
    if "\0" in path or name in ("", ".", "..") or (parent and os.path.realpath(os.path.join(folder, parent)) != folder):
        raise InvalidArgumentError(f"log_file '{shown}' must name a file directly inside the --log-dir folder")
    try:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fd = os.open(name, _OPEN_FLAGS, 0o640, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot open log file '{shown}' inside --log-dir: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgumentError(f"log_file '{shown}' is not a regular file")
    os.set_blocking(fd, True)
    return open(fd, "a", encoding="utf-8")  # the handler owns it and closes it


#: the process's log control (logging is process-wide)
LOGS = LogControl()


def configure_logs(settings: TelemetrySettings, verbose: int) -> None:
    """`tensorgate serve`'s logging: LOGS owns the root logger with the flags' format, file and switches."""
    LOGS.install(verbose=verbose, log_format=settings.log_format, log_file=settings.log_file,
                 info=settings.log_info, warning=settings.log_warning, error=settings.log_error,
                 log_dir=settings.log_dir)
