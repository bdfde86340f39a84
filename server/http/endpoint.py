"""The HTTP endpoint's lifecycle: bind early, serve on the running event loop, stop with a grace period.

aiohttp serves on the same asyncio loop as grpc.aio (one loop, one data plane,
one batcher; futures resolved once per batch): it is asyncio-native, well kept,
and brings what this endpoint needs without hand-written HTTP parsing (keep-alive,
gzip/deflate both ways, a body size limit, handler cancellation when a client
leaves, TLS through an ``ssl.SSLContext``). The socket is bound by ``bind`` before
any model loads, so a taken port fails the start at once.
"""

from __future__ import annotations

import socket
import ssl

from aiohttp import web

from ..dataplane import DataPlane
from .routes import Authorize, make_http_app

__all__ = ["HttpEndpoint"]


class HttpEndpoint:
    """Triton's HTTP/REST protocol on one address.

    Args:
        plane: the data plane shared with gRPC.
        ssl_context: serve HTTPS with it when given.
        authorize: the access-control hook, ``(group, headers) -> refusal or None``.
        max_body_bytes: the largest request body accepted (413 above it).
    """

    def __init__(self, plane: DataPlane, ssl_context: ssl.SSLContext | None = None,
                 authorize: Authorize | None = None, max_body_bytes: int = 2**31 - 1) -> None:
        self._app = make_http_app(plane, authorize, max_body_bytes)
        self._ssl = ssl_context
        self._socket: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self.address = ""
        self.port = 0

    def bind(self, address: str, port: int, reuse_port: bool = False) -> int:
        """Bind and listen now (raises OSError); serving starts with ``start``."""
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what asyncio's create_server does
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # --workers share the port
            sock.bind((address, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.address = address
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self, grace: float = 30.0) -> None:
        assert self._socket is not None, "bind() first"
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None, handler_cancellation=True,
                               shutdown_timeout=grace)
        await runner.setup()
        await web.SockSite(runner, self._socket, ssl_context=self._ssl).start()
        self._runner = runner

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self._ssl else 'http'}://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace period), close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
