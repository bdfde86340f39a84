"""System shared memory with NVIDIA's own clients: tritonclient's shm utilities and perf_analyzer
--shared-memory system, each in its own process and venv."""

from __future__ import annotations

import subprocess

import pytest
from interop_support import InteropEnv, InteropServer, client_env

pytestmark = pytest.mark.interop

_TRITONCLIENT_SCRIPT = r"""
import os, sys
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

url = sys.argv[1]
client = grpcclient.InferenceServerClient(url)
client.unregister_system_shared_memory()
tag = os.getpid()
a = np.arange(16, dtype=np.int32).reshape(1, 16)
b = np.full((1, 16), 5, dtype=np.int32)
ins = shm.create_shared_memory_region("in", f"/tg_interop_in_{tag}", 128)
outs = shm.create_shared_memory_region("out", f"/tg_interop_out_{tag}", 128)
try:
    shm.set_shared_memory_region(ins, [a, b])
    client.register_system_shared_memory("in", f"/tg_interop_in_{tag}", 128)
    client.register_system_shared_memory("out", f"/tg_interop_out_{tag}", 128)
    status = client.get_system_shared_memory_status(as_json=True)
    assert {r["name"] for r in status["regions"].values()} == {"in", "out"}, status
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("in", 64)
    inputs[1].set_shared_memory("in", 64, offset=64)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("out", 64)
    outputs[1].set_shared_memory("out", 64, offset=64)
    result = client.infer("simple", inputs, outputs=outputs)
    sums = shm.get_contents_as_numpy(outs, np.int32, [1, 16])
    diffs = shm.get_contents_as_numpy(outs, np.int32, [1, 16], offset=64)
    assert (sums == a + b).all() and (diffs == a - b).all(), (sums, diffs)
    assert result.get_output("OUTPUT0") is not None
    client.unregister_system_shared_memory("in")
    client.unregister_system_shared_memory("out")
    assert not client.get_system_shared_memory_status(as_json=True).get("regions")
    print("ok")
finally:
    shm.destroy_shared_memory_region(ins)
    shm.destroy_shared_memory_region(outs)
"""


def test_tritonclient_shared_memory_round_trip(interop_env: InteropEnv, interop_server: InteropServer) -> None:
    done = subprocess.run([str(interop_env.tritonclient_python), "-c", _TRITONCLIENT_SCRIPT, interop_server.url],
                          capture_output=True, text=True, timeout=120, env=client_env())
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
    assert interop_server.alive()


def test_perf_analyzer_with_system_shared_memory(interop_env: InteropEnv, interop_server: InteropServer) -> None:
    cmd = [str(interop_env.perf_analyzer), "-m", "simple", "-u", interop_server.url, "-i", "grpc",
           "--shared-memory", "system", "--concurrency-range", "2:2", "--measurement-interval", "3000",
           "--stability-percentage", "1000", "-r", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=client_env(LD_LIBRARY_PATH=interop_env.perf_analyzer_ld_library_path))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Throughput" in output and "error" not in output.lower(), output
    assert "Unable to unregister" not in output, output  # its cleanup unregisters CUDA regions too
