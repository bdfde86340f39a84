"""The `tensorgate` command: serve, build (engines ahead of time), and the subcommands later features add.

Every `serve` flag can also come from an environment variable,
TENSORGATE_<FLAG_IN_CAPITALS> (e.g. TENSORGATE_GRPC_PORT=9001); a flag wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import MAX_MESSAGE_BYTES, ServerSettings, default_cache_dir
from .telemetry.options import add_telemetry_flags, telemetry_settings_from_args

__all__ = ["build_parser", "main"]

log = logging.getLogger("tensorgate")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TENSORGATE_{name}", default)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Serve a Triton-layout model repository on inference.GRPCInferenceService "
        "(Triton / KServe v2 wire protocol). Without --model-repository, serves the built-in demo "
        "repository (all-MiniLM-L6-v2 sentence embeddings and a small add/sub model), built on first "
        "run into the cache folder.",
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        default=_env("MODEL_REPOSITORY"),
        help="model repository folder (<repo>/<model>/config.pbtxt, <repo>/<model>/<version>/model.onnx); "
        "default: the built-in demo repository",
    )
    p.add_argument(
        "--grpc-address",
        default=_env("GRPC_ADDRESS", "127.0.0.1"),
        help="interface to listen on (default 127.0.0.1; use 0.0.0.0 in a container so other hosts can reach it)",
    )
    p.add_argument(
        "--grpc-port", type=int, default=int(_env("GRPC_PORT", "8001") or 8001), help="gRPC port (default 8001)"
    )
    p.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        default=int(_env("GRPC_MAX_MESSAGE_BYTES", str(MAX_MESSAGE_BYTES)) or MAX_MESSAGE_BYTES),
        help=f"largest gRPC message sent or received, in bytes (default {MAX_MESSAGE_BYTES} = 2 GiB - 1, "
        "Triton's and protobuf's limit); larger messages are refused by gRPC itself",
    )
    p.add_argument(
        "--grpc-flavor",
        choices=("aio", "thread"),
        default=_env("GRPC_FLAVOR", "aio"),
        help="gRPC server flavour: aio (grpc.aio, one event loop; default, measured faster with batching) or "
        "thread (the thread-pool grpc.server)",
    )
    p.add_argument(
        "--grpc-threads",
        type=int,
        default=int(_env("GRPC_THREADS", "64") or 64),
        help="thread flavour only: pool size, the most calls handled at once (default 64)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", "1") or 1),
        help="run N server processes on one port (SO_REUSEPORT) for hosts with many cores; each gRPC "
        "connection stays on one process, so it helps only with many client connections (default 1)",
    )
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=_env("CACHE_DIR"),
        help=f"where the demo repository and engine caches are built (default {default_cache_dir()})",
    )
    _add_engine_cache_flags(p)
    p.add_argument(
        "--cache-config",
        action="append",
        default=[v for v in [_env("CACHE_CONFIG")] if v],
        metavar="local,size=BYTES",
        help="the response cache (Triton's flag): an LRU of responses bounded by BYTES, used by models whose "
        "config has response_cache { enable: true } (default: no response cache)",
    )
    p.add_argument(
        "--strict-readiness",
        action="store_true",
        default=_env("STRICT_READINESS", "") in ("1", "true"),
        help="report the server ready only when every model in the repository is ready (Triton's default); "
        "by default a model that failed to load is reported UNAVAILABLE but does not make the server unready",
    )
    p.add_argument(
        "--exit-timeout-secs",
        type=float,
        default=float(_env("EXIT_TIMEOUT_SECS", "30") or 30),
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30)",
    )
    p.add_argument(
        "--log-verbose",
        type=int,
        default=int(_env("LOG_VERBOSE", "0") or 0),
        help="verbose logging level: 0 = info (default), 1 or more = debug",
    )
    add_telemetry_flags(p)  # --trace-config, --metrics-port, --allow-metrics, --log-format, ...
    p.set_defaults(handler=_serve)


def _add_engine_cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine-cache-dir",
        type=Path,
        default=_env("ENGINE_CACHE_DIR"),
        help="where FP16/INT8 artifacts and built engines (ONNX Runtime optimized graphs, TensorRT plans) are "
        "cached, per device (default <cache dir>/engines)",
    )
    p.add_argument(
        "--engine-cache-max-gb",
        type=float,
        default=float(_env("ENGINE_CACHE_MAX_GB", "20") or 20),
        help="size bound of the engine cache in GiB; least recently used entries are evicted (default 20)",
    )


def _add_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build",
        help="build the precision artifacts and engines a model repository asks for, into the engine cache",
        description="Build every FP16/INT8 artifact (through the accuracy gate) and every engine the models' "
        "configs ask for on this machine's devices, so a server started afterwards with the same "
        "--engine-cache-dir starts warm. Exits non-zero when any build or accuracy gate fails (the CI/CD step).",
    )
    p.add_argument("--model-repository", type=Path, required=True, help="model repository folder")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="build only this model (repeatable; default: every model)")
    p.add_argument("--cache-dir", type=Path, default=_env("CACHE_DIR"), help="cache folder")
    _add_engine_cache_flags(p)
    p.add_argument("--log-verbose", type=int, default=0, help="0 = warnings only (default), 1 = info, 2 = debug")
    p.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from .build import run_build

    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.log_verbose, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    cache = args.engine_cache_dir or (args.cache_dir or default_cache_dir()) / "engines"
    return run_build(args.model_repository, args.model, cache, int(args.engine_cache_max_gb * 2**30))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorgate",
        description="tensorgate: a high-throughput gRPC inference server for ONNX models, "
        "wire-compatible with Triton's GRPCInferenceService (KServe v2).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    _add_build(sub)
    # listed for --help only: main() hands `bench ...` to bench's own parser before argparse runs
    sub.add_parser("bench", add_help=False, help="load-test any v2 gRPC server (see `tensorgate bench --help`)")
    demo = sub.add_parser("demo-repository", help="build the demo repository if needed and print its path")
    demo.add_argument("--cache-dir", type=Path, default=_env("CACHE_DIR"), help="cache folder")
    demo.set_defaults(handler=_demo_repository)
    return parser


def _configure_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _demo_repository(args: argparse.Namespace) -> int:
    from .demo.repository import build_demo_repository

    _configure_logging(0)
    print(build_demo_repository(args.cache_dir or default_cache_dir()))
    return 0


def _cache_bytes(values: list[str]) -> int | None:
    from .response_cache import CacheConfigError, parse_cache_config

    try:
        return parse_cache_config(values)
    except CacheConfigError as exc:
        raise SystemExit(f"tensorgate serve: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from .telemetry.logs import configure_logs

    telemetry = telemetry_settings_from_args(args)  # exits with the reason on a bad --trace-config
    configure_logs(telemetry, args.log_verbose)  # --log-format, --log-file, --log-info/-warning/-error
    settings = ServerSettings(
        model_repository=args.model_repository,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        max_send_message_bytes=args.grpc_max_message_bytes,
        max_receive_message_bytes=args.grpc_max_message_bytes,
        cache_dir=args.cache_dir,
        strict_readiness=args.strict_readiness,
        exit_timeout_secs=args.exit_timeout_secs,
        log_verbose=args.log_verbose,
        engine_cache_dir=args.engine_cache_dir,
        engine_cache_max_bytes=int(args.engine_cache_max_gb * 2**30),
        grpc_flavor=args.grpc_flavor,
        grpc_threads=args.grpc_threads,
        reuse_port=args.reuse_port or args.workers > 1,
        telemetry=telemetry,
        response_cache_bytes=_cache_bytes(args.cache_config),
    )
    try:
        asyncio.run(_run(settings, args.workers, args.argv))
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0


async def _run(settings: ServerSettings, workers: int = 1, argv: Sequence[str] = ()) -> None:
    from .app import InferenceServer
    from .workers import spawn_workers, stop_workers

    repository = settings.model_repository
    if repository is None:
        from .demo.repository import build_demo_repository

        loop = asyncio.get_running_loop()
        repository = await loop.run_in_executor(None, build_demo_repository, settings.resolved_cache_dir)
    server = InferenceServer(settings, Path(repository))
    await server.start()
    loop = asyncio.get_running_loop()
    children = (
        await loop.run_in_executor(None, spawn_workers, argv, workers - 1, Path(repository), server.port)
        if workers > 1
        else []
    )
    for line in server.summary():
        print(line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(server.wait())
    await asyncio.wait([waiter, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down: finishing in-flight requests (up to %.0f s)", settings.exit_timeout_secs)
    await server.stop()
    stop_workers(children, settings.exit_timeout_secs)
    waiter.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        from tensorgate.bench.cli import main as bench_main

        return bench_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
