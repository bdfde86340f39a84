"""Bare gRPC echo servers: the RPC ceiling a Python server cannot beat.

They speak just enough of inference.GRPCInferenceService for perf_analyzer and
tritonclient (ServerMetadata, ModelMetadata, ModelConfig, ModelInfer,
ModelStreamInfer) and answer every ModelInfer with a response of the size the
real model would send, built afresh per request, so a benchmark can compare a
server against the cost of gRPC itself. Two flavours: grpc.aio and the
thread-pool ``grpc.server``; which is faster depends on the client.

    python -m tensorgate.bench.echo --flavor aio --port 9001 --like 127.0.0.1:8001 --model mlp
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

__all__ = ["EchoModel", "describe_model", "serve_aio", "serve_threads"]

MAX_MESSAGE = 2**31 - 1
_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


class EchoModel:
    """The metadata, config and response shape of the model an echo server imitates."""

    def __init__(self, metadata: pb.ModelMetadataResponse, config: pb.ModelConfigResponse,
                 output_bytes: dict[str, tuple[str, list[int], int]]) -> None:
        self.metadata = metadata
        self.config = config
        self.outputs = output_bytes  # name -> (datatype, per-row shape, bytes per row)


def describe_model(url: str, model: str) -> EchoModel:
    """Copy a live server's model metadata/config; outputs' sizes from their fixed dims."""
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    config = stub.ModelConfig(pb.ModelConfigRequest(name=model))
    config.config.ClearField("dynamic_batching")  # no batching: perf_analyzer sees a plain model
    sizes = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2,
             "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}
    batching = config.config.max_batch_size > 0
    outputs = {}
    for t in metadata.outputs:
        dims = list(t.shape[1:] if batching else t.shape)
        elements = 1
        for d in dims:
            elements *= max(d, 1)
        outputs[t.name] = (t.datatype, dims, elements * sizes.get(t.datatype, 4))
    return EchoModel(metadata, config, outputs)


def _respond(model: EchoModel, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
    tensors = []
    raws = []
    for name, (datatype, dims, row_bytes) in model.outputs.items():
        tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=[rows, *dims]))
        raws.append(bytes(row_bytes * rows))
    return pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id,
                                 outputs=tensors, raw_output_contents=raws)


class _ThreadEcho(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: EchoModel) -> None:
        self.model = model

    def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="echo", version="0")

    def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return self.model.metadata

    def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        return self.model.config

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return _respond(self.model, request)

    def ModelStreamInfer(self, requests: Iterator[pb.ModelInferRequest], context: Any) -> Iterator[Any]:
        for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=_respond(self.model, request))


class _AioEcho(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: EchoModel) -> None:
        self.model = model

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="echo", version="0")

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return self.model.metadata

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        return self.model.config

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return _respond(self.model, request)

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=_respond(self.model, request))


def serve_threads(model: EchoModel, address: str, workers: int = 64) -> None:
    """The thread-pool flavour, until interrupted."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=_OPTIONS)
    # the generated base class answers UNIMPLEMENTED for the RPCs an echo has no use for
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_ThreadEcho(model), server)  # type: ignore[abstract]
    server.add_insecure_port(address)
    server.start()
    print(f"echo (thread pool) on {address}", flush=True)
    server.wait_for_termination()


def serve_aio(model: EchoModel, address: str) -> None:
    """The grpc.aio flavour, until interrupted."""

    async def run() -> None:
        server = grpc.aio.server(options=_OPTIONS)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_AioEcho(model), server)  # type: ignore[abstract]
        server.add_insecure_port(address)
        await server.start()
        print(f"echo (grpc.aio) on {address}", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", choices=("aio", "thread"), default="aio")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--like", required=True, help="URL of a server whose model to imitate")
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = describe_model(args.like, args.model)
    address = f"127.0.0.1:{args.port}"
    if args.flavor == "aio":
        serve_aio(model, address)
    else:
        serve_threads(model, address)


if __name__ == "__main__":
    main()
