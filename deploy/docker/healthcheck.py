"""The images' HEALTHCHECK: one grpc.health.v1 Check against the local server; exit 0 only when SERVING.

tensorgate answers SERVING exactly when it is ready (and NOT_SERVING while it drains),
so Docker marks a draining or still-loading container unhealthy, as a Kubernetes
readiness probe would. Usage: python healthcheck.py [port] (default $TENSORGATE_GRPC_PORT or 8001).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    port = int(argv[1] if len(argv) > 1 else os.environ.get("TENSORGATE_GRPC_PORT", "8001"))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(status)
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
