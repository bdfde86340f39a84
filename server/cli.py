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
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .security.errors import SecurityError
from .security.options import add_security_flags, security_settings_from_args
from .settings import ENGINE_CORES, MAX_MESSAGE_BYTES, ServerSettings, default_cache_dir, default_engine_core
from .telemetry.options import _bool, add_telemetry_flags, telemetry_settings_from_args

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
        help="interface to listen on (default 127.0.0.1; use 0.0.0.0 in a container so other hosts can reach it, "
        "with TLS and restrictions: README, Security)",
    )
    p.add_argument(
        "--grpc-port", type=int, default=int(_env("GRPC_PORT", "-1") or -1),
        help="gRPC port (default 8001, or --base-port + 1)",
    )
    _add_http_flags(p)
    p.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        default=int(_env("GRPC_MAX_MESSAGE_BYTES", str(MAX_MESSAGE_BYTES)) or MAX_MESSAGE_BYTES),
        help=f"largest gRPC message sent or received, in bytes (default {MAX_MESSAGE_BYTES} = 2 GiB - 1, "
        "Triton's and protobuf's limit); larger messages are refused by gRPC itself",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=int(_env("MAX_REQUEST_BYTES", str(MAX_MESSAGE_BYTES)) or MAX_MESSAGE_BYTES),
        help="the most bytes one request's inputs may take once decoded (a BYTES element costs about 41 "
        "bytes of memory beyond its payload); larger requests are refused with INVALID_ARGUMENT before "
        f"anything is allocated for them (default {MAX_MESSAGE_BYTES})",
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
        "--engine-core",
        default=None,
        help="inline: batcher, instances and engines run in the server's process (default; faster on small "
        "hosts, README 'Engine core process'); process: they run in one engine core child process with its "
        "own GIL, tensors crossing through shared memory, restarted if it dies "
        "(env TENSORGATE_ENGINE_CORE)",
    )
    p.add_argument(
        "--frontends",
        type=int,
        default=int(_env("FRONTENDS", "1") or 1),
        help="run N gRPC/REST front-end processes on the same ports (SO_REUSEPORT) feeding ONE engine core: "
        "one engine copy and one batch queue per model, statistics exact at any front end; implies "
        "--engine-core process; the metrics port stays with the first process (default 1)",
    )
    p.add_argument("--core-socket", default="", help=argparse.SUPPRESS)  # front ends 2..N: the core to join
    p.add_argument(
        "--grpc-max-connection-age-secs",
        type=float,
        default=float(_env("GRPC_MAX_CONNECTION_AGE_SECS", "0") or 0),
        help="close each client connection after this many seconds (GOAWAY; calls in flight finish), so "
        "clients balancing over a DNS name (a headless Service) re-resolve and reach new replicas "
        "(default 0: never)",
    )
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
    p.add_argument(
        "--allow-client-shm",
        type=_bool,
        default=_bool(_env("ALLOW_CLIENT_SHM", "false") or "false"),
        metavar="BOOL",
        help="let clients register system shared-memory regions (Triton's system_shared_memory extension; "
        "default false: a registered region lets a client read and write the server user's shm objects)",
    )
    _add_model_control_flags(p)
    add_telemetry_flags(p)  # --trace-config, --metrics-port, --allow-metrics, --log-format, ...
    add_security_flags(p)  # --grpc-use-ssl..., --grpc-restricted-protocol, --grpc-auth-token-file, ...
    p.set_defaults(handler=_serve)


def _add_http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-http", type=_bool, default=_bool(_env("ALLOW_HTTP", "true") or "true"), metavar="BOOL",
        help="serve KServe v2 REST / Triton's HTTP protocol beside gRPC (default true)",
    )
    p.add_argument(
        "--http-port", type=int, default=int(_env("HTTP_PORT", "-1") or -1),
        help="HTTP port (default 8000, or --base-port); a port that cannot be bound stops the start unless "
        "--allow-http false",
    )
    p.add_argument("--http-address", default=_env("HTTP_ADDRESS"),
                   help="HTTP interface (default: the --grpc-address)")
    p.add_argument(
        "--base-port", type=int, default=int(_env("BASE_PORT", "-1") or -1), metavar="N",
        help="move all three endpoints off Triton's ports at once: HTTP on N, gRPC on N+1, metrics on N+2 "
        "(Triton's 8000/8001/8002 layout); an explicit --http-port/--grpc-port/--metrics-port wins",
    )


def _resolve_ports(args: argparse.Namespace) -> None:
    """Unset ports (-1) take --base-port + offset, else Triton's defaults."""
    base = args.base_port
    if base >= 0 and base + 2 > 65535:
        raise SystemExit(f"tensorgate serve: error: --base-port {base}: N+2 must be a port (at most 65535)")
    for name, offset in (("http_port", 0), ("grpc_port", 1), ("metrics_port", 2)):
        if getattr(args, name) < 0:
            setattr(args, name, base + offset if base >= 0 else 8000 + offset)
def _add_strict_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict-model-config",
        action="store_true",
        default=_env("STRICT_MODEL_CONFIG", "") in ("1", "true"),
        help="config.pbtxt fields that tensorgate does not implement fail the load instead of logging a "
        "warning (the README lists them)",
    )


def _add_model_control_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-control-mode",
        type=str.lower,
        choices=("none", "poll", "explicit"),
        default=(_env("MODEL_CONTROL_MODE", "none") or "none").lower(),
        help="none: load every model at start, no load/unload (default); poll: also rescan the repository every "
        "--repository-poll-secs and roll out added, changed and removed models; explicit: load only "
        "--load-model models at start, then RepositoryModelLoad/Unload",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[m for m in (_env("LOAD_MODEL", "") or "").split(",") if m],
        metavar="NAME",
        help="explicit mode: a model to load at start (repeatable; '*' loads every model)",
    )
    p.add_argument(
        "--repository-poll-secs",
        type=float,
        default=float(_env("REPOSITORY_POLL_SECS", "15") or 15),
        help="poll mode: seconds between repository scans (default 15)",
    )
    p.add_argument(
        "--model-unload-timeout-secs",
        type=float,
        default=float(_env("MODEL_UNLOAD_TIMEOUT_SECS", "30") or 30),
        help="how long an unloaded or replaced version's in-flight requests (queued ones included) may take; "
        "what is still queued then fails with UNAVAILABLE (default 30)",
    )
    p.add_argument(
        "--model-load-max-bytes",
        type=int,
        default=int(_env("MODEL_LOAD_MAX_BYTES", str(1 << 30)) or 1 << 30),
        help="the most file-override bytes one RepositoryModelLoad may carry (default 1 GiB)",
    )
    _add_strict_config_flag(p)


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
    _add_strict_config_flag(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (rows, warnings, summary) on stdout for CI systems")
    p.add_argument("--log-verbose", type=int, default=0, help="0 = warnings only (default), 1 = info, 2 = debug")
    p.set_defaults(handler=_build)


def _tool_logging(verbose: int) -> None:
    """`build` and `doctor`: 0 = warnings only, 1 = info, 2 = debug."""
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _build(args: argparse.Namespace) -> int:
    from .build import run_build

    _tool_logging(args.log_verbose)
    cache = args.engine_cache_dir or (args.cache_dir or default_cache_dir()) / "engines"
    return run_build(args.model_repository, args.model, cache, int(args.engine_cache_max_gb * 2**30),
                     strict=args.strict_model_config, as_json=args.json)


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check what this machine can run: versions, drivers, GPUs, the CUDA layer, TensorRT",
        description="Print a table of checks (ok / skipped / FAILED). Without a GPU or TensorRT it checks what "
        "it can and says what it could not check; exits 1 only when a check FAILED.",
    )
    p.add_argument("--full", action="store_true",
                   help="also build precision artifacts and, with TensorRT on a GPU, FP32/FP16/INT8 plans of the "
                   "benchmark MLP and the MiniLM demo, compared with onnxruntime and run concurrently")
    p.add_argument("--instances", type=int, default=4, help="streams / execution contexts at once (default 4)")
    p.add_argument("--log-verbose", type=int, default=0, help="0 = warnings only (default), 1 = info, 2 = debug")
    p.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import table

    _tool_logging(args.log_verbose)
    text, status = table(args.full, max(1, args.instances))
    print(text)
    return status


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
    _add_doctor(sub)
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

    _resolve_ports(args)
    if args.load_model and args.model_control_mode != "explicit":
        print("tensorgate serve: --load-model needs --model-control-mode explicit", file=sys.stderr)
        return 2
    from .names import is_valid_model_name

    bad = [m for m in args.load_model if m != "*" and not is_valid_model_name(m)]
    if bad:
        print(f"tensorgate serve: --load-model {bad[0]!r} is not a valid model name", file=sys.stderr)
        return 2
    explicit_core = args.engine_core is not None
    args.engine_core = args.engine_core or default_engine_core()
    if args.engine_core not in ENGINE_CORES:
        print(f"tensorgate serve: --engine-core {args.engine_core!r} is not one of {', '.join(ENGINE_CORES)}",
              file=sys.stderr)
        return 2
    if args.frontends < 1:
        print("tensorgate serve: --frontends needs N >= 1", file=sys.stderr)
        return 2
    if args.frontends > 1 or args.core_socket:
        args.engine_core = "process"
        if args.model_control_mode == "explicit":
            print("tensorgate serve: --frontends N does not combine with --model-control-mode explicit (a "
                  "load or unload would reach one front end only); use poll or none", file=sys.stderr)
            return 2
    if args.engine_core == "process" and args.workers > 1 and not explicit_core:
        args.engine_core = "inline"  # TENSORGATE_ENGINE_CORE is a default: --workers N keeps its own engines
    if args.engine_core == "process" and args.workers > 1:
        print("tensorgate serve: --workers N gives each process its own engines; it does not combine with "
              "--engine-core process", file=sys.stderr)
        return 2
    telemetry = telemetry_settings_from_args(args)  # exits with the reason on a bad --trace-config
    configure_logs(telemetry, args.log_verbose)  # --log-format, --log-file, --log-info/-warning/-error
    settings = ServerSettings(
        model_repository=args.model_repository,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        allow_http=args.allow_http,
        http_address=args.http_address,
        http_port=args.http_port,
        max_send_message_bytes=args.grpc_max_message_bytes,
        max_receive_message_bytes=args.grpc_max_message_bytes,
        max_request_bytes=args.max_request_bytes,
        cache_dir=args.cache_dir,
        strict_readiness=args.strict_readiness,
        exit_timeout_secs=args.exit_timeout_secs,
        log_verbose=args.log_verbose,
        engine_cache_dir=args.engine_cache_dir,
        engine_cache_max_bytes=int(args.engine_cache_max_gb * 2**30),
        grpc_flavor=args.grpc_flavor,
        grpc_threads=args.grpc_threads,
        reuse_port=args.reuse_port or args.workers > 1 or args.frontends > 1,
        telemetry=telemetry,
        allow_client_shm=args.allow_client_shm,
        security=security_settings_from_args(args),  # exits with the reason on inconsistent TLS flags
        max_connection_age_secs=args.grpc_max_connection_age_secs,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        repository_poll_secs=args.repository_poll_secs,
        strict_model_config=args.strict_model_config,
        model_unload_timeout_secs=args.model_unload_timeout_secs,
        model_load_max_bytes=args.model_load_max_bytes,
        response_cache_bytes=_cache_bytes(args.cache_config),
        engine_core=args.engine_core,
        frontends=args.frontends,
        core_socket=args.core_socket,
    )
    try:
        asyncio.run(_run(settings, max(args.workers, args.frontends), args.argv))
    except (OSError, SecurityError) as exc:  # unusable port, certificate, token file
        log.error("%s", exc)
        return 1
    return 0


async def _run(settings: ServerSettings, workers: int = 1, argv: Sequence[str] = ()) -> None:
    from .app import InferenceServer
    from .demo.repository import build_demo_repository, demo_repository_path
    from .workers import spawn_workers, stop_workers

    loop = asyncio.get_running_loop()
    repository = settings.model_repository or demo_repository_path(settings.resolved_cache_dir)
    server = InferenceServer(settings, Path(repository))
    await server.bind()  # every port first: a taken one fails now, not after the models load
    if settings.model_repository is None:
        await loop.run_in_executor(None, build_demo_repository, settings.resolved_cache_dir)
    await server.start()
    http_port = server.http.port if server.http is not None else settings.http_port
    # --frontends: the others join this process's engine core
    extra = ("--core-socket", server.core.socket_path) if settings.frontends > 1 and server.core is not None else ()
    children = (
        await loop.run_in_executor(None, spawn_workers, argv, workers - 1, Path(repository), server.port, http_port,
                                   300, extra)
        if workers > 1
        else []
    )
    signalled: list[subprocess.Popen[bytes]] = []

    def drain_frontends() -> None:  # before the engine core stops: the other front ends finish their requests
        for child in children:
            if child not in signalled and child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(settings.exit_timeout_secs + 5)
            except subprocess.TimeoutExpired:
                child.kill()

    if extra:
        server.before_core_stop = drain_frontends
    for line in server.summary():
        print(line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            stop.set()
            for child in children:  # they drain in parallel with this process
                child.send_signal(sig)
                signalled.append(child)
            return
        # a second signal: the operator does not want to wait for the drain
        log.warning("second %s: exiting now without waiting for in-flight requests", sig.name)
        for child in children:
            child.kill()
        logging.shutdown()
        os._exit(128 + sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    def reload() -> None:  # SIGHUP: certificates and tokens, here (off the loop) and in every worker process
        loop.run_in_executor(None, server.reload_credentials)
        for child in children:
            child.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload)
    waiter = asyncio.ensure_future(server.wait())
    await asyncio.wait([waiter, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down: refusing new requests, finishing admitted ones (up to %.0f s; a second signal "
             "exits at once)", settings.exit_timeout_secs)
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
