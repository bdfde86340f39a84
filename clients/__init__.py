"""tensorgate's client library: generated stubs (clients.pb), the datatype codec, sync and asyncio clients."""

from __future__ import annotations

from .codec import CodecError

__all__ = ["CodecError"]
