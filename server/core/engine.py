"""The engine core process: model versions, their schedulers and engines, behind two sockets.

Started by the front end (``python -m tensorgate.server.core.engine``) with inherited
descriptors: a data socket (binary frames, protocol.py), a control socket (pickled
load / unload / statistics calls, each answered from its own thread so a long unload
never holds up a statistics call), and the two arenas (the front end writes inputs in
one, the core writes outputs in the other). The core loads a version with the same
``load_model_version`` an inline server uses and runs the real Scheduler; the sink of
its requests packs each finished batch into one DONE frame.

Every SUBMIT is checked before use (indices, dtype, shape, arena bounds): a malformed
one is answered with an error, never read outside the arena. The core exits when the
first front end (the one that started it) goes away; with ``--listen`` more front ends
connect through a Unix socket in that front end's private 0700 folder (their uid is
checked) and send their socket ends and arenas as descriptors. Front ends that load the
same version (same files and config) share it: one engine, one batch queue, counted once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorgate.clients.pb import model_config_pb2 as mc

from ..errors import CancelledError, InvalidArgumentError
from ..model import ModelVersion, load_model_version
from ..request import InferRequest, RequestedOutput
from ..scheduler import Scheduler
from .arena import Allocator, Arena, ArenaError
from .channel import Channel, check_peer, status_of
from .control import CONTROL_CALL, CONTROL_REPLY, LogForwarder, read_call, snapshot_statistics
from .protocol import (
    CANCEL,
    DONE,
    FREE,
    SUBMIT,
    ProtocolError,
    done_header,
    encode_done_request,
    frame,
    read_free,
    read_submit,
    read_token,
)

__all__ = ["main"]

log = logging.getLogger("tensorgate.core")
_now = time.monotonic_ns


@dataclass
class _Loaded:
    mv: ModelVersion
    key: tuple[Any, ...]
    reply: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    out_index: dict[str, int] = field(default_factory=dict)
    holders: set[int] = field(default_factory=set)  # the front ends (connection ids) that loaded it


def _load_key(name: str, version: int, model_file: str, config: bytes, max_batch_size_given: bool) -> tuple[Any, ...]:
    """Front ends loading the same files share one version: same name, version, path, config and file stamp."""
    try:
        stat = os.stat(model_file)
        stamp: tuple[int, int] = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = (0, 0)
    # map fields (parameters) serialize in an order that differs between processes (string hash seeds):
    # compare one canonical form, or two front ends would build two engines and two queues
    canonical = mc.ModelConfig.FromString(config).SerializeToString(deterministic=True)
    return name, version, model_file, canonical, max_batch_size_given, stamp


def _drift_info(mv: ModelVersion) -> dict[str, Any] | None:
    """What the front end's drift metrics need besides the counts (which it asks for at each scrape)."""
    monitor = getattr(mv.scheduler, "drift", None)
    return None if monitor is None else {"output": monitor.output, "labels": monitor.labels}


class Connection:
    """One front end: its sockets, its arenas (inputs it writes, outputs the core writes) and its requests."""

    def __init__(self, core: EngineCore, ident: int, data: Channel, control: Channel, inputs: Arena,
                 outputs: Arena) -> None:
        self.core = core
        self.id = ident
        self.data = data
        self.control = control
        self.input_arena = inputs
        self.output_arena = outputs
        self.out_alloc = Allocator(outputs.size)
        self._tokens: dict[int, InferRequest] = {}
        self._lock = threading.Lock()

    # ---- control --------------------------------------------------------------------------

    def serve_control(self) -> None:
        try:
            for kind, body in self.control.frames():
                if kind != CONTROL_CALL:
                    continue
                call_id, op, args = read_call(body)
                threading.Thread(target=self._answer, args=(call_id, op, args), daemon=True,
                                 name=f"tg-core-{op}").start()
        except Exception:  # a control frame that does not parse: this front end is broken, drop it
            log.exception("engine core: unreadable control message from front end %d", self.id)

    def _answer(self, call_id: int, op: str, args: dict[str, Any]) -> None:
        try:
            result: Any = getattr(self.core, f"op_{op}")(self, **args)
            reply = (call_id, True, result)
        except Exception as exc:  # the caller gets the reason; the core keeps serving
            log.exception("engine core: %s failed", op)
            reply = (call_id, False, f"{type(exc).__name__}: {exc}")
        try:
            self.control.send_object(CONTROL_REPLY, reply)
        except OSError:
            pass

    # ---- data ------------------------------------------------------------------------------------

    def serve_data(self) -> None:
        try:
            for kind, body in self.data.frames():
                if kind == SUBMIT:
                    self._submit(body)
                elif kind == CANCEL:
                    self._cancel(read_token(body))
                elif kind == FREE:
                    for offset in read_free(body):
                        self.out_alloc.free(offset)
        except Exception:
            log.exception("engine core: unreadable data message from front end %d", self.id)

    def _submit(self, body: memoryview) -> None:
        try:
            msg = read_submit(body, self.input_arena)
        except (ProtocolError, ArenaError) as exc:
            # refused before any tensor is read; the front end frees the request's blocks on this answer
            token = int.from_bytes(bytes(body[:8]), "little") if len(body) >= 8 else 0
            log.error("engine core: refused a malformed request: %s", exc)
            self._answer_error(token, InvalidArgumentError(f"malformed request refused by the engine core: {exc}"))
            return
        loaded = self.core.versions.get(msg.handle)
        if loaded is None:
            self._answer_error(msg.token, InvalidArgumentError(f"no model version with handle {msg.handle}"))
            return
        mv = loaded.mv
        try:
            inputs = {loaded.inputs[i]: array for i, array in msg.inputs}
            requested = [RequestedOutput(loaded.outputs[i], 0) for i in msg.outputs]
        except IndexError:
            self._answer_error(msg.token, InvalidArgumentError("malformed request: tensor index out of range"))
            return
        merge_key = tuple((n, a.shape[1:]) for n, a in inputs.items()) if mv.batching else ()
        request = InferRequest(mv, str(msg.token), inputs, requested, msg.batch_size, merge_key, msg.arrival_ns)
        request.priority = msg.priority
        request.timeout_us = msg.timeout_us
        request.deadline_ns = msg.deadline_ns
        request.waiter = msg.token
        request.sink = self
        request.parameters = loaded.out_index  # unused in the core otherwise: where DONE finds output indices
        with self._lock:
            self._tokens[msg.token] = request
        scheduler = mv.scheduler
        try:
            assert scheduler is not None
            scheduler.submit(request)
        except Exception as exc:  # queue full, unloading: answered at once, as inline
            with self._lock:
                self._tokens.pop(msg.token, None)
            self._answer_error(msg.token, exc)

    def _cancel(self, token: int) -> None:
        with self._lock:
            request = self._tokens.get(token)
        if request is None or request.model.scheduler is None:
            return
        if request.model.scheduler.cancel(request):  # dropped from the queue: never delivered, answer now
            request.error = CancelledError("the client cancelled the request")
            self.deliver([request])

    def _answer_error(self, token: int, exc: BaseException) -> None:
        parts = [done_header("", 1)]
        encode_done_request(parts, token, status_of(exc), (0, 0, 0, 0), str(exc), (),
                            self.output_arena, self.out_alloc)
        self._send_done(parts)

    def deliver(self, requests: Sequence[InferRequest]) -> None:
        """The scheduler's sink: one DONE frame per batch per front end, outputs in its output arena."""
        instance = threading.current_thread().name
        parts = [done_header(instance, len(requests))]
        with self._lock:
            for r in requests:
                self._tokens.pop(r.waiter, None)
        for r in requests:
            times = (r.compute_start_ns, r.compute_input_end_ns, r.compute_output_start_ns, r.compute_end_ns)
            if r.error is not None or r.outputs is None:
                error = r.error or CancelledError("the request was not run")
                encode_done_request(parts, r.waiter, status_of(error), times, str(error), (),
                                    self.output_arena, self.out_alloc)
                continue
            index = r.parameters
            outputs = [(index[o.name], r.outputs[o.name]) for o in r.requested if o.name in r.outputs]
            encode_done_request(parts, r.waiter, 0, times, "", outputs, self.output_arena, self.out_alloc)
        self._send_done(parts)

    def _send_done(self, parts: list[bytes]) -> None:
        try:
            self.data.send(frame(DONE, b"".join(parts)))
        except OSError:  # the front end went away
            pass

    def close(self) -> None:
        self.data.close()
        self.control.close()


class EngineCore:
    """The versions one core serves (keyed by handle) and the front ends feeding them."""

    def __init__(self) -> None:
        self.versions: dict[int, _Loaded] = {}
        self._next_handle = 1
        self._next_connection = 1
        self._lock = threading.Lock()
        self._loads = threading.Lock()  # one load at a time: two front ends asking for one version share it

    def connect(self, data: Channel, control: Channel, inputs: Arena, outputs: Arena) -> Connection:
        with self._lock:
            ident = self._next_connection
            self._next_connection += 1
        connection = Connection(self, ident, data, control, inputs, outputs)
        threading.Thread(target=connection.serve_data, name=f"tg-core-data-{ident}", daemon=True).start()
        return connection

    def serve(self, connection: Connection) -> None:
        """Answer a front end's control calls until it goes away, then drop what it held."""
        connection.serve_control()
        connection.close()
        with self._lock:
            held = [h for h, v in self.versions.items() if connection.id in v.holders]
        for handle in held:
            self.op_unload(connection, handle, 0)

    def op_ping(self, connection: Connection) -> int:
        return os.getpid()

    def op_load(self, connection: Connection, name: str, version: int, model_file: str, config: bytes,
                max_batch_size_given: bool, engine_settings: Any) -> dict[str, Any]:
        key = _load_key(name, version, model_file, config, max_batch_size_given)
        # the whole check-load-register under one lock: a second front end loading the same version while the
        # first one's load runs must find it registered, not build its own engine and queue
        with self._loads:
            with self._lock:
                for handle, loaded in self.versions.items():
                    if loaded.key == key and connection.id not in loaded.holders:
                        loaded.holders.add(connection.id)  # another front end's copy: one engine, one queue
                        return {**loaded.reply, "handle": handle}
            given = mc.ModelConfig.FromString(config)
            mv = load_model_version(name, version, Path(model_file), given,
                                    max_batch_size_given=max_batch_size_given, engine_settings=engine_settings)
            if not mv.ready:
                return {"ready": False, "reason": mv.reason}
            reply = {
                "ready": True, "config": mv.config.SerializeToString(), "engine_kind": mv.engine_kind,
                "cache_hit": mv.cache_hit, "warmup_runs": mv.warmup_runs, "accuracy": mv.accuracy,
                "input_guard": mv.input_guard, "instances": mv.scheduler.instance_count if mv.scheduler else 0,
                "drift": _drift_info(mv),
            }
            outputs = list(mv.outputs)
            with self._lock:
                handle = self._next_handle
                self._next_handle += 1
                self.versions[handle] = _Loaded(mv, key, reply, list(mv.inputs), outputs,
                                                {n: i for i, n in enumerate(outputs)}, {connection.id})
        return {**reply, "handle": handle}

    def op_unload(self, connection: Connection, handle: int, wait: float | None) -> bool:
        with self._lock:
            loaded = self.versions.get(handle)
            if loaded is None:
                return False
            loaded.holders.discard(connection.id)
            if loaded.holders:
                return True  # other front ends still serve it
        loaded.mv.stop(wait)
        with self._lock:
            if not loaded.holders:
                self.versions.pop(handle, None)
        return True

    def op_stats(self, connection: Connection, handle: int) -> dict[str, Any] | None:
        loaded = self.versions.get(handle)
        if loaded is None or not isinstance(loaded.mv.scheduler, Scheduler):
            return None
        scheduler = loaded.mv.scheduler
        return {"stats": snapshot_statistics(scheduler.statistics), "pending": scheduler.pending}

    def op_drift(self, connection: Connection, handle: int) -> dict[str, Any] | None:
        loaded = self.versions.get(handle)
        monitor = getattr(loaded.mv.scheduler, "drift", None) if loaded is not None else None
        return None if monitor is None else monitor.snapshot()

    def stop(self) -> None:
        with self._lock:
            loaded = list(self.versions.values())
            self.versions.clear()
        for entry in loaded:
            entry.mv.stop(0)

    def listen(self, path: str) -> None:
        """Accept more front ends (--frontends): each sends its two socket ends and two arenas as fds."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)  # inside the front end's private 0700 folder
        server.listen(16)
        threading.Thread(target=self._accept, args=(server,), name="tg-core-accept", daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            sock, _ = server.accept()
            try:
                check_peer(sock)
                _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 4)
                if len(fds) != 4:
                    for fd in fds:
                        os.close(fd)
                    raise PermissionError(f"a front end sent {len(fds)} descriptors, not 4")
            except (OSError, PermissionError) as exc:
                log.error("engine core: refused a front end: %s", exc)
                continue
            finally:
                sock.close()
            data, control = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
            connection = self.connect(Channel(data), Channel(control), Arena.attach(fds[2]), Arena.attach(fds[3]))
            threading.Thread(target=self.serve, args=(connection,), name=f"tg-core-control-{connection.id}",
                             daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tensorgate-engine-core")
    p.add_argument("--data-fd", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--input-arena-fd", type=int, required=True)
    p.add_argument("--output-arena-fd", type=int, required=True)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--listen", default="", help="Unix socket path where more front ends connect")
    args = p.parse_args(argv)
    control_channel = Channel(socket.socket(fileno=args.control_fd))
    logging.basicConfig(level=args.log_level, handlers=[LogForwarder(control_channel)])
    # the front end logs each version's state lines (LOADING, READY, UNAVAILABLE with the reason) itself
    logging.getLogger("tensorgate.model").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when the core stops
    data = socket.socket(fileno=args.data_fd)
    for sock in (data, control_channel.sock):
        check_peer(sock)
    core = EngineCore()
    owner = core.connect(Channel(data), control_channel, Arena.attach(args.input_arena_fd),
                         Arena.attach(args.output_arena_fd))
    if args.listen:
        core.listen(args.listen)
    core.serve(owner)  # returns when the first front end (the supervisor) goes away: the core goes with it
    core.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
