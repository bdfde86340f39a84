"""The front end's side of the engine core: start it, load through it, submit to it, restart it when it dies.

``EngineCoreClient.load_version`` is the registry's version loader in process mode: the
core builds the engine, completes the config, warms up and starts the real Scheduler;
the front end keeps a ModelVersion with the effective config and tensors (all that
request validation needs) whose scheduler is a ``CoreScheduler`` proxy.

Submits write one SUBMIT frame each; on the event loop's thread they are gathered and
written once per loop iteration (``call_soon``), elsewhere (the thread-pool flavour,
ensemble steps) at once. A reader thread takes DONE frames (one per batch), copies the
outputs out of the arena, frees the blocks and hands each sink its requests, as the
inline Scheduler does.

A core that exits is restarted: its in-flight requests fail with UNAVAILABLE at once,
the versions it had are loaded into the new core, and the proxies follow them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ..errors import UnavailableError
from ..request import InferRequest, by_sink
from ..servicer import LoopSink
from ..telemetry import tracing as _tracing
from .arena import Allocator, Arena
from .channel import Channel, FrameParser, check_peer, error_for
from .control import ControlClient
from .link import VersionSlot
from .protocol import DONE, encode_cancel, encode_free, encode_submit, read_done
from .versions import CoreVersions

__all__ = ["EngineCoreClient", "core_log_level", "core_reader"]

log = logging.getLogger("tensorgate.core")

ARENA_BYTES = 64 << 20  # per direction; memfd pages are only used once touched
_FREE_BATCH = 64  # output blocks waiting to be freed before a FREE frame goes out on its own
_RESTART_MIN_S = 0.2
_RESTART_MAX_S = 10.0


class EngineCoreClient(CoreVersions):
    """One engine core process and the front end's connection to it."""

    def __init__(self, log_level: str = "WARNING", arena_bytes: int = ARENA_BYTES, *, listen: bool = False,
                 connect: str = "", reader: str = "thread") -> None:
        """``listen``: this front end starts the core and lets more front ends connect (--frontends N);
        ``connect``: the socket path of a core another front end started (this one is front end 2..N);
        ``reader``: "thread" (a reader thread takes the core's answers) or "loop" (the event loop set in
        ``loop`` reads them itself with add_reader: no thread hand-off; README has the measurement)."""
        self.reader = reader
        self.loop: asyncio.AbstractEventLoop | None = None
        self._log_level = log_level
        self._connect_path = connect
        self._private_dir = "" if connect or not listen else tempfile.mkdtemp(prefix="tensorgate-core-")  # 0700
        self.socket_path = connect or (os.path.join(self._private_dir, "core.sock") if self._private_dir else "")
        self.input_arena = Arena.create(arena_bytes, "tensorgate-inputs")
        self.output_arena = Arena.create(arena_bytes, "tensorgate-outputs")
        self._in_alloc = Allocator(arena_bytes)
        self._tokens = itertools.count(1)
        self._inflight: dict[int, tuple[InferRequest, list[int], VersionSlot]] = {}
        self._token_of: dict[int, int] = {}  # id(request) -> token, for cancel
        self._lock = threading.Lock()
        self._slots: list[VersionSlot] = []
        self._outbox: list[bytes] = []
        self._frees: list[int] = []  # output blocks to free in the core, sent with the next write
        self._outbox_lock = threading.Lock()
        self._up = False
        self._started = False  # the first start answered: from then on a dead core is restarted
        self._restarting = False
        self._again = False
        self._stopping = False
        self._generation = 0
        self._last_start = 0.0
        self._backoff = _RESTART_MIN_S
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._data: Channel | None = None
        self._control: ControlClient | None = None
        self._control_channel: Channel | None = None

    # ---- process ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the core and wait until it answers (raises OSError / UnavailableError when it cannot)."""
        data_here, data_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control_here, control_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (data_there.fileno(), control_there.fileno(), self.input_arena.fd, self.output_arena.fd)
        self._last_start = time.monotonic()
        try:
            if self._connect_path:
                self._attach(fds)
            else:
                cmd = [sys.executable, "-m", "tensorgate.server.core.engine", "--data-fd", str(fds[0]),
                       "--control-fd", str(fds[1]), "--input-arena-fd", str(fds[2]), "--output-arena-fd",
                       str(fds[3]), "--log-level", self._log_level]
                if self.socket_path:
                    cmd += ["--listen", self.socket_path]
                self.process = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL)
        except BaseException:
            data_here.close()
            control_here.close()
            raise
        finally:
            data_there.close()
            control_there.close()
        for sock in (data_here, control_here):
            check_peer(sock)
        self._in_alloc.reset()
        self._data = Channel(data_here)
        self._control_channel = Channel(control_here)
        self._control = ControlClient(self._control_channel)
        self._generation += 1
        if self.reader == "loop" and self.loop is not None:
            self.loop.call_soon_threadsafe(self._add_reader, self.loop, self._data, self._generation)
        else:
            threading.Thread(target=self._read, args=(self._data, self._generation), name="tg-core-reader",
                             daemon=True).start()
        try:
            pid = self._control.call("ping", timeout=120)
        except BaseException:
            self._abandon()  # a core that does not answer is stopped, never left running beside the next one
            raise
        self._up = True
        self._started = True
        log.info("engine core process %d started", pid)

    def _abandon(self) -> None:
        for channel in (self._data, self._control_channel):
            if channel is not None:
                channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _attach(self, fds: tuple[int, int, int, int]) -> None:
        """Hand our socket ends and arenas to a core another front end started (raises OSError when it is not up)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self._connect_path)
            check_peer(sock)
            socket.send_fds(sock, [b"tensorgate front end"], list(fds))

    def stop(self) -> None:
        """Stop the core (the versions were unloaded by the registry) and unmap the arenas."""
        self._stopping = True
        self._up = False
        for channel in (self._data, self._control_channel):
            if channel is not None:
                channel.close()
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._fail_inflight("the server is stopping")
        self.input_arena.close()
        self.output_arena.close()
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def _call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        control = self._control
        if control is None or not self._up:
            raise UnavailableError("the engine core is restarting; retry")
        return control.call(op, timeout, **args)

    # ---- requests -------------------------------------------------------------------------------

    def submit(self, slot: VersionSlot, request: InferRequest) -> None:
        data = self._data
        if data is None or not self._up or not slot.handle:
            raise UnavailableError(f"model '{slot.name}': the engine core is restarting; retry")
        token = next(self._tokens)
        blocks: list[int] = []
        message = encode_submit(token, slot.handle, request, slot.inputs, slot.output_index, self.input_arena,
                                self._in_alloc, blocks)
        with self._lock:
            self._inflight[token] = (request, blocks, slot)
            self._token_of[id(request)] = token
            slot.pending += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        try:
            if loop is None:
                data.send(self._take_frees() + message)
                return
            # on the event loop: every submit of this iteration goes out in one write (the lock: another
            # thread's loop, if any, shares the outbox)
            with self._outbox_lock:
                self._outbox.append(message)
                first = len(self._outbox) == 1
            if first:
                loop.call_soon(self._flush)
        except OSError:
            self._forget(token)
            raise UnavailableError(f"model '{slot.name}': the engine core exited; retry") from None

    def _flush(self) -> None:
        with self._outbox_lock:
            outbox, self._outbox = self._outbox, []
        data = self._data
        if not outbox or data is None:
            return
        try:
            data.send(self._take_frees() + b"".join(outbox))
        except OSError:  # the reader sees the core's exit and fails these requests
            pass

    def cancel(self, request: InferRequest) -> bool:
        """Ask the core to drop a queued request; it answers (CANCELLED, or the result) either way."""
        token = self._token_of.get(id(request))
        data = self._data
        if token is not None and data is not None:
            try:
                data.send(encode_cancel(token))
            except OSError:
                pass
        return False

    def _forget(self, token: int) -> tuple[InferRequest, list[int], VersionSlot] | None:
        with self._lock:
            entry = self._inflight.pop(token, None)
            if entry is not None:
                self._token_of.pop(id(entry[0]), None)
                entry[2].pending -= 1
        if entry is not None:
            for offset in entry[1]:
                self._in_alloc.free(offset)
        return entry

    def _read(self, data: Channel, generation: int) -> None:
        freed: list[int] = []
        try:
            for kind, body in data.frames():
                if kind != DONE:
                    continue
                instance, done = read_done(body, self.output_arena, freed)
                freed = self._free_later(data, freed)
                self._complete(instance, done)
        except Exception:  # a frame that does not parse: treat the core as broken
            log.exception("engine core: unreadable message; restarting it")
        if self._claim_restart(generation):
            self._core_exited()

    def _free_later(self, data: Channel, freed: list[int]) -> list[int]:
        """Output blocks copied out: tell the core with the next submit write (a FREE frame alone would wake
        its reader thread once per batch), or now once many are waiting. Returns an empty list to reuse."""
        if not freed:
            return freed
        with self._lock:
            self._frees.extend(freed)
            if len(self._frees) < _FREE_BATCH:
                return []
            frees, self._frees = self._frees, []
        try:
            data.send(encode_free(frees))
        except OSError:
            pass
        return []

    def _take_frees(self) -> bytes:
        if not self._frees:
            return b""
        with self._lock:
            frees, self._frees = self._frees, []
        return encode_free(frees) if frees else b""

    def _add_reader(self, loop: asyncio.AbstractEventLoop, data: Channel, generation: int) -> None:
        """Read DONE frames on the event loop: the futures resolve in the same callback, no thread hop."""
        parser = FrameParser()
        fd = data.sock.fileno()
        freed: list[int] = []

        def readable() -> None:
            try:
                chunk = data.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            try:
                frames = parser.feed(chunk) if chunk else None
                for kind, body in frames or ():
                    if kind == DONE:
                        instance, done = read_done(body, self.output_arena, freed)
                        self._free_later(data, freed)
                        freed.clear()
                        self._complete(instance, done)
            except Exception:
                log.exception("engine core: unreadable message; restarting it")
                frames = None
            if frames is None:  # the core went away (or broke): restart it off the loop
                loop.remove_reader(fd)
                if self._claim_restart(generation):
                    threading.Thread(target=self._core_exited, name="tg-core-restart", daemon=True).start()

        if fd >= 0:
            loop.add_reader(fd, readable)

    def _complete(self, instance: str, done: list[Any]) -> None:
        finished: list[InferRequest] = []
        for d in done:
            entry = self._forget(d.token)
            if entry is None:
                continue
            request, _blocks, slot = entry
            request.compute_start_ns, request.compute_input_end_ns = d.times[0], d.times[1]
            request.compute_output_start_ns, request.compute_end_ns = d.times[2], d.times[3]
            if d.status:
                request.error = error_for(d.status, d.message, slot.name)
            else:
                request.outputs = {slot.outputs[i]: array for i, array in d.outputs}
            finished.append(request)
        if _tracing.ANY_ACTIVE and finished and finished[0].compute_start_ns:
            _tracing.record_batch(finished, instance)
        _deliver(finished)

    # ---- a dead core ---------------------------------------------------------------------------------

    def _fail_inflight(self, why: str) -> None:
        with self._lock:
            entries = list(self._inflight.values())
            self._inflight.clear()
            self._token_of.clear()
            for _request, _blocks, slot in entries:
                slot.pending = 0
        self._in_alloc.reset()
        self._frees = []  # the next core starts with an empty output arena
        failed = []
        for request, _blocks, _slot in entries:
            request.error = UnavailableError(f"model '{request.model.name}': {why}; retry")
            failed.append(request)
        _deliver(failed)

    def _claim_restart(self, generation: int) -> bool:
        """The current core's connection ended: True for the one caller that restarts it. A core that dies
        while a restart is starting it is the restart loop's business, and one that never answered at the
        server's start is the start's."""
        with self._lock:
            if self._restarting and generation == self._generation:
                self._again = True  # the new core died while it was being loaded: the restart loop goes on
            if generation != self._generation or self._restarting or not self._started or self._stopping:
                return False
            self._restarting = True
            return True

    def _core_exited(self) -> None:
        try:
            while True:
                self._again = False
                self._restart()
                with self._lock:
                    if not self._again or self._stopping:
                        break
        finally:
            self._restarting = False

    def _restart(self) -> None:
        self._up = False
        if self._stopping:
            return
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # alive but broken (a message that did not parse): a fresh one replaces it
        code = self.process.wait() if self.process is not None else None
        log.error("engine core process exited (status %s): failing its in-flight requests, %s", code,
                  "reconnecting" if self._connect_path else "restarting it")
        self._fail_inflight("the engine core exited while running this request")
        for channel in (self._data, self._control_channel):
            if channel is not None:
                channel.close()
        while not self._stopping:
            wait = self._backoff - (time.monotonic() - self._last_start)
            if wait > 0:
                time.sleep(wait)
            # a core that keeps dying is restarted less and less often
            self._backoff = _RESTART_MIN_S if time.monotonic() - self._last_start > 60 else min(
                _RESTART_MAX_S, self._backoff * (1 if self._connect_path else 2))
            try:
                self.start()
                break
            except Exception as exc:
                if self._connect_path:  # the first front end restarts the core: wait for it
                    log.debug("engine core not back yet: %s", exc)
                else:
                    log.exception("engine core: restart failed")
        if self._stopping:
            return
        self.restarts += 1
        self._reload()

def _deliver(requests: list[InferRequest]) -> None:
    """Hand finished requests to their sinks, one call per sink (as the Scheduler does)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for sink, group in by_sink(requests):
        try:
            if running is not None and isinstance(sink, LoopSink) and sink._loop is running:
                LoopSink._resolve(group)  # the loop reader: already on the sink's loop, no hop
                continue
            sink.deliver(group)
        except Exception:  # a transport that went away must not stop the reader
            log.exception("delivering results from the engine core failed")


def core_log_level() -> str:
    """The core logs at the front end's level; its records come back to the front end's handlers."""
    return logging.getLevelName(logging.getLogger("tensorgate").getEffectiveLevel())


def core_reader() -> str:
    """Who reads the core's answers: $TENSORGATE_CORE_READER (thread or loop), else the measured faster one."""
    value = os.environ.get("TENSORGATE_CORE_READER", "").strip().lower()
    return value if value in ("thread", "loop") else "loop"
