"""tensorgate's gRPC inference server: settings, app, servicer, repository, registry, scheduler.

Start one with ``tensorgate serve`` (server.cli) or, in-process,
``InferenceServer(ServerSettings(...), repository)``.
"""

from __future__ import annotations

from .app import InferenceServer
from .settings import ServerSettings

__all__ = ["InferenceServer", "ServerSettings"]
