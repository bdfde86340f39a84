"""The metrics endpoint: Prometheus text format on ``http://<address>:<port>/metrics``.

The families come from prometheus_client collectors; the text is written here
because prometheus_client's writer names every counter ``<name>_total``, and
Triton's counters (``nv_inference_request_success`` ...) have no suffix: the
names dashboards and perf_analyzer already use win. The server is the standard
library's threading HTTP server on a daemon thread: a scrape never touches the
gRPC event loop. With TLS, each connection's handshake runs on that
connection's own thread (never in the accept loop, so a client that stalls its
handshake holds up no one) with the context current at that moment, so a
certificate reload applies to the next connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
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


_HANDSHAKE_TIMEOUT_S = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: Callable[[], ssl.SSLContext] | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(_HANDSHAKE_TIMEOUT_S)
            try:
                request = self.tls().wrap_socket(request, server_side=True)
            except (OSError, ValueError) as exc:  # plaintext, bad or no client certificate, timeout
                log.debug("metrics TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a broken connection is the client's business: no traceback on stderr
        log.debug("metrics request from %s failed", client_address[0], exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``render(collectors)`` on GET /metrics from a background thread."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = list(collectors)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.address = ""
        self.scheme = "http"

    def start(self, address: str, port: int, tls: Callable[[], ssl.SSLContext] | None = None) -> int:
        """Bind and serve; returns the port (raises OSError when the address cannot be bound)."""
        port = self.bind(address, port, tls)
        self.serve()
        return port

    def bind(self, address: str, port: int, tls: Callable[[], ssl.SSLContext] | None = None) -> int:
        """Bind now (raises OSError); ``serve`` starts answering scrapes.

        ``tls`` gives the server-side SSL context for each new connection (HTTPS); None serves plain HTTP.
        """
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

        httpd = (_Server6 if ":" in address else _Server)((address, port), Handler)
        httpd.tls = tls
        self._httpd = httpd
        self.scheme = "https" if tls is not None else "http"
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
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._httpd is not None:
            if self._thread is not None:  # shutdown() waits for serve_forever: only when it runs
                self._httpd.shutdown()
                self._thread = None
            self._httpd.server_close()
            self._httpd = None
