from __future__ import annotations

import numpy as np

from support import RunningServer
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc


def test_index_shows_broken_model_unavailable_and_others_ready(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["broken"].state == "UNAVAILABLE" and "Protobuf parsing failed" in index["broken"].reason
    for name in ("simple", "nobatch", "autocomplete", "mlp"):
        assert index[name].state == "READY", index[name]
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    T = pb.ModelInferRequest.InferInputTensor
    resp = stub.ModelInfer(pb.ModelInferRequest(
        model_name="simple", inputs=[T(name="INPUT0", datatype="INT32", shape=[1, 16]),
                                     T(name="INPUT1", datatype="INT32", shape=[1, 16])],
        raw_input_contents=[a.tobytes(), a.tobytes()]))
    assert np.array_equal(np.frombuffer(resp.raw_output_contents[0], np.int32), 2 * a.ravel())
