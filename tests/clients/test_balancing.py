"""Several replicas behind one client: round-robin, retry of UNAVAILABLE on another replica, deadlines.

Two real servers on loopback serve a model "m". On the "sick" replica "m" is not
ONNX, so it fails to load and every ModelInfer naming version 1 there answers
UNAVAILABLE: the state a replica is in while its model loads or after it failed. The client's
retry policy must move such a call to the healthy replica, within the deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from support import RunningServer, free_port, write_model
from tensorgate.clients import (
    AsyncInferenceClient,
    InferenceClient,
    InferenceServerError,
    InferInput,
    RetryPolicy,
)
from tensorgate.clients._targets import resolve_target

CONFIG = 'name: "m"\nmax_batch_size: 8\n'


def _inputs() -> list[InferInput]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [InferInput("INPUT0", [1, 16], "INT32"), InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs


def _repo(root: Path, healthy: bool) -> Path:
    write_model(root, "m", CONFIG)
    if not healthy:
        (root / "m" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    return root


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    """'good' and 'good2' serve m; 'sick' has m UNAVAILABLE."""
    handles = {
        "good": RunningServer(_repo(tmp_path_factory.mktemp("good"), True)).start(),
        "good2": RunningServer(_repo(tmp_path_factory.mktemp("good2"), True)).start(),
        "sick": RunningServer(_repo(tmp_path_factory.mktemp("sick"), False)).start(),
    }
    yield handles
    for handle in handles.values():
        handle.stop()


def _served(handle: RunningServer) -> int:
    with InferenceClient(handle.url) as client:
        stats = client.get_inference_statistics("m")
    return sum(s.inference_count for s in stats.model_stats)


# ---- targets and service config (no server) ----------------------------------------------------


def _config(target_options: tuple[tuple[str, object], ...]) -> dict[str, object]:
    (name, value), = target_options
    assert name == "grpc.service_config"
    assert isinstance(value, str)
    parsed: dict[str, object] = json.loads(value)
    return parsed


def test_literal_replicas_become_one_balanced_ipv4_target() -> None:
    target = resolve_target(["127.0.0.1:8001", "127.0.0.2:8001"])
    assert target.uri == "ipv4:127.0.0.1:8001,127.0.0.2:8001"
    assert target.balanced
    config = _config(target.options)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]  # type: ignore[misc]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.1}
    names = {n["method"] for n in method["name"]}
    assert "ModelInfer" in names and "ModelStreamInfer" not in names and "RepositoryModelLoad" not in names


def test_ipv6_replicas_and_dns_names() -> None:
    assert resolve_target(["[::1]:1", "[::1]:2"]).uri == "ipv6:[::1]:1,[::1]:2"
    dns = resolve_target("dns:///tensorgate-headless.default.svc.cluster.local:8001")
    assert dns.balanced and "round_robin" in dns.options[0][1]
    single = resolve_target("localhost:8001")
    assert not single.balanced and "loadBalancingConfig" not in _config(single.options)


def test_retry_can_be_turned_off_or_tuned() -> None:
    assert resolve_target("127.0.0.1:1", retry=False).options == ()
    off = _config(resolve_target(["127.0.0.1:1", "127.0.0.1:2"], retry=False).options)
    assert "methodConfig" not in off
    tuned = _config(resolve_target("127.0.0.1:1", retry=RetryPolicy(max_attempts=3)).options)
    assert tuned["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ([], "no replica address"),
        (["a.example:1", "b.example:1"], "IP literals"),
        (["127.0.0.1:1", "[::1]:1"], "all be IPv4 or all be IPv6"),
        (["127.0.0.1", "127.0.0.2:1"], "not 'host:port'"),
        (["dns:///x:1", "127.0.0.1:1"], "given alone"),
    ],
)
def test_bad_replica_lists_are_refused_with_the_reason(url: list[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        InferenceClient(url)


def test_retry_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=9)
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(initial_backoff_s=0)
    with pytest.raises(ValueError, match="throttle_tokens"):
        RetryPolicy(throttle_tokens=0)


# ---- real replicas ------------------------------------------------------------------------------


def test_round_robin_spreads_calls_over_replicas(replicas: dict[str, RunningServer]) -> None:
    good, good2 = replicas["good"], replicas["good2"]
    before = _served(good), _served(good2)
    with InferenceClient([good.url, good2.url]) as client:
        for _ in range(20):
            client.infer("m", _inputs(), model_version="1", client_timeout=10)
    after = _served(good) - before[0], _served(good2) - before[1]
    assert sum(after) == 20
    assert min(after) >= 5, after  # both replicas served: round_robin, not pick_first


def test_unavailable_is_retried_on_another_replica(replicas: dict[str, RunningServer]) -> None:
    with InferenceClient([replicas["good"].url, replicas["sick"].url]) as client:
        for _ in range(20):
            result = client.infer("m", _inputs(), model_version="1", client_timeout=10)
            assert result.as_numpy("OUTPUT0") is not None


def test_without_retry_the_sick_replica_fails_calls(replicas: dict[str, RunningServer]) -> None:
    failed = 0
    with InferenceClient([replicas["good"].url, replicas["sick"].url], retry=False) as client:
        for _ in range(20):
            try:
                client.infer("m", _inputs(), model_version="1", client_timeout=10)
            except InferenceServerError as exc:
                assert exc.status == grpc.StatusCode.UNAVAILABLE
                failed += 1
    assert failed >= 5  # round-robin sends about half the calls to the sick replica


def test_deadline_bounds_all_attempts(replicas: dict[str, RunningServer]) -> None:
    # backoff bounds of 30 s: only the 0.5 s deadline can end this call early
    slow = RetryPolicy(initial_backoff_s=30, max_backoff_s=30)
    with InferenceClient([replicas["sick"].url], retry=slow) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.infer("m", _inputs(), model_version="1", client_timeout=0.5)
    # UNAVAILABLE would mean the retries ran out (or never ran) before the deadline
    assert caught.value.status == grpc.StatusCode.DEADLINE_EXCEEDED


def test_retry_throttling_stops_retries_after_failures(replicas: dict[str, RunningServer]) -> None:
    # two tokens: the first failure leaves 1, at or below half, so it is not retried: UNAVAILABLE at
    # once instead of waiting out the 30 s backoff into the deadline (as in the test above)
    throttled = RetryPolicy(initial_backoff_s=30, max_backoff_s=30, throttle_tokens=2)
    with InferenceClient([replicas["sick"].url], retry=throttled) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.infer("m", _inputs(), model_version="1", client_timeout=5)
    assert caught.value.status == grpc.StatusCode.UNAVAILABLE


def test_retries_give_up_with_unavailable_when_no_replica_can_serve(replicas: dict[str, RunningServer]) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with InferenceClient([replicas["sick"].url, dead]) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.infer("m", _inputs(), model_version="1", client_timeout=30)
    assert caught.value.status == grpc.StatusCode.UNAVAILABLE


def test_async_client_balances_and_retries(replicas: dict[str, RunningServer]) -> None:
    async def run() -> int:
        ok = 0
        async with AsyncInferenceClient([replicas["good2"].url, replicas["sick"].url]) as client:
            for _ in range(10):
                await client.infer("m", _inputs(), model_version="1", client_timeout=10)
                ok += 1
        return ok

    assert asyncio.run(run()) == 10
