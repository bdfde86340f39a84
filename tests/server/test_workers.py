"""`tensorgate serve --workers 2`: two processes on one port, connections spread across them."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
from test_rpcs import simple_request

from support import serve_subprocess
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc


def test_two_workers_share_the_port(test_repository: Path) -> None:
    a = np.ones((1, 16), np.int32)
    with serve_subprocess(test_repository, "--workers", "2") as (_proc, port):
        seen = []
        for i in range(16):
            # a local subchannel pool gives each channel its own TCP connection
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                assert stub.ModelInfer(simple_request(str(i), a, a), timeout=30).id == str(i)
                stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple"), timeout=30)
                seen.append(stats.model_stats[0].inference_stats.success.count)
        # one process would count 1, 2, ..., 16; two processes count separately, so values repeat
        assert max(seen) < 16 and len(set(seen)) < len(seen), seen
