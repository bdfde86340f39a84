"""Where the load generators run: in this process, or in `--client-processes` spawned worker processes.

Both kinds offer the same three coroutines (start a level, cut a window, stop), so the runner does not
care which it drives. Worker processes are spawned once per run and keep their own event loop and
channels; the parent sends commands over a pipe and adds up the window samples they send back
(``window.combine``). Windows of the processes are cut within a pipe round-trip of each other, far
below a window's length.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import multiprocessing.connection
from typing import Any, Protocol

from .load import LoadGenerator, LoadSpec
from .window import WindowSample, combine

__all__ = ["Generators", "LocalGenerators", "ProcessGenerators", "make_generators", "split_spec"]


class Generators(Protocol):
    """What the runner needs from whatever produces the load."""

    async def start(self, spec: LoadSpec) -> None: ...
    async def cut(self) -> WindowSample: ...
    async def stop(self) -> None: ...
    async def close(self) -> None: ...
    def inflight(self) -> int | None: ...


def split_spec(spec: LoadSpec, parts: int) -> list[LoadSpec]:
    """One level shared out among `parts` processes: slots as evenly as possible, rate in equal shares."""
    if parts <= 1:
        return [spec]
    out = []
    for k in range(parts):
        concurrency = spec.concurrency // parts + (1 if k < spec.concurrency % parts else 0)
        out.append(dataclasses.replace(
            spec, concurrency=concurrency, request_rate=spec.request_rate / parts,
            max_inflight=max(1, -(-spec.max_inflight // parts)),
            channels=-(-spec.channels // parts) if spec.channels else 0,
            seed=spec.seed + 7919 * k, phase=k / parts,
        ))
    return out


class LocalGenerators:
    """The load generator runs on this process's event loop."""

    def __init__(self) -> None:
        self._generator: LoadGenerator | None = None

    async def start(self, spec: LoadSpec) -> None:
        self._generator = LoadGenerator(spec)
        await self._generator.start()

    async def cut(self) -> WindowSample:
        assert self._generator is not None
        return self._generator.cut()

    async def stop(self) -> None:
        if self._generator is not None:
            await self._generator.stop()
            self._generator = None

    async def close(self) -> None:
        await self.stop()

    def inflight(self) -> int | None:
        return self._generator.inflight if self._generator else None


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """Entry point of a worker process: obey the parent's commands until "exit"."""
    asyncio.run(_obey(conn))


async def _obey(conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def receive() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("exit", None))

    loop.add_reader(conn.fileno(), receive)
    generator: LoadGenerator | None = None
    while True:
        command, argument = await inbox.get()
        try:
            if command == "start":
                generator = LoadGenerator(argument)
                await generator.start()
                conn.send(("ok", None))
            elif command == "cut":
                assert generator is not None
                conn.send(("ok", generator.cut()))
            elif command == "stop":
                if generator is not None:
                    await generator.stop()
                generator = None
                conn.send(("ok", None))
            elif command == "exit":
                if generator is not None:
                    await generator.stop(drain_s=0)
                try:
                    conn.send(("ok", None))
                except OSError:
                    pass
                return
        except Exception as exc:  # reported to the parent, which raises it there
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessGenerators:
    """`count` spawned processes, each driving its share of every level."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._processes: list[Any] = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child,), daemon=True, name="bench-worker")
            process.start()
            child.close()
            self._conns.append(parent)
            self._processes.append(process)

    async def _all(self, commands: list[tuple[str, Any]]) -> list[Any]:
        for conn, command in zip(self._conns, commands, strict=True):
            conn.send(command)
        loop = asyncio.get_running_loop()
        replies = await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in self._conns))
        errors = [value for status, value in replies if status == "error"]
        if errors:
            raise RuntimeError(f"bench worker process failed: {errors[0]}")
        return [value for _, value in replies]

    async def start(self, spec: LoadSpec) -> None:
        await self._all([("start", s) for s in split_spec(spec, len(self._conns))])

    async def cut(self) -> WindowSample:
        return combine(await self._all([("cut", None)] * len(self._conns)))

    async def stop(self) -> None:
        await self._all([("stop", None)] * len(self._conns))

    async def close(self) -> None:
        try:
            await self._all([("exit", None)] * len(self._conns))
        except (EOFError, OSError, RuntimeError):
            pass
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.terminate()

    def inflight(self) -> int | None:
        return None


def make_generators(processes: int) -> Generators:
    """In-process for 1, worker processes above."""
    return LocalGenerators() if processes <= 1 else ProcessGenerators(processes)
