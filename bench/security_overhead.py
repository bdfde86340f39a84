"""What TLS and access control cost: ModelInfer throughput with each, side by side, interleaved.

    python -m tensorgate.bench.security_overhead [--concurrency 16] [--seconds 4] [--repeats 5] [--json out.json]

Four `tensorgate serve` processes on one repository (the no-op model of
bench.throughput, 784 -> 10 floats, so the per-RPC cost of the server shows
rather than the engine's):

* ``open``: no TLS, no access control (no interceptor is installed);
* ``guarded``: every group restricted (``--grpc-restricted-protocol``) and a
  bearer-token file: each call goes through the interceptor, a header compare
  and a token check;
* ``tls``: TLS, no access control;
* ``tls_guarded``: both.

perf_analyzer cannot send gRPC headers (its -H is HTTP only), so the load here
is a closed loop of grpc.aio calls in this process (one channel, ``concurrency``
calls in flight), sending the headers where needed. Client and server share
the machine, so the throughput of the TLS rows includes the client's encryption
too; the server's CPU time per request (from /proc) is the steadier figure on
a shared box. The order alternates between repeats; the report gives medians
and ratios to ``open``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .servers import ServerProcess, start_tensorgate
from .throughput import MLP_SIZES, build_repository

__all__ = ["main"]

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_GROUPS = "health,metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
_TOKEN = "bench-token"
_HEADERS = (("triton-grpc-protocol-bench", "on"), ("authorization", f"Bearer {_TOKEN}"))
NAMES = ("open", "guarded", "tls", "tls_guarded")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 that is its own root (cryptography is imported only here)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tensorgate bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _request() -> bytes:
    data = np.random.default_rng(0).random((1, MLP_SIZES[0]), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[data.tobytes()])
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, MLP_SIZES[0]])
    return request.SerializeToString()


async def _closed_loop(url: str, credentials: grpc.ChannelCredentials | None, headers: tuple[tuple[str, str], ...],
                       concurrency: int, seconds: float, server: ServerProcess) -> dict[str, Any]:
    body = _request()
    channel = (grpc.aio.secure_channel(url, credentials) if credentials is not None
               else grpc.aio.insecure_channel(url))
    async with channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call: Any = channel.unary_unary(_INFER)
        counts = {"ok": 0, "errors": 0}
        first_error: list[str] = []

        async def worker(until: float) -> None:
            while time.monotonic() < until:
                try:
                    await call(body, metadata=headers or None, timeout=30)
                    counts["ok"] += 1
                except grpc.aio.AioRpcError as exc:
                    counts["errors"] += 1
                    if not first_error:
                        first_error.append(f"{exc.code().name}: {exc.details()}")

        await asyncio.gather(*(worker(time.monotonic() + 0.5) for _ in range(concurrency)))  # warm up
        counts = {"ok": 0, "errors": 0}
        cpu, start = server.cpu_seconds(), time.monotonic()
        await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
        elapsed, cpu = time.monotonic() - start, server.cpu_seconds() - cpu
    return {"infer_per_sec": counts["ok"] / elapsed, "cpu_us_per_request": cpu / max(1, counts["ok"]) * 1e6,
            "errors": counts["errors"], "first_error": first_error[:1]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in NAMES}
    with tempfile.TemporaryDirectory(prefix="tg-security-bench-") as tmp:
        root = Path(tmp)
        repo = build_repository(root / "repo", args.delay_us, 1, 1, no_op=True)
        cert, key = _self_signed(root)
        (root / "tokens").write_text(_TOKEN + "\n")
        guard = ["--grpc-restricted-protocol", f"{_GROUPS}:bench=on", "--grpc-auth-token-file", str(root / "tokens"),
                 "--grpc-auth-exempt", ""]
        tls = ["--grpc-use-ssl", "--grpc-server-cert", str(cert), "--grpc-server-key", str(key)]
        flags = {"open": [], "guarded": guard, "tls": tls, "tls_guarded": [*tls, *guard]}
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        servers: dict[str, ServerProcess] = {}
        try:
            for name in NAMES:
                servers[name] = start_tensorgate(repo, ["--allow-metrics", "false", *flags[name]])
            for rep in range(args.repeats):
                for name in NAMES if rep % 2 == 0 else tuple(reversed(NAMES)):
                    server = servers[name]
                    m = asyncio.run(_closed_loop(
                        server.url, credentials if "tls" in name else None,
                        _HEADERS if "guarded" in name else (), args.concurrency, args.seconds, server))
                    runs[name].append(m)
                    print(f"  rep {rep + 1} {name:<12} {m['infer_per_sec']:7.0f} infer/s"
                          f"  server CPU {m['cpu_us_per_request']:5.0f} us/request"
                          + (f"  errors {m['errors']} {m['first_error']}" if m["errors"] else ""), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    tput = {n: statistics.median(m["infer_per_sec"] for m in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(m["cpu_us_per_request"] for m in rs) for n, rs in runs.items()}
    ratios = {f"{n}/open": tput[n] / tput["open"] for n in NAMES[1:] if tput["open"]}
    cpu_ratios = {f"{n}/open": cpu[n] / cpu["open"] for n in NAMES[1:] if cpu["open"]}
    print(f"\nmedians at concurrency {args.concurrency} over {args.repeats} interleaved runs of {args.seconds} s:")
    for name in NAMES:
        print(f"  {name:<12} {tput[name]:7.0f} infer/s   server CPU {cpu[name]:5.0f} us/request")
    for k in ratios:
        print(f"  {k:<18} throughput {ratios[k]:.3f}   server CPU per request {cpu_ratios[k]:.3f}")
    return {"concurrency": args.concurrency, "seconds": args.seconds, "repeats": args.repeats,
            "median_infer_per_sec": tput, "median_cpu_us_per_request": cpu, "throughput_ratios": ratios,
            "cpu_per_request_ratios": cpu_ratios, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0, help="measurement window per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--delay-us", type=int, default=0, help="the model's max_queue_delay_microseconds")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if any(m["errors"] for rs in report["runs"].values() for m in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
