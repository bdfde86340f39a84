"""Property-based fuzzing of ModelInfer against a real `tensorgate serve` process (issue 11 part 8).

Valid, structurally generated, mutated and random-bytes requests: only documented status codes come back,
valid requests succeed, the server keeps serving and its RSS stays bounded. Bounded to well under a minute;
`python -m tensorgate.bench.fuzz` runs the million-request version.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import hypothesis.strategies as st
import psutil
import pytest
from hypothesis import HealthCheck, given, settings

from support import serve_subprocess
from tensorgate.bench.fuzz import DOCUMENTED, INFER, MODELS, RequestFuzzer, build_fuzz_repository
from tensorgate.clients.pb import grpc_service_pb2 as pb

MiB = 2**20
_FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class _Target:
    def __init__(self, port: int, pid: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(INFER)
        self.process = psutil.Process(pid)

    def code(self, body: bytes) -> str:
        try:
            self.call(body, timeout=30)
        except grpc.RpcError as exc:
            return str(exc.code().name)
        return "OK"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Target]:
    repository = build_fuzz_repository(tmp_path_factory.mktemp("fuzz"))
    with serve_subprocess(repository, "--allow-metrics", "false") as (proc, port):
        handle = _Target(port, proc.pid)
        fuzzer = RequestFuzzer(random.Random(0))
        for _ in range(300):  # warm-up: sessions, arenas and caches settle before RSS is compared
            handle.code(fuzzer.next()[1])
        handle.rss_before = handle.process.memory_info().rss  # type: ignore[attr-defined]
        yield handle
        assert proc.poll() is None, "the server died during fuzzing"
        handle.channel.close()


_NAMES = st.sampled_from([*sorted(MODELS), "", "nope"]) | st.text(max_size=8)
_DATATYPES = st.sampled_from(["INT32", "FP32", "FP16", "BYTES", "BF16", "INT64", "BOOL", ""]) | st.text(max_size=6)
_DIMS = st.one_of(st.integers(-3, 20), st.sampled_from([2**27, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]))
_PARAMETER = st.one_of(
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.InferParameter, string_param=st.text(max_size=8)),
    st.builds(pb.InferParameter, double_param=st.floats(allow_nan=True)),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
)


@st.composite
def structured_requests(draw: st.DrawFn) -> bytes:
    """Any combination of the request's fields: names, versions, datatypes, shapes, data, parameters."""
    request = pb.ModelInferRequest(
        model_name=draw(_NAMES),
        model_version=draw(st.sampled_from(["", "1", " 1", "2", "01"]) | st.text(max_size=4)),
        id=draw(st.text(max_size=8)),
    )
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["INPUT0", "INPUT1", ""]) | st.text(max_size=4)),
            datatype=draw(_DATATYPES),
            shape=draw(st.lists(_DIMS, max_size=4)),
        )
        if draw(st.booleans()):
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20)))
        if draw(st.booleans()):
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=8)))
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=200), max_size=3)))
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "sequence_id", "triton_x", "custom"]),
                             max_size=3)):
        request.parameters[key].CopyFrom(draw(_PARAMETER))
    for name in draw(st.lists(st.sampled_from(["OUTPUT0", "OUTPUT1", "x"]), max_size=2)):
        out = request.outputs.add(name=name)
        if draw(st.booleans()):
            out.parameters["classification"].CopyFrom(draw(_PARAMETER))
    return request.SerializeToString()


@given(body=structured_requests())
@_FUZZ
def test_structured_requests_get_documented_codes(target: _Target, body: bytes) -> None:
    assert target.code(body) in DOCUMENTED


@given(rng=st.randoms(use_true_random=False))
@_FUZZ
def test_valid_requests_succeed(target: _Target, rng: random.Random) -> None:
    assert target.code(RequestFuzzer(rng).valid().SerializeToString()) == "OK"


@given(rng=st.randoms(use_true_random=False))
@_FUZZ
def test_mutated_requests_get_documented_codes(target: _Target, rng: random.Random) -> None:
    assert target.code(RequestFuzzer(rng).mutated()) in DOCUMENTED


@given(body=st.binary(max_size=300))
@_FUZZ
def test_random_bytes_get_documented_codes(target: _Target, body: bytes) -> None:
    assert target.code(body) in DOCUMENTED - {"OK"}


def test_server_keeps_serving_with_bounded_rss(target: _Target) -> None:
    """Runs after the properties (file order): the server answers a valid request and did not grow."""
    fuzzer = RequestFuzzer(random.Random(1))
    for _ in range(500):
        target.code(fuzzer.next()[1])
    assert target.code(fuzzer.valid().SerializeToString()) == "OK"
    after = target.process.memory_info().rss
    before: int = target.rss_before  # type: ignore[attr-defined]
    assert after <= before * 1.10 + 16 * MiB, f"server RSS grew from {before // MiB} to {after // MiB} MiB"
