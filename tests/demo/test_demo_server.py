"""`tensorgate serve` with no --model-repository serves the demo repository; MiniLM over gRPC matches the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from support import serve_subprocess
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "minilm_reference.json"


def test_demo_serve_embeds_like_sentence_transformers(tmp_path: Path) -> None:
    import grpc

    reference = json.loads(REFERENCE.read_text())
    ids = np.asarray(reference["input_ids"], dtype=np.int64)
    mask = np.asarray(reference["attention_mask"], dtype=np.int64)
    expected = np.asarray(reference["sentence_embedding"], dtype=np.float32)
    with serve_subprocess(None, "--cache-dir", str(tmp_path / "cache")) as (_, port):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        index = {m.name: m.state for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index == {"minilm": "READY", "minilm_text": "READY", "minilm_tokenizer": "READY", "simple": "READY"}
        T = pb.ModelInferRequest.InferInputTensor
        response = stub.ModelInfer(
            pb.ModelInferRequest(
                model_name="minilm",
                inputs=[T(name="input_ids", datatype="INT64", shape=list(ids.shape)),
                        T(name="attention_mask", datatype="INT64", shape=list(mask.shape))],
                raw_input_contents=[ids.tobytes(), mask.tobytes()],
            ),
            timeout=60,
        )
        # the same sentences as text through the minilm_text ensemble (tokenizer step, then minilm)
        texts = [s.encode() for s in reference["sentences"]]
        text_response = stub.ModelInfer(
            pb.ModelInferRequest(
                model_name="minilm_text",
                inputs=[T(name="text", datatype="BYTES", shape=[len(texts), 1])],
                raw_input_contents=[b"".join(len(t).to_bytes(4, "little") + t for t in texts)],
            ),
            timeout=60,
        )
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(expected.shape)
    assert np.abs(got - expected).max() <= 1e-4
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999
    assert (tmp_path / "cache" / "demo-repository-v2" / "minilm" / "tokenizer.json").exists()
    from_text = np.frombuffer(text_response.raw_output_contents[0], np.float32).reshape(expected.shape)
    assert list(text_response.outputs[0].shape) == list(expected.shape)
    assert np.abs(from_text - got).max() <= 1e-6  # equal to the two-step result
