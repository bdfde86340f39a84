"""Fuzz a tensorgate server over the wire: valid, mutated and random-bytes ModelInferRequests.

    python -m tensorgate.bench.fuzz --requests 1000000 --processes 3 --json fuzz.json

Starts ``tensorgate serve`` on a repository of small models built for the purpose
(int32 add/sub with batching, BYTES and FP32 identities with variable dims, FP16,
a model without batching), then several client processes send requests as raw
bytes (so mutated bodies reach the server exactly as generated), many in flight
per process. It reports the status codes per kind of request, the server's RSS
(after warm-up and at the end) and crashes: the server process dying, a health
check failing, or any status outside the documented ones (INTERNAL, UNKNOWN, a
valid request that is not OK). Exit status 1 when anything of that kind happened.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tensorgate.clients.pb import grpc_service_pb2 as pb

from .servers import ServerProcess, start_tensorgate

__all__ = ["DOCUMENTED", "RequestFuzzer", "build_fuzz_repository", "main"]

INFER = "/inference.GRPCInferenceService/ModelInfer"
# what bad input may get (protocol.md, server/errors.py); RESOURCE_EXHAUSTED is gRPC's own message limit
DOCUMENTED = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "RESOURCE_EXHAUSTED"})
T = pb.ModelInferRequest.InferInputTensor

# model -> (max_batch_size, [(input, datatype, dims without the batch dim)])
MODELS: dict[str, tuple[int, list[tuple[str, str, list[int]]]]] = {
    "simple": (8, [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])]),
    "texts": (4, [("INPUT0", "BYTES", [-1])]),
    "vectors": (4, [("INPUT0", "FP32", [-1])]),
    "halves": (4, [("INPUT0", "FP16", [4])]),
    "nobatch": (0, [("INPUT0", "FP32", [-1, 16]), ("INPUT1", "FP32", [-1, 16])]),  # dims from the ONNX file
}
_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
              "FP64", "BF16", "BYTES", "", "fp32", "STRING", "INT32 ")
_NP = {"INT32": np.int32, "FP32": np.float32, "FP16": np.float16}
_DIMS = (0, 1, 2, 3, 4, 16, 17, 255, 2**16, 2**27, 2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1, -1, -2, -(2**63))


def build_fuzz_repository(folder: Path) -> Path:
    """The models of MODELS, as ONNX files and config.pbtxt."""
    from onnx import TensorProto

    from tensorgate.server.demo.models import build_add_sub, build_identity

    build_add_sub(folder / "simple" / "1" / "model.onnx")
    (folder / "simple" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n")
    for name, elem, dtype, dims in (("texts", TensorProto.STRING, "TYPE_STRING", "-1"),
                                    ("vectors", TensorProto.FLOAT, "TYPE_FP32", "-1"),
                                    ("halves", TensorProto.FLOAT16, "TYPE_FP16", "4")):
        build_identity(folder / name / "1" / "model.onnx", elem)
        (folder / name / "config.pbtxt").write_text(
            f'max_batch_size: 4\ninput [ {{ name: "INPUT0" data_type: {dtype} dims: [ {dims} ] }} ]\n'
            f'output [ {{ name: "OUTPUT0" data_type: {dtype} dims: [ {dims} ] }} ]\n'
        )
    build_add_sub(folder / "nobatch" / "1" / "model.onnx", dtype=np.float32)
    (folder / "nobatch" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return folder


class RequestFuzzer:
    """Request bodies from one random source: valid ones, mutated ones, random bytes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # ---- valid -----------------------------------------------------------------

    def valid(self) -> pb.ModelInferRequest:
        rng = self.rng
        model = rng.choice(sorted(MODELS))
        max_batch, inputs = MODELS[model]
        batch = rng.randint(1, max_batch) if max_batch else 0
        width = rng.randint(0, 8)
        request = pb.ModelInferRequest(model_name=model, id=f"v{rng.getrandbits(32)}",
                                       model_version=rng.choice(("", "1")))
        for name, datatype, dims in inputs:
            shape = ([batch] if max_batch else []) + [width if d == -1 else d for d in dims]
            count = int(np.prod(shape))
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            if datatype == "BYTES":
                items = [rng.randbytes(rng.randint(0, 12)) for _ in range(count)]
                request.raw_input_contents.append(b"".join(struct.pack("<I", len(x)) + x for x in items))
            else:
                values = np.array([rng.randint(-1000, 1000) for _ in range(count)]).astype(_NP[datatype])
                request.raw_input_contents.append(values.tobytes())
        return request

    # ---- mutated -----------------------------------------------------------------

    def mutated(self) -> bytes:
        """A valid request with 1-3 structural changes, then sometimes a few flipped or cut bytes."""
        request = self.valid()
        for _ in range(self.rng.randint(1, 3)):
            self.rng.choice(self._MUTATIONS)(self, request)
        body = request.SerializeToString()
        if self.rng.random() < 0.3:
            body = self._byte_edit(body)
        return body

    def garbage(self) -> bytes:
        rng = self.rng
        return rng.randbytes(rng.choice((0, 1, 2, 5, 16, 64, 300)))

    def _byte_edit(self, body: bytes) -> bytes:
        data = bytearray(body)
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            at = rng.randrange(len(data))
            op = rng.random()
            if op < 0.5:
                data[at] = rng.getrandbits(8)
            elif op < 0.75:
                del data[at:at + rng.randint(1, 8)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        return bytes(data)

    def _shape(self, r: pb.ModelInferRequest) -> None:
        if r.inputs:
            tensor = self.rng.choice(r.inputs)
            del tensor.shape[:]
            tensor.shape.extend(self.rng.choice(_DIMS) for _ in range(self.rng.randint(0, 4)))

    def _dim(self, r: pb.ModelInferRequest) -> None:
        if r.inputs and r.inputs[0].shape:
            tensor = self.rng.choice(r.inputs)
            if tensor.shape:
                tensor.shape[self.rng.randrange(len(tensor.shape))] = self.rng.choice(_DIMS)

    def _datatype(self, r: pb.ModelInferRequest) -> None:
        if r.inputs:
            self.rng.choice(r.inputs).datatype = self.rng.choice(_DATATYPES)

    def _name(self, r: pb.ModelInferRequest) -> None:
        choice = self.rng.random()
        if choice < 0.3:
            r.model_name = self.rng.choice(("", "nope", "simple\n", "../simple", "s" * 300, "\u2028", "texts"))
        elif choice < 0.6:
            r.model_version = self.rng.choice((" 1", "+1", "1_0", "0", "2", "-1", "99999999999999999999", "latest",
                                               "\u0661", "1 "))
        elif r.inputs:
            self.rng.choice(r.inputs).name = self.rng.choice(("", "INPUT9", "INPUT0", "INPUT1", "x" * 100))

    def _raw(self, r: pb.ModelInferRequest) -> None:
        raws = r.raw_input_contents
        op = self.rng.random()
        if op < 0.3 and raws:
            del raws[self.rng.randrange(len(raws))]
        elif op < 0.5:
            raws.append(self.rng.randbytes(self.rng.randint(0, 64)))
        elif raws:
            at = self.rng.randrange(len(raws))
            raws[at] = self._byte_edit(raws[at]) if raws[at] else self.rng.randbytes(4)

    def _bytes_claim(self, r: pb.ModelInferRequest) -> None:
        """BYTES prefixes that claim more than was sent, or a BYTES datatype on a fixed-size input."""
        if r.raw_input_contents:
            r.raw_input_contents[0] = struct.pack("<I", self.rng.choice((1, 2**31, 2**32 - 1))) + b"ab"

    def _contents(self, r: pb.ModelInferRequest) -> None:
        if r.inputs:
            contents = self.rng.choice(r.inputs).contents
            field = self.rng.choice(("bool_contents", "int_contents", "int64_contents", "uint_contents",
                                     "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"))
            values: list[Any]
            if field == "bytes_contents":
                values = [self.rng.randbytes(3) for _ in range(self.rng.randint(0, 40))]
            elif field == "bool_contents":
                values = [True] * self.rng.randint(0, 40)
            elif field in ("fp32_contents", "fp64_contents"):
                values = [self.rng.uniform(-1e30, 1e30) for _ in range(self.rng.randint(0, 40))]
            elif field in ("uint_contents", "uint64_contents"):
                values = [self.rng.randint(0, 2**32 - 1) for _ in range(self.rng.randint(0, 40))]
            else:
                values = [self.rng.randint(-(2**31), 2**31 - 1) for _ in range(self.rng.randint(0, 40))]
            getattr(contents, field).extend(values)
            if self.rng.random() < 0.7:
                del r.raw_input_contents[:]

    def _parameters(self, r: pb.ModelInferRequest) -> None:
        target = r.parameters if self.rng.random() < 0.6 or not r.inputs else self.rng.choice(r.inputs).parameters
        key = self.rng.choice(("priority", "timeout", "sequence_id", "sequence_start", "triton_x",
                               "shared_memory_region", "shared_memory_byte_size", "binary_data_output", "custom"))
        param = target[key]
        which = self.rng.randrange(5)
        if which == 0:
            param.bool_param = True
        elif which == 1:
            param.int64_param = self.rng.choice((-1, 0, 1, 2**62))
        elif which == 2:
            param.string_param = "x\n"
        elif which == 3:
            param.double_param = 1.5
        else:
            param.uint64_param = self.rng.choice((0, 1, 2**64 - 1))

    def _outputs(self, r: pb.ModelInferRequest) -> None:
        out = r.outputs.add(name=self.rng.choice(("OUTPUT0", "OUTPUT1", "nope", "")))
        if self.rng.random() < 0.5:
            out.parameters["classification"].int64_param = self.rng.choice((-1, 0, 1, 3, 2**40))

    def _duplicate(self, r: pb.ModelInferRequest) -> None:
        if r.inputs:
            r.inputs.append(r.inputs[0])
            if r.raw_input_contents:
                r.raw_input_contents.append(r.raw_input_contents[0])

    _MUTATIONS = (_shape, _dim, _datatype, _name, _raw, _bytes_claim, _contents, _parameters, _outputs,
                  _duplicate)

    def next(self) -> tuple[str, bytes]:
        roll = self.rng.random()
        if roll < 0.2:
            return "valid", self.valid().SerializeToString()
        if roll < 0.8:
            return "mutated", self.mutated()
        return "random", self.garbage()


def _client(url: str, count: int, seed: int, window: int, queue: Any) -> None:
    """One client process: `count` requests, `window` in flight; sends (kind, code) tallies back."""
    fuzzer = RequestFuzzer(random.Random(seed))
    tally: Counter[tuple[str, str]] = Counter()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(url, options=options) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(INFER)
        pending: list[tuple[str, Any]] = []
        for _ in range(count):
            kind, body = fuzzer.next()
            pending.append((kind, call.future(body, timeout=60)))
            if len(pending) >= window:
                for k, future in pending:
                    error = future.exception()
                    tally[(k, "OK" if error is None else error.code().name)] += 1
                pending.clear()
        for k, future in pending:
            error = future.exception()
            tally[(k, "OK" if error is None else error.code().name)] += 1
    queue.put(dict(tally))


def _healthy(url: str) -> bool:
    from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(url) as channel:
        try:
            return bool(pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=10).ready)
        except grpc.RpcError:
            return False


def run_fuzz(server: ServerProcess, requests: int, processes: int, seed: int, window: int = 64,
             chunk: int = 50_000) -> dict[str, Any]:
    """Send `requests` fuzzed requests in rounds of `chunk` per process; RSS sampled between rounds."""
    ctx = multiprocessing.get_context("spawn")
    tally: Counter[tuple[str, str]] = Counter()
    rss: list[float] = [server.rss_mb()]
    sent = 0
    started = time.monotonic()
    round_index = 0
    while sent < requests and server.proc.poll() is None:
        per = min(chunk, max(1, (requests - sent) // processes))
        queue = ctx.Queue()
        workers = [ctx.Process(target=_client, args=(server.url, per, seed + round_index * 1000 + i, window, queue))
                   for i in range(processes)]
        for w in workers:
            w.start()
        for _ in workers:
            tally.update({tuple(k): v for k, v in queue.get().items()})
        for w in workers:
            w.join()
        sent += per * processes
        round_index += 1
        rss.append(server.rss_mb())
        print(f"  {sent:>9,} requests  {sent / (time.monotonic() - started):>7,.0f}/s  server RSS {rss[-1]:.0f} MiB",
              flush=True)
    elapsed = time.monotonic() - started
    alive = server.proc.poll() is None
    codes: Counter[str] = Counter()
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, code), n in tally.items():
        codes[code] += n
        by_kind.setdefault(kind, {})[code] = by_kind.get(kind, {}).get(code, 0) + n
    undocumented = sum(n for code, n in codes.items() if code not in DOCUMENTED)
    valid_failed = sum(n for code, n in by_kind.get("valid", {}).items() if code != "OK")
    warm = rss[1] if len(rss) > 2 else rss[0]
    return {
        "requests": sum(codes.values()),
        "seconds": round(elapsed, 1),
        "rate": round(sum(codes.values()) / elapsed),
        "codes": dict(codes.most_common()),
        "by_kind": by_kind,
        "rss_mb": {"start": round(rss[0], 1), "after_first_round": round(warm, 1), "end": round(rss[-1], 1),
                   "max": round(max(rss), 1)},
        "rss_growth_after_warmup": round(rss[-1] / warm - 1, 4),
        "server_alive": alive,
        "healthy_at_end": alive and _healthy(server.url),
        "undocumented_codes": undocumented,
        "valid_not_ok": valid_failed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tensorgate.bench.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000, help="how many requests in all (default 1,000,000)")
    p.add_argument("--processes", type=int, default=3, help="client processes (default 3)")
    p.add_argument("--window", type=int, default=64, help="requests in flight per process (default 64)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--grpc-flavor", choices=("aio", "thread"), default="aio")
    p.add_argument("--json", type=Path, help="write the report here as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tg-fuzz-") as folder:
        repository = build_fuzz_repository(Path(folder))
        server = start_tensorgate(repository, ["--allow-metrics", "false", "--grpc-flavor", args.grpc_flavor])
        try:
            report = run_fuzz(server, args.requests, args.processes, args.seed, args.window)
        finally:
            server.stop()
        report["server_exit_code"] = server.proc.returncode
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    bad = report["undocumented_codes"] or report["valid_not_ok"] or not report["healthy_at_end"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
