"""The metrics endpoint: Prometheus text format on ``http://<address>:<port>/metrics``.

The families come from prometheus_client collectors; the text is written here
because prometheus_client's writer names every counter ``<name>_total``, and
Triton's counters (``nv_inference_request_success`` ...) have no suffix: the
names dashboards and perf_analyzer already use win. The server is the standard
library's threading HTTP server on a daemon thread: a scrape never touches the
gRPC event loop.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _go_float

__all__ = ["CONTENT_TYPE", "MetricsServer", "render"]

log = logging.getLogger("tensorgate.telemetry.metrics_http")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {"counter": "counter", "gauge": "gauge", "summary": "summary", "histogram": "histogram"}


def _number(value: float) -> str:
    text: str = _go_float(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(collectors: Iterable[Collector]) -> bytes:
    """The Prometheus text exposition (0.0.4) of every family the collectors yield."""
    lines: list[str] = []
    for collector in collectors:
        try:
            metrics = list(collector.collect())
        except Exception:  # one broken source must not empty the whole scrape
            log.warning("metrics collector %s failed", type(collector).__name__, exc_info=True)
            continue
        for metric in metrics:
            samples = [s for s in metric.samples if not s.name.endswith("_created")]
            name = metric.name
            if metric.type == "counter" and samples and all(s.name == name + "_total" for s in samples):
                name += "_total"  # prometheus_client's own counters
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {_TYPES.get(metric.type, 'untyped')}")
            for s in samples:
                labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in s.labels.items())
                lines.append(f"{s.name}{{{labels}}} {_number(s.value)}" if labels
                             else f"{s.name} {_number(s.value)}")
    return ("\n".join(lines) + "\n").encode()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``render(collectors)`` on GET /metrics from a background thread."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = list(collectors)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.address = ""

    def start(self, address: str, port: int) -> int:
        """Bind and serve; returns the port (raises OSError when the address cannot be bound)."""
        port = self.bind(address, port)
        self.serve()
        return port

    def bind(self, address: str, port: int) -> int:
        """Bind now (raises OSError); ``serve`` starts answering scrapes."""
        collectors = self.collectors

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/metrics/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(collectors)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        httpd = (_Server6 if ":" in address else ThreadingHTTPServer)((address, port), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self.address = address
        self.port = int(httpd.server_address[1])
        return self.port

    def serve(self) -> None:
        assert self._httpd is not None, "bind() first"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tg-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._httpd is not None:
            if self._thread is not None:  # shutdown() waits for serve_forever: only when it runs
                self._httpd.shutdown()
                self._thread = None
            self._httpd.server_close()
            self._httpd = None
