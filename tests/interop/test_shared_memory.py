"""Shared memory with NVIDIA's own clients: tritonclient's shm utilities and perf_analyzer --shared-memory
system (and, on a GPU host, tritonclient's cuda_shared_memory utilities and --shared-memory cuda), each in its
own process and venv."""

from __future__ import annotations

import subprocess

import pytest
from cuda_support import GPU_REASON, GPU_RUNTIME
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


# ---- CUDA shared memory: on a GPU host only ------------------------------------------------------------------------

NEEDS_GPU = pytest.mark.skipif(GPU_RUNTIME is None, reason=f"needs a GPU and cuda-python: {GPU_REASON}")

_TRITONCLIENT_CUDA_SCRIPT = r"""
import sys
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.cuda_shared_memory as cudashm

url = sys.argv[1]
client = grpcclient.InferenceServerClient(url)
assert "cuda_shared_memory" in client.get_server_metadata().extensions
client.unregister_cuda_shared_memory()
a = np.arange(16, dtype=np.int32).reshape(1, 16)
b = np.full((1, 16), 5, dtype=np.int32)
ins = cudashm.create_shared_memory_region("cin", 128, 0)
outs = cudashm.create_shared_memory_region("cout", 64, 0)
try:
    cudashm.set_shared_memory_region(ins, [a, b])
    client.register_cuda_shared_memory("cin", cudashm.get_raw_handle(ins), 0, 128)
    client.register_cuda_shared_memory("cout", cudashm.get_raw_handle(outs), 0, 64)
    status = client.get_cuda_shared_memory_status(as_json=True)
    assert {r["name"] for r in status["regions"].values()} == {"cin", "cout"}, status
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("cin", 64)
    inputs[1].set_shared_memory("cin", 64, offset=64)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("cout", 64)
    result = client.infer("simple", inputs, outputs=outputs)
    sums = cudashm.get_contents_as_numpy(outs, np.int32, [1, 16])
    assert (sums == a + b).all(), sums
    assert (result.as_numpy("OUTPUT1") == a - b).all()
    client.unregister_cuda_shared_memory()
    assert not client.get_cuda_shared_memory_status(as_json=True).get("regions")
    print("ok")
finally:
    cudashm.destroy_shared_memory_region(ins)
    cudashm.destroy_shared_memory_region(outs)
"""


@pytest.mark.gpu
@NEEDS_GPU
def test_tritonclient_cuda_shared_memory_round_trip(interop_env: InteropEnv, interop_server: InteropServer) -> None:
    probe = subprocess.run([str(interop_env.tritonclient_python), "-c", "import tritonclient.utils.cuda_shared_memory"],
                           capture_output=True, text=True, timeout=60, env=client_env())
    if probe.returncode != 0:  # tritonclient[cuda] pulls cuda-python; setup_interop.sh does not install it
        pytest.skip("tritonclient.utils.cuda_shared_memory does not import in .venv-tritonclient (it needs "
                    f"cuda-python: tritonclient[grpc,http,cuda]): {probe.stderr.strip().splitlines()[-1]}")
    done = subprocess.run([str(interop_env.tritonclient_python), "-c", _TRITONCLIENT_CUDA_SCRIPT, interop_server.url],
                          capture_output=True, text=True, timeout=120, env=client_env())
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
    assert interop_server.alive()


@pytest.mark.gpu
@NEEDS_GPU
def test_perf_analyzer_with_cuda_shared_memory(interop_env: InteropEnv, interop_server: InteropServer) -> None:
    cmd = [str(interop_env.perf_analyzer), "-m", "simple", "-u", interop_server.url, "-i", "grpc",
           "--shared-memory", "cuda", "--concurrency-range", "2:2", "--measurement-interval", "3000",
           "--stability-percentage", "1000", "-r", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=client_env(LD_LIBRARY_PATH=interop_env.perf_analyzer_ld_library_path))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Throughput" in output and "error" not in output.lower(), output
