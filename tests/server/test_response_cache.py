"""The response cache over real gRPC: exact hit/miss counts, eviction under the byte bound, no collisions,
cached answers equal to computed ones bit for bit, parameters that bypass it, --cache-config, metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from apps_models import CHAIN, SIMPLE, chain_request, write_ensemble

from support import RunningServer, running_server, write_model
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc
from tensorgate.server.request import InferRequest, RequestedOutput
from tensorgate.server.response_cache import CacheConfigError, ResponseCache, parse_cache_config, request_key
from tensorgate.server.telemetry import TelemetrySettings

T = pb.ModelInferRequest.InferInputTensor
MLP = 'max_batch_size: 16\ndynamic_batching { }\nresponse_cache { enable: true }\n'
OUTPUT_BYTES = 10 * 4  # the MLP's one output row: 10 fp32


def _mlp_request(x: np.ndarray, model: str = "mlp") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model, inputs=[T(name="INPUT0", datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.astype(np.float32).tobytes()],
    )


@pytest.fixture(scope="module")
def cache_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cached")
    write_model(repo, "mlp", MLP, builder="mlp", sizes=(784, 64, 10), seed=3)
    write_model(repo, "mlp_nocache", MLP.replace("enable: true", "enable: false"), builder="mlp",
                sizes=(784, 64, 10), seed=3)
    write_model(repo, "simple", SIMPLE + "response_cache { enable: true }\n")
    write_ensemble(repo, "chain", CHAIN + "response_cache { enable: true }\n")
    return repo


@pytest.fixture(scope="module")
def cached(cache_repo: Path) -> Iterator[RunningServer]:
    with running_server(cache_repo, response_cache_bytes=1 << 20,
                        telemetry=TelemetrySettings(metrics_port=0)) as handle:
        yield handle


def _stub(handle: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(handle.channel())


def _stats(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]


def test_hits_and_misses_are_counted_exactly_and_hits_skip_the_model(cached: RunningServer) -> None:
    stub = _stub(cached)
    before = _stats(stub, "mlp")
    x = np.random.default_rng(1).random((1, 784), np.float32)
    first = stub.ModelInfer(_mlp_request(x))
    again = [stub.ModelInfer(_mlp_request(x)) for _ in range(3)]
    after = _stats(stub, "mlp")
    infer = after.inference_stats
    assert infer.cache_miss.count - before.inference_stats.cache_miss.count == 1
    assert infer.cache_hit.count - before.inference_stats.cache_hit.count == 3
    assert infer.success.count - before.inference_stats.success.count == 4  # success includes hits
    assert infer.queue.count - before.inference_stats.queue.count == 4
    assert after.execution_count - before.execution_count == 1  # computed once
    assert after.inference_count - before.inference_count == 1
    assert infer.compute_infer.count - before.inference_stats.compute_infer.count == 1
    for response in again:  # bit for bit
        assert response.raw_output_contents == first.raw_output_contents
        assert response.outputs == first.outputs


def test_a_cached_response_equals_the_computed_one_of_an_uncached_twin(cached: RunningServer) -> None:
    stub = _stub(cached)
    x = np.random.default_rng(2).random((3, 784), np.float32)
    stub.ModelInfer(_mlp_request(x))
    hit = stub.ModelInfer(_mlp_request(x))
    computed = stub.ModelInfer(_mlp_request(x, "mlp_nocache"))
    assert hit.raw_output_contents == computed.raw_output_contents
    assert _stats(stub, "mlp_nocache").inference_stats.cache_hit.count == 0


def test_different_inputs_never_share_an_entry(cached: RunningServer) -> None:
    stub = _stub(cached)
    rng = np.random.default_rng(3)
    before = _stats(stub, "mlp").inference_stats
    inputs = [rng.random((1, 784), np.float32) for _ in range(8)]
    inputs.append(inputs[0].copy())
    inputs[-1][0, 783] = np.nextafter(inputs[-1][0, 783], 2)  # one ulp apart
    answers = [stub.ModelInfer(_mlp_request(x)).raw_output_contents[0] for x in inputs]
    reference = [stub.ModelInfer(_mlp_request(x, "mlp_nocache")).raw_output_contents[0] for x in inputs]
    assert answers == reference
    after = _stats(stub, "mlp").inference_stats
    assert after.cache_miss.count - before.cache_miss.count == 9 and after.cache_hit.count == before.cache_hit.count


def test_the_key_covers_name_datatype_shape_bytes_and_requested_outputs(cached: RunningServer) -> None:
    mv = cached.server.registry.resolve("simple")
    data = np.arange(32, dtype=np.int32)

    def key(inputs: dict[str, np.ndarray], requested: list[str] | None = None) -> bytes:
        wanted = [RequestedOutput(n, 0) for n in (requested or ["OUTPUT0", "OUTPUT1"])]
        return request_key(InferRequest(mv, "", inputs, wanted, 1, (), 0))

    base = key({"INPUT0": data[:16].reshape(1, 16), "INPUT1": data[16:].reshape(1, 16)})
    assert base == key({"INPUT1": data[16:].reshape(1, 16), "INPUT0": data[:16].reshape(1, 16)})  # order-free
    assert base != key({"INPUT0": data[16:].reshape(1, 16), "INPUT1": data[:16].reshape(1, 16)})  # names swapped
    assert base != key({"INPUT0": data[:16].reshape(1, 16), "INPUT1": data[16:].reshape(1, 16)}, ["OUTPUT0"])
    assert key({"INPUT0": data.reshape(2, 16)}) != key({"INPUT0": data.reshape(1, 32)})  # same bytes, new shape
    assert key({"INPUT0": data.view(np.float32).reshape(2, 16)}) != key({"INPUT0": data.reshape(2, 16)})


def test_requests_with_their_own_parameters_bypass_the_cache(cached: RunningServer) -> None:
    stub = _stub(cached)
    x = np.full((1, 784), 0.25, np.float32)
    before = _stats(stub, "mlp")
    for _ in range(2):
        request = _mlp_request(x)
        request.parameters["my_option"].string_param = "changes the result"
        stub.ModelInfer(request)
    after = _stats(stub, "mlp")
    assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count
    assert after.inference_stats.cache_miss.count == before.inference_stats.cache_miss.count
    assert after.execution_count - before.execution_count == 2
    request = _mlp_request(x)
    request.parameters["priority"].uint64_param = 1  # scheduling only: still cached
    stub.ModelInfer(request)
    assert _stats(stub, "mlp").inference_stats.cache_miss.count == before.inference_stats.cache_miss.count + 1


def test_an_ensemble_caches_its_whole_response(cached: RunningServer) -> None:
    stub = _stub(cached)
    a = np.full((1, 16), 7, np.int32)
    first = stub.ModelInfer(chain_request(a, a))
    simple_runs = _stats(stub, "simple").inference_stats.success.count
    second = stub.ModelInfer(chain_request(a, a))
    assert second.raw_output_contents == first.raw_output_contents
    assert _stats(stub, "chain").inference_stats.cache_hit.count == 1
    assert _stats(stub, "simple").inference_stats.success.count == simple_runs  # no step ran


def test_metrics_show_the_cache_counts(cached: RunningServer) -> None:
    stub = _stub(cached)
    x = np.full((1, 784), 0.5, np.float32)
    for _ in range(2):
        stub.ModelInfer(_mlp_request(x))
    metrics = cached.server.telemetry.metrics
    assert metrics is not None
    with urllib.request.urlopen(metrics.url, timeout=10) as response:
        text = response.read().decode()
    stats = _stats(stub, "mlp").inference_stats
    assert f'nv_cache_num_hits_per_model{{model="mlp",version="1"}} {float(stats.cache_hit.count)}' in text
    assert f'nv_cache_num_misses_per_model{{model="mlp",version="1"}} {float(stats.cache_miss.count)}' in text
    assert 'nv_cache_hit_duration_per_model{model="mlp",version="1"}' in text
    assert 'nv_cache_miss_duration_per_model{model="mlp",version="1"}' in text
    assert 'nv_cache_num_hits_per_model{model="mlp_nocache"' not in text
    assert "nv_cache_num_entries " in text and "nv_cache_util " in text


def test_eviction_keeps_the_cache_under_its_byte_bound(cache_repo: Path) -> None:
    entry = ResponseCache(1 << 20)
    entry.put(b"probe", {"OUTPUT0": np.zeros((1, 10), np.float32)})
    size = entry.used_bytes
    with running_server(cache_repo, response_cache_bytes=2 * size + size // 2) as handle:  # room for two
        stub = _stub(handle)
        xs = [np.full((1, 784), float(i), np.float32) for i in range(3)]
        for x in xs:
            stub.ModelInfer(_mlp_request(x))
        cache = handle.server.registry.response_cache
        assert cache is not None
        assert len(cache) == 2 and cache.used_bytes <= cache.max_bytes and cache.evictions == 1
        stub.ModelInfer(_mlp_request(xs[2]))  # the newest is still there
        stub.ModelInfer(_mlp_request(xs[0]))  # the oldest was evicted: computed again
        infer = _stats(stub, "mlp").inference_stats
        assert infer.cache_hit.count == 1 and infer.cache_miss.count == 4


def test_without_cache_config_an_enabled_model_computes_every_request(cache_repo: Path) -> None:
    with running_server(cache_repo) as handle:
        stub = _stub(handle)
        x = np.ones((1, 784), np.float32)
        for _ in range(2):
            stub.ModelInfer(_mlp_request(x))
        stats = _stats(stub, "mlp")
        assert stats.execution_count == 2 and stats.inference_stats.cache_miss.count == 0


def test_lru_order_and_oversized_entries() -> None:
    cache = ResponseCache(3 * 200)
    small = {"o": np.zeros(8, np.float32)}
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, small)
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"d", small)
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    assert not cache.put(b"huge", {"o": np.zeros(1000, np.float32)})
    stored = cache.get(b"a")
    assert stored is not None and not stored["o"].flags.writeable


def test_cache_config_parsing() -> None:
    assert parse_cache_config([]) is None
    assert parse_cache_config(["local,size=1048576"]) == 1048576
    for bad in ("redis,size=1", "local,size=lots", "local,bytes=1", "local,size=-1"):
        with pytest.raises(CacheConfigError):
            parse_cache_config([bad])
