"""--grpc-max-connection-age-secs: connections are recycled (GOAWAY) so DNS-balancing clients re-resolve.

Without it a client balancing over a headless Service keeps its first connections for ever and never
sends to replicas the autoscaler adds. The recycling must lose no call: calls keep flowing across it.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np

from support import running_server, write_model
from tensorgate.clients import InferenceClient, InferInput


def _states_during_load(url: str, seconds: float) -> tuple[list[grpc.ChannelConnectivity], int, int]:
    """Drive calls for `seconds`; return the channel's connectivity changes, calls ok, calls failed."""
    a = np.ones((1, 16), dtype=np.int32)
    inputs = [InferInput("INPUT0", [1, 16], "INT32"), InferInput("INPUT1", [1, 16], "INT32")]
    for item in inputs:
        item.set_data_from_numpy(a)
    states: list[grpc.ChannelConnectivity] = []
    ok = failed = 0
    with InferenceClient(url, retry=False) as client:
        client._channel.subscribe(states.append, try_to_connect=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                client.infer("m", inputs, client_timeout=5)
                ok += 1
            except Exception:
                failed += 1
            time.sleep(0.005)
        client._channel.unsubscribe(states.append)
    return states, ok, failed


def test_connections_are_recycled_without_losing_calls(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 'name: "m"\nmax_batch_size: 8\n')
    with running_server(tmp_path, max_connection_age_secs=0.5) as server:
        aged, ok, failed = _states_during_load(server.url, 2.5)
    assert failed == 0 and ok > 0
    # READY, then IDLE/CONNECTING when the GOAWAY arrives, then READY again on a new connection
    assert aged.count(grpc.ChannelConnectivity.READY) >= 2, aged


def test_without_an_age_the_connection_stays(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 'name: "m"\nmax_batch_size: 8\n')
    with running_server(tmp_path) as server:
        states, ok, failed = _states_during_load(server.url, 1.5)
    assert failed == 0 and ok > 0
    assert states.count(grpc.ChannelConnectivity.READY) == 1, states
