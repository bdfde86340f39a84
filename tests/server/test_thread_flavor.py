"""The thread-pool gRPC flavour (--grpc-flavor thread) answers exactly like the grpc.aio one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import test_bad_input
import test_rpcs

from support import RunningServer, running_server


@pytest.fixture(scope="module")
def thread_server(tmp_path_factory: pytest.TempPathFactory, test_repository: Path) -> Iterator[RunningServer]:
    """The test repository plus the bad-input models, served by the thread-pool flavour."""
    repo = test_bad_input.bad_input_repository(tmp_path_factory, test_repository)
    for name in ("nobatch", "mlp"):
        (repo / name).symlink_to(test_repository / name, target_is_directory=True)
    with running_server(repo, grpc_flavor="thread", grpc_threads=16) as handle:
        yield handle


@pytest.mark.parametrize("case", sorted(test_bad_input.BAD_REQUESTS))
def test_bad_requests(thread_server: RunningServer, case: str) -> None:
    request, code, fragments = test_bad_input.BAD_REQUESTS[case]
    stub = test_rpcs.stub_for(thread_server)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()


@pytest.mark.parametrize(
    "check",
    [
        test_rpcs.test_server_metadata_lists_exactly_the_working_extensions,
        test_rpcs.test_live_and_ready,
        test_rpcs.test_health_is_serving_when_ready_whatever_the_service_name,
        test_rpcs.test_reflection_lists_the_services,
        test_rpcs.test_typed_contents_and_output_subset,
        test_rpcs.test_classification_output,
        test_rpcs.test_stream_keeps_going_after_a_failed_request,
        test_rpcs.test_stream_with_triton_grpc_error_header_ends_with_status,
        test_rpcs.test_statistics_count_what_was_sent,
        test_rpcs.test_trace_and_log_settings_answer,
    ],
    ids=lambda f: f.__name__,
)
def test_rpc_surface(thread_server: RunningServer, check: object) -> None:
    check(thread_server)  # type: ignore[operator]


def test_concurrent_requests_batch(thread_server: RunningServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stub = test_rpcs.stub_for(thread_server)
    a = np.ones((1, 16), np.int32)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: stub.ModelInfer(test_rpcs.simple_request(str(i), a, a * i)), range(64)))
    for i, response in enumerate(responses):
        assert response.id == str(i)
        assert np.frombuffer(response.raw_output_contents[0], np.int32)[0] == 1 + i
