"""ServerError -> HTTP status and ``{"error": "..."}``, as Triton's HTTP endpoint answers.

The exception -> (status, client-safe message) step is the one the gRPC
servicer uses (``server.servicer.status_for``: it also logs the failure once);
this module only adds Triton's core-error -> HTTP table (``HttpCodeFromError``
in Triton's http_server.cc): INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503,
UNSUPPORTED 501, everything else (INVALID_ARG, CANCELLED, ...) 400. A request
that timed out in the queue is UNAVAILABLE in Triton's core, hence 503.
"""

from __future__ import annotations

import json

import grpc
from aiohttp import web

from ..servicer import status_for

__all__ = ["HTTP_STATUS", "error_response", "http_status_for"]

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


def http_status_for(exc: BaseException, request_id: str = "", trace_id: str = "") -> tuple[int, str]:
    """(HTTP status, client-safe message) of a failure; logs it once, as the gRPC path does."""
    code, message = status_for(exc, request_id, trace_id)
    return HTTP_STATUS.get(code, 400), message


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json")
