"""KServe v2 REST / Triton's HTTP protocol beside gRPC, on aiohttp, over the same data plane."""

from __future__ import annotations

from .endpoint import HttpEndpoint
from .routes import GROUPS, Authorize, allow_all, make_http_app, policy_authorizer

__all__ = ["GROUPS", "Authorize", "HttpEndpoint", "allow_all", "make_http_app", "policy_authorizer"]
