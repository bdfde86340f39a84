"""The checked-in generated code in clients/pb matches what protos/generate.py makes now."""

from __future__ import annotations

import subprocess
import sys

from support import REPO_ROOT


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_has_all_twenty_rpcs() -> None:
    from tensorgate.clients.pb import grpc_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert len(service.methods) == 20
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.output_type.name == "ModelStreamInferResponse"
