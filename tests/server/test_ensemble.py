"""Ensembles over real gRPC: steps in process, composing models batching on their own, statistics per
model and for the ensemble, load errors with reasons, step errors that name the step."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from apps_models import chain_request, ensemble_repository, text_request

from support import RunningServer, running_server
from tensorgate.clients.pb import grpc_service_pb2 as pb
from tensorgate.clients.pb import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def apps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = ensemble_repository(tmp_path_factory.mktemp("ensembles"))
    with running_server(repo) as handle:
        yield handle


def _stub(handle: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(handle.channel())


def _stats(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0]


def test_a_two_step_chain_computes_through_both_steps(apps_server: RunningServer) -> None:
    stub = _stub(apps_server)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 5, dtype=np.int32)
    response = stub.ModelInfer(chain_request(a, b, request_id="r1"))
    assert response.model_name == "chain" and response.id == "r1"
    assert [o.name for o in response.outputs] == ["TWICE_A", "TWICE_B"]
    assert list(response.outputs[0].shape) == [2, 16]
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int32).reshape(2, 16), 2 * a)
    assert np.array_equal(np.frombuffer(response.raw_output_contents[1], np.int32).reshape(2, 16), 2 * b)


def test_metadata_and_config_describe_the_ensemble(apps_server: RunningServer) -> None:
    stub = _stub(apps_server)
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="chain"))
    assert meta.platform == "ensemble"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("A", "INT32", [-1, 16]),
                                                                          ("B", "INT32", [-1, 16])]
    config = stub.ModelConfig(pb.ModelConfigRequest(name="chain")).config
    assert len(config.ensemble_scheduling.step) == 2


def test_statistics_count_each_composing_model_and_the_ensemble(apps_server: RunningServer) -> None:
    stub = _stub(apps_server)
    before_chain, before_simple = _stats(stub, "chain"), _stats(stub, "simple")
    a = np.ones((3, 16), np.int32)
    for _ in range(2):
        stub.ModelInfer(chain_request(a, a))
    chain, simple = _stats(stub, "chain"), _stats(stub, "simple")
    assert chain.inference_stats.success.count - before_chain.inference_stats.success.count == 2
    assert chain.inference_count - before_chain.inference_count == 6  # rows
    # every ensemble request ran both steps on simple: 2 requests x 2 steps x 3 rows
    assert simple.inference_stats.success.count - before_simple.inference_stats.success.count == 4
    assert simple.inference_count - before_simple.inference_count == 12
    assert chain.inference_stats.compute_infer.ns > before_chain.inference_stats.compute_infer.ns


def test_composing_models_batch_requests_from_concurrent_ensembles(apps_server: RunningServer) -> None:
    stub = _stub(apps_server)
    before = _stats(stub, "simple").execution_count
    a = np.ones((1, 16), np.int32)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: stub.ModelInfer(chain_request(a * i, a)), range(6)))
    for i, response in enumerate(results):
        assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int32), np.full(16, 2 * i))
    executions = _stats(stub, "simple").execution_count - before
    # 12 step requests ran in fewer engine runs: the composing model batched them across ensembles
    assert executions < 12, executions


def test_broken_ensembles_are_unavailable_with_reasons_and_the_rest_serve(apps_server: RunningServer) -> None:
    stub = _stub(apps_server)
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    for name in ("chain", "text", "strict_text", "simple", "tokenizer"):
        assert index[name].state == "READY", index[name]
    assert "composing model 'nowhere'" in index["missing_model"].reason
    assert "'WRONG', which is not an input" in index["bad_map"].reason
    assert "ensemble output 'TWICE_B' is written by no step" in index["unwritten"].reason
    assert index["cycle"].state == "UNAVAILABLE"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(chain_request(np.ones((1, 16)), np.ones((1, 16)), model="missing_model"))
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)


def test_text_flows_through_the_tokenizer_step(apps_server: RunningServer) -> None:
    response = _stub(apps_server).ModelInfer(text_request([b"A man is eating food.", b"bread"]))
    ids = np.frombuffer(response.raw_output_contents[0], np.int64).reshape(list(response.outputs[0].shape))
    mask = np.frombuffer(response.raw_output_contents[1], np.int64).reshape(ids.shape)
    assert ids.tolist() == [[2, 4, 5, 6, 7, 8, 12, 3], [2, 9, 3, 0, 0, 0, 0, 0]]
    assert mask.tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]


def test_a_bad_step_input_names_the_step_and_the_server_keeps_serving(apps_server: RunningServer) -> None:
    stub = _stub(apps_server)
    with pytest.raises(grpc.RpcError) as err:  # the tokenizer's text cap, checked before decoding
        stub.ModelInfer(text_request([b"food " * 100]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_text_bytes" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:  # not UTF-8: refused before the step runs
        stub.ModelInfer(text_request([b"\xff\xfe food"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:  # the step's model fails: INTERNAL naming the step, no internals
        stub.ModelInfer(text_request([b"a man is eating a piece of bread ."], model="strict_text"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details() or ""
    assert "ensemble 'strict_text' step 0 (model 'strict_tokenizer')" in details and "tokens" not in details
    failed = _stats(stub, "strict_text").inference_stats.fail.count
    assert failed == 1
    test_a_two_step_chain_computes_through_both_steps(apps_server)


def test_ensemble_with_a_missing_input_is_invalid(apps_server: RunningServer) -> None:
    request = chain_request(np.ones((1, 16)), np.ones((1, 16)))
    del request.inputs[1]
    del request.raw_input_contents[1]
    with pytest.raises(grpc.RpcError) as err:
        _stub(apps_server).ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_ensemble_loads_after_its_composing_models_whatever_the_names(tmp_path: Path) -> None:
    from apps_models import CHAIN, SIMPLE, write_ensemble

    from support import write_model

    write_model(tmp_path, "zz_simple", SIMPLE)
    outer = CHAIN.split("ensemble_scheduling")[0] + """ensemble_scheduling { step [ { model_name: "mm_inner"
      input_map { key: "A" value: "A" } input_map { key: "B" value: "B" }
      output_map { key: "TWICE_A" value: "TWICE_A" } output_map { key: "TWICE_B" value: "TWICE_B" } } ] }"""
    write_ensemble(tmp_path, "aa_outer", outer)
    write_ensemble(tmp_path, "mm_inner", CHAIN.replace('"simple"', '"zz_simple"'))
    with running_server(tmp_path) as handle:
        a = np.ones((1, 16), np.int32)
        response = _stub(handle).ModelInfer(chain_request(a, a, model="aa_outer"))
        assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int32), np.full(16, 2))


def test_the_thread_flavour_serves_ensembles_and_cache_hits(tmp_path: Path) -> None:
    from apps_models import CHAIN, SIMPLE, write_ensemble

    from support import write_model

    write_model(tmp_path, "simple", SIMPLE)
    write_ensemble(tmp_path, "chain", CHAIN + "response_cache { enable: true }\n")
    with running_server(tmp_path, grpc_flavor="thread", response_cache_bytes=1 << 20) as handle:
        stub = _stub(handle)
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        first = stub.ModelInfer(chain_request(a, a))
        second = stub.ModelInfer(chain_request(a, a))
        assert first.raw_output_contents == second.raw_output_contents
        assert np.array_equal(np.frombuffer(first.raw_output_contents[0], np.int32), 2 * a.ravel())
        stats = _stats(stub, "chain").inference_stats
        assert stats.cache_hit.count == 1 and stats.cache_miss.count == 1


def test_tensorgate_build_passes_over_ensembles_and_tokenizers(tmp_path: Path) -> None:
    from tensorgate.server.build import build_repository
    from tensorgate.server.engine_factory import EngineSettings

    repo = ensemble_repository(tmp_path / "repo")
    rows = {r.model: r for r in build_repository(repo, [], EngineSettings(tmp_path / "cache"))}
    assert rows["chain"].ok and rows["chain"].device == "ensemble"
    assert rows["tokenizer"].ok and rows["tokenizer"].device == "tokenizer"
    assert rows["simple"].ok
