"""Admission and drain: which inference calls the server takes, and waiting for the taken ones on shutdown.

Why this exists: grpc's ``server.stop(grace)`` is not a drain. gRPC core's
``grpc_server_shutdown_and_notify`` cancels every call that has reached the
transport but has not yet been handed to a handler (grpc.aio asks core for calls
one at a time, so under a burst many wait there), and an open stream never ends
by itself, so it is cancelled when the grace runs out. The server therefore
drains at the handler level first, in three steps:

1. ``begin_drain``: the server reports not ready at once, but calls that reach a
   handler are still admitted until they stop coming for a moment (at most
   half a second): they are the ones gRPC had already received before the signal.
2. ``close``: every new inference call or stream is refused with UNAVAILABLE (the
   client retries elsewhere) while the admitted ones run to completion.
3. When none is left (or the exit timeout passes) late arrivals are still refused
   until they stop coming, and only then is gRPC stopped.

Thread-safe: the thread flavour admits from pool threads, grpc.aio from the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import UnavailableError

__all__ = ["SHUTTING_DOWN", "Admission"]

SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class Admission:
    """Counts admitted inference calls (unary requests and open streams) and refuses new ones once closed."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = False
        self.draining = False  # not ready any more; still admitting what gRPC already received
        self._active = 0
        self.last_arrival = 0.0  # monotonic time of the last call admitted while draining
        self._listeners: dict[int, Callable[[], object]] = {}
        self._next_listener = 0
        self.last_refused = 0.0  # monotonic time of the last call refused while draining

    @property
    def open(self) -> bool:
        return self._open

    @property
    def active(self) -> int:
        return self._active

    def reopen(self) -> None:
        """Start admitting (the server is up)."""
        with self._cond:
            self._open = True
            self.draining = False

    def begin_drain(self) -> None:
        """Not ready from now on; calls gRPC already holds are still admitted until `close`."""
        with self._cond:
            self.draining = True
            self.last_arrival = time.monotonic()

    def enter(self) -> None:
        """Admit one call; raises UnavailableError once the server is draining."""
        with self._cond:
            if not self._open:
                self.last_refused = time.monotonic()
                raise UnavailableError(SHUTTING_DOWN)
            if self.draining:
                self.last_arrival = time.monotonic()
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def on_close(self, callback: Callable[[], object]) -> Callable[[], object]:
        """Call `callback` (once, from the closing thread) when draining starts; returns the unsubscriber.

        Open streams use it to wake up, finish their admitted requests and end.
        """
        with self._cond:
            if not self._open:
                callback_now = True
            else:
                callback_now = False
                key = self._next_listener
                self._next_listener += 1
                self._listeners[key] = callback
        if callback_now:
            callback()
            return lambda: None

        def unsubscribe() -> None:
            with self._cond:
                self._listeners.pop(key, None)

        return unsubscribe

    def close(self) -> None:
        """Refuse new calls from now on and wake the open streams."""
        with self._cond:
            self._open = False
            self.draining = True
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for callback in listeners:
            callback()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no admitted call is left; False when `timeout` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)

    def wait_arrivals_quiet(self, quiet: float, limit: float) -> None:
        """Block until no call was admitted for `quiet` seconds since `begin_drain` (at most `limit`)."""
        self._wait_quiet(lambda: self.last_arrival, quiet, limit)

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Block until no call was refused for `quiet` seconds (at most `limit`).

        Stopping gRPC cancels the calls it has received but not yet handed over; a
        client that sent one just as the drain ended should get UNAVAILABLE instead.
        """
        started = time.monotonic()
        # from the drain's end too: calls a client sent on its last answer are still arriving
        self._wait_quiet(lambda: max(self.last_refused, started), quiet, limit)

    @staticmethod
    def _wait_quiet(last: Callable[[], float], quiet: float, limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:
            now = time.monotonic()
            if now - last() >= quiet or now >= deadline:
                return
            time.sleep(min(quiet, deadline - now))
