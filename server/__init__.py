"""tensorgate's gRPC inference server: settings, app, servicer, repository, registry, scheduler.

Start one with ``tensorgate serve`` (server.cli) or, in-process,
``InferenceServer(ServerSettings(...), repository)``.
"""

from __future__ import annotations

import os

# gRPC's core writes a line to stderr for every failed TLS handshake (absl logging at INFO, outside our
# log, unthrottled): a flood of plaintext connections would flood the log. ERROR is gRPC's documented
# default; it must be set before grpc is first imported. A value the user chose wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .app import InferenceServer
from .settings import ServerSettings

__all__ = ["InferenceServer", "ServerSettings"]
