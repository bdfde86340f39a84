"""Exercise every implemented RPC of a running tensorgate server with NVIDIA's own tritonclient.

Run it with the python of .venv-tritonclient (tritonclient registers protobuf symbols under ``inference.*``,
as tensorgate does, so the two cannot share a process):

    .venv-tritonclient/bin/python tests/interop/tritonclient_checks.py 127.0.0.1:8001

The server must serve the interop test repository (tests/interop/conftest.py): ``simple`` (INT32 add/sub,
max_batch_size 8, dynamic batching), ``nobatch`` (FP32 add/sub, max_batch_size 0), ``mlp`` (FP32 784->64->10,
max_batch_size 16) and ``broken`` (not ONNX, so UNAVAILABLE).

Both ``tritonclient.grpc`` (sync, callbacks, streaming) and ``tritonclient.grpc.aio`` are used. Prints one JSON
summary on stdout and exits 1 if any check failed. A check marked with ``divergence=`` documents a known
difference from what Triton answers: if it fails it is listed under "divergences" and does not fail the run
(if it passes, the server has been fixed and the marker can go).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import queue
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

SIMPLE = "simple"
NOBATCH = "nobatch"
MLP = "mlp"
BROKEN = "broken"
UNKNOWN = "no_such_model"
MODELS = (SIMPLE, NOBATCH, MLP, BROKEN)

# extension -> a read-only call that needs it (RPCs the server may or may not implement yet)
EXTENSION_PROBES: dict[str, tuple[str, Callable[[grpcclient.InferenceServerClient], Any]]] = {
    "system_shared_memory": ("get_system_shared_memory_status", lambda c: c.get_system_shared_memory_status()),
    "cuda_shared_memory": ("get_cuda_shared_memory_status", lambda c: c.get_cuda_shared_memory_status()),
    "trace": ("get_trace_settings", lambda c: c.get_trace_settings()),
    "logging": ("get_log_settings", lambda c: c.get_log_settings()),
    # Triton: loading a loaded model reloads it (RepositoryModelLoad)
    "model_repository": ("load_model", lambda c: c.load_model(SIMPLE)),
}


class CheckFailed(AssertionError):
    pass


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Checks:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    @contextmanager
    def check(self, name: str, divergence: str | None = None) -> Iterator[dict[str, Any]]:
        """One named check; the body may put details into the yielded dict."""
        info: dict[str, Any] = {}
        start = time.perf_counter()
        entry: dict[str, Any] = {"name": name}
        try:
            yield info
        except Exception as exc:  # every failure becomes a result
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, CheckFailed):
                entry["traceback"] = traceback.format_exc(limit=4)
        else:
            entry["ok"] = True
        if divergence is not None:
            entry["divergence"] = divergence
        if info:
            entry["detail"] = info
        entry["ms"] = round((time.perf_counter() - start) * 1000, 1)
        self.results.append(entry)

    def summary(self, url: str) -> dict[str, Any]:
        failed = [r for r in self.results if not r["ok"] and "divergence" not in r]
        divergences = [r for r in self.results if not r["ok"] and "divergence" in r]
        fixed = [r["name"] for r in self.results if r["ok"] and "divergence" in r]
        return {
            "url": url,
            "tritonclient": importlib.metadata.version("tritonclient"),
            "checks": len(self.results),
            "passed": sum(r["ok"] for r in self.results),
            "failed": [r["name"] for r in failed],
            "divergences": [{"name": r["name"], "reason": r["divergence"], "got": r.get("error")} for r in divergences],
            "divergences_now_passing": fixed,
            "results": self.results,
        }


def expect_error(call: Callable[[], object], status: str | tuple[str, ...], info: dict[str, Any] | None = None,
                 key: str = "error") -> InferenceServerException:
    """``call`` must raise InferenceServerException with the given status ('StatusCode.X')."""
    wanted = (status,) if isinstance(status, str) else status
    try:
        call()
    except InferenceServerException as exc:
        if info is not None:
            info[key] = f"{exc.status()}: {exc.message()}"
        expect(exc.status() in wanted, f"expected {' or '.join(wanted)}, got {exc.status()}: {exc.message()}")
        return exc
    raise CheckFailed(f"expected InferenceServerException {' or '.join(wanted)}, but the call succeeded")


async def expect_error_async(coro: Any, status: str, info: dict[str, Any] | None = None,
                             key: str = "error") -> None:
    try:
        await coro
    except InferenceServerException as exc:
        if info is not None:
            info[key] = f"{exc.status()}: {exc.message()}"
        expect(exc.status() == status, f"expected {status}, got {exc.status()}: {exc.message()}")
        return
    raise CheckFailed(f"expected InferenceServerException {status}, but the call succeeded")


# ---- inputs --------------------------------------------------------------------------------------

def simple_data(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    return a, b


def simple_inputs(module: Any, a: np.ndarray, b: np.ndarray, dtype: str = "INT32") -> list[Any]:
    inputs = [module.InferInput("INPUT0", list(a.shape), dtype), module.InferInput("INPUT1", list(b.shape), dtype)]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def check_simple_result(result: Any, a: np.ndarray, b: np.ndarray, outputs: tuple[str, ...] = ("OUTPUT0", "OUTPUT1"),
                        request_id: str | None = None) -> None:
    response = result.get_response()
    expect(response.model_name == SIMPLE, f"model_name {response.model_name!r}")
    expect(response.model_version == "1", f"model_version {response.model_version!r}")
    if request_id is not None:
        expect(response.id == request_id, f"request id not echoed: {response.id!r} != {request_id!r}")
    names = [o.name for o in response.outputs]
    expect(sorted(names) == sorted(outputs), f"outputs {names}, wanted {list(outputs)}")
    expected = {"OUTPUT0": a + b, "OUTPUT1": a - b}
    for name in outputs:
        got = result.as_numpy(name)
        expect(got is not None, f"{name} missing")
        expect(got.dtype == np.int32, f"{name} dtype {got.dtype}")
        expect(got.shape == a.shape, f"{name} shape {got.shape} != {a.shape}")
        expect(np.array_equal(got, expected[name]), f"{name} values wrong")
    for name in set(expected) - set(outputs):
        expect(result.as_numpy(name) is None, f"{name} was not requested but came back")


# ---- sync client -----------------------------------------------------------------------------------

def run_sync(url: str, checks: Checks) -> None:
    client = grpcclient.InferenceServerClient(url)
    try:
        _run_sync(client, checks)
    finally:
        client.close()


def _run_sync(client: grpcclient.InferenceServerClient, checks: Checks) -> None:
    extensions: list[str] = []

    with checks.check("sync.is_server_live"):
        expect(client.is_server_live() is True, "server not live")
    with checks.check("sync.is_server_ready"):
        expect(client.is_server_ready() is True, "server not ready")
    with checks.check("sync.is_model_ready") as info:
        ready = {name: client.is_model_ready(name) for name in (*MODELS, UNKNOWN)}
        ready["simple@1"] = client.is_model_ready(SIMPLE, "1")
        ready["simple@7"] = client.is_model_ready(SIMPLE, "7")
        info.update(ready)
        expect(ready == {SIMPLE: True, NOBATCH: True, MLP: True, BROKEN: False, UNKNOWN: False,
                         "simple@1": True, "simple@7": False}, f"readiness {ready}")

    with checks.check("sync.get_server_metadata") as info:
        meta = client.get_server_metadata(as_json=True)
        info.update(meta)
        extensions = list(meta.get("extensions", []))
        expect(meta.get("name") == "tensorgate", f"name {meta.get('name')!r}")
        expect(meta.get("version"), "empty version")
        expect("statistics" in extensions, f"statistics not in extensions {extensions}")
        expect("model_configuration" in extensions, f"model_configuration not in extensions {extensions}")
        proto = client.get_server_metadata()
        expect(proto.name == "tensorgate" and list(proto.extensions) == extensions, "proto form differs")

    with checks.check("sync.get_model_metadata") as info:
        meta = client.get_model_metadata(SIMPLE, as_json=True)
        info[SIMPLE] = meta
        expect(meta["name"] == SIMPLE and meta["versions"] == ["1"], f"name/versions {meta}")
        expect(meta.get("platform") == "onnxruntime_onnx", f"platform {meta.get('platform')!r}")
        for key in ("inputs", "outputs"):
            tensors = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]}
            names = ("INPUT0", "INPUT1") if key == "inputs" else ("OUTPUT0", "OUTPUT1")
            expect(tensors == {n: ("INT32", [-1, 16]) for n in names}, f"{key} {tensors} (batch dim must be -1)")
        proto = client.get_model_metadata(SIMPLE, "1")
        expect([list(t.shape) for t in proto.inputs] == [[-1, 16], [-1, 16]], "proto shapes")
        mlp = client.get_model_metadata(MLP)
        expect([(t.name, t.datatype, list(t.shape)) for t in mlp.inputs] == [("INPUT0", "FP32", [-1, 784])],
               f"mlp inputs {mlp.inputs}")
        expect([(t.name, t.datatype, list(t.shape)) for t in mlp.outputs] == [("OUTPUT0", "FP32", [-1, 10])],
               f"mlp outputs {mlp.outputs}")
        # a non-batching model reports exactly its config dims, with no batch dim added
        nb_meta = client.get_model_metadata(NOBATCH)
        nb_config = client.get_model_config(NOBATCH).config
        info[NOBATCH] = {"metadata_shape": list(nb_meta.inputs[0].shape), "config_dims": list(nb_config.input[0].dims)}
        expect(nb_config.max_batch_size == 0, f"nobatch max_batch_size {nb_config.max_batch_size}")
        expect(list(nb_meta.inputs[0].shape) == list(nb_config.input[0].dims), "nobatch metadata shape != config dims")
        expect(nb_meta.inputs[0].datatype == "FP32", "nobatch datatype")
    with checks.check("sync.get_model_metadata.unknown_model") as info:
        expect_error(lambda: client.get_model_metadata(UNKNOWN), "StatusCode.NOT_FOUND", info)
    with checks.check("sync.get_model_metadata.broken_model",
                      divergence="Triton answers NOT_FOUND \"Request for unknown model: 'broken' has no available "
                                 "versions\" when no version is given and none is READY (ModelLifeCycle::GetModel; "
                                 "UNAVAILABLE only for an explicit version that is not ready)") as info:
        expect_error(lambda: client.get_model_metadata(BROKEN), "StatusCode.NOT_FOUND", info)
    with checks.check("sync.get_model_metadata.broken_model_version") as info:
        expect_error(lambda: client.get_model_metadata(BROKEN, "1"), "StatusCode.UNAVAILABLE", info)

    with checks.check("sync.get_model_config") as info:
        config = client.get_model_config(SIMPLE, as_json=True)["config"]
        info[SIMPLE] = {k: config.get(k) for k in ("name", "platform", "backend", "max_batch_size", "dynamic_batching",
                                                   "instance_group")}
        expect(config["name"] == SIMPLE, f"name {config['name']!r}")
        expect(int(config["max_batch_size"]) == 8, f"max_batch_size {config['max_batch_size']}")
        expect("dynamic_batching" in config, "dynamic_batching missing from the JSON config (perf_analyzer reads it)")
        expect([i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"], "input names")
        expect([i["data_type"] for i in config["input"]] == ["TYPE_INT32"] * 2, "input data_type")
        expect([[int(d) for d in i["dims"]] for i in config["input"]] == [[16], [16]], "input dims (no batch dim)")
        expect([o["name"] for o in config["output"]] == ["OUTPUT0", "OUTPUT1"], "output names")
        proto = client.get_model_config(SIMPLE).config
        expect(proto.HasField("dynamic_batching") and proto.max_batch_size == 8, "proto form")
        mlp = client.get_model_config(MLP).config
        expect(mlp.max_batch_size == 16 and mlp.HasField("dynamic_batching"), f"mlp config {mlp}")
    with checks.check("sync.get_model_config.unknown_model") as info:
        expect_error(lambda: client.get_model_config(UNKNOWN), "StatusCode.NOT_FOUND", info)

    with checks.check("sync.get_model_repository_index") as info:
        index = client.get_model_repository_index(as_json=True).get("models", [])
        states = {m["name"]: (m.get("version"), m.get("state"), m.get("reason", "")) for m in index}
        info["models"] = {k: v[1] for k, v in states.items()}
        expect(set(states) == set(MODELS), f"index names {sorted(states)}")
        for name in (SIMPLE, NOBATCH, MLP):
            expect(states[name][:2] == ("1", "READY"), f"{name}: {states[name]}")
        expect(states[BROKEN][1] == "UNAVAILABLE" and states[BROKEN][2], f"broken: {states[BROKEN]}")
        proto = client.get_model_repository_index()
        expect(len(proto.models) == len(index), "proto form")

    stats_before: dict[str, Any] = {}
    with checks.check("sync.get_inference_statistics.before") as info:
        stats_before = client.get_inference_statistics(SIMPLE, as_json=True)["model_stats"][0]
        info["inference_count"] = int(stats_before.get("inference_count", 0))
        expect(stats_before["name"] == SIMPLE and stats_before["version"] == "1", f"{stats_before}")

    # ---- inference -------------------------------------------------------------------------------
    sent_rows = 0
    sent_requests = 0
    with checks.check("sync.infer") as info:
        for batch in (1, 3, 8):
            a, b = simple_data(batch, seed=batch)
            rid = f"sync-{batch}"
            result = client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=rid)
            check_simple_result(result, a, b, request_id=rid)
            sent_rows += batch
            sent_requests += 1
        info["batches"] = [1, 3, 8]
    with checks.check("sync.infer.output_subset"):
        a, b = simple_data(2, seed=11)
        result = client.infer(SIMPLE, simple_inputs(grpcclient, a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
                              request_id="subset")
        check_simple_result(result, a, b, outputs=("OUTPUT1",), request_id="subset")
        sent_rows += 2
        sent_requests += 1
    with checks.check("sync.infer.version_and_parameters") as info:
        a, b = simple_data(1, seed=12)
        result = client.infer(SIMPLE, simple_inputs(grpcclient, a, b), model_version="1", priority=1,
                              timeout=5_000_000, client_timeout=30, parameters={"custom_key": "value", "n": 3},
                              headers={"x-interop-test": "1"})
        check_simple_result(result, a, b)
        sent_rows += 1
        sent_requests += 1
        info["accepted"] = "priority=1 (uint64_param), timeout=5000000 us, client_timeout=30 s, custom parameters"
    with checks.check("sync.infer.nobatch"):
        rng = np.random.default_rng(3)
        shape = [16] if list(client.get_model_config(NOBATCH).config.input[0].dims) == [16] else [1, 16]
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.standard_normal(shape).astype(np.float32)
        inputs = [grpcclient.InferInput("INPUT0", shape, "FP32"), grpcclient.InferInput("INPUT1", shape, "FP32")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(y)
        result = client.infer(NOBATCH, inputs)
        expect(np.allclose(result.as_numpy("OUTPUT0"), x + y), "nobatch OUTPUT0")
        expect(np.allclose(result.as_numpy("OUTPUT1"), x - y), "nobatch OUTPUT1")
    with checks.check("sync.infer.classification") as info:
        x = np.random.default_rng(4).standard_normal((2, 784)).astype(np.float32)
        inp = grpcclient.InferInput("INPUT0", [2, 784], "FP32")
        inp.set_data_from_numpy(x)
        scores = client.infer(MLP, [inp]).as_numpy("OUTPUT0")
        expect(scores is not None and scores.shape == (2, 10) and scores.dtype == np.float32, "mlp OUTPUT0")
        result = client.infer(MLP, [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=3)])
        classes = result.as_numpy("OUTPUT0")
        info["classes"] = [[c.decode() for c in row] for row in classes]
        response_output = result.get_output("OUTPUT0")
        expect(response_output.datatype == "BYTES", f"classification datatype {response_output.datatype}")
        expect(classes.shape == (2, 3), f"classification shape {classes.shape}")
        for row, score_row in zip(classes, scores, strict=True):
            parsed = [c.decode().split(":") for c in row]
            indices = [int(p[1]) for p in parsed]
            values = [float(p[0]) for p in parsed]
            expect(indices == list(np.argsort(-score_row, kind="stable")[:3]), f"top-3 indices {indices}")
            expect(np.allclose(values, score_row[indices], rtol=1e-4, atol=1e-5), f"top-3 values {values}")

    # ---- error paths -------------------------------------------------------------------------------
    a, b = simple_data(1, seed=5)
    with checks.check("sync.infer.unknown_model") as info:
        expect_error(lambda: client.infer(UNKNOWN, simple_inputs(grpcclient, a, b)), "StatusCode.NOT_FOUND", info)
    with checks.check("sync.infer.wrong_dtype") as info:
        fa, fb = a.astype(np.float32), b.astype(np.float32)
        expect_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, fa, fb, "FP32")),
                     "StatusCode.INVALID_ARGUMENT", info)
    with checks.check("sync.infer.wrong_shape") as info:
        expect_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, a[:, :15], b[:, :15])),
                     "StatusCode.INVALID_ARGUMENT", info)
    with checks.check("sync.infer.batch_too_large") as info:
        big_a, big_b = simple_data(9, seed=6)
        expect_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, big_a, big_b)),
                     "StatusCode.INVALID_ARGUMENT", info)
    with checks.check("sync.infer.missing_input") as info:
        expect_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, a, b)[:1]),
                     "StatusCode.INVALID_ARGUMENT", info)
    with checks.check("sync.infer.unknown_output") as info:
        expect_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, a, b),
                                          outputs=[grpcclient.InferRequestedOutput("NOPE")]),
                     "StatusCode.INVALID_ARGUMENT", info)
    with checks.check("sync.infer.broken_model",
                      divergence="Triton answers NOT_FOUND \"Request for unknown model: 'broken' has no available "
                                 "versions\" (ModelLifeCycle::GetModel with version -1)") as info:
        expect_error(lambda: client.infer(BROKEN, simple_inputs(grpcclient, a, b)), "StatusCode.NOT_FOUND", info)

    # ---- callback API (ModelInfer from a worker thread) ----------------------------------------------
    with checks.check("sync.async_infer") as info:
        done: queue.Queue[tuple[Any, Any]] = queue.Queue()
        pending = {}
        for i in range(4):
            a, b = simple_data(1, seed=100 + i)
            pending[f"cb-{i}"] = (a, b)
            client.async_infer(SIMPLE, simple_inputs(grpcclient, a, b), lambda result, error: done.put((result, error)),
                               request_id=f"cb-{i}", priority=2, timeout=10_000_000)
        seen = set()
        for _ in range(4):
            result, error = done.get(timeout=30)
            expect(error is None, f"async_infer error {error}")
            rid = result.get_response().id
            check_simple_result(result, *pending[rid], request_id=rid)
            seen.add(rid)
        expect(seen == set(pending), f"ids {seen}")
        info["ids"] = sorted(seen)
        sent_rows += 4
        sent_requests += 4

    # ---- streaming (ModelStreamInfer) ----------------------------------------------------------------
    with checks.check("sync.stream_infer") as info:
        responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        try:
            good = {}
            for i in range(4):
                a, b = simple_data(1 + i, seed=200 + i)
                rid = f"stream-{i}"
                good[rid] = (a, b)
                client.async_stream_infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=rid,
                                          priority=1 if i % 2 else 0, timeout=10_000_000 if i == 3 else None)
                if i == 1:  # one bad request in the middle: FP32 data for INT32 inputs
                    fa, fb = a.astype(np.float32), b.astype(np.float32)
                    client.async_stream_infer(SIMPLE, simple_inputs(grpcclient, fa, fb, "FP32"), request_id="bad")
            results, errors = {}, []
            for _ in range(len(good) + 1):
                result, error = responses.get(timeout=30)
                if error is not None:
                    errors.append(str(error))
                else:
                    results[result.get_response().id] = result
            for rid, (a, b) in good.items():
                expect(rid in results, f"no response for {rid}")
                check_simple_result(results[rid], a, b, request_id=rid)
            expect(len(errors) == 1, f"expected exactly one error, got {errors}")
            info["ok_ids"] = sorted(results)
            info["error"] = errors[0]
            sent_rows += sum(a.shape[0] for a, _ in good.values())
            sent_requests += len(good)
            # the stream stays open after the error: one more good request on it
            a, b = simple_data(1, seed=300)
            client.async_stream_infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id="after-error")
            result, error = responses.get(timeout=30)
            expect(error is None, f"request after the error failed: {error}")
            check_simple_result(result, a, b, request_id="after-error")
            sent_rows += 1
            sent_requests += 1
        finally:
            client.stop_stream()
        expect(responses.empty(), "extra responses on the stream")

    # ---- statistics after ----------------------------------------------------------------------------
    with checks.check("sync.get_inference_statistics.after") as info:
        after: dict[str, Any] = {}
        for _ in range(20):  # counters are updated by the scheduler's worker; allow it a moment
            after = client.get_inference_statistics(SIMPLE, "1", as_json=True)["model_stats"][0]
            if int(after.get("inference_count", 0)) - int(stats_before.get("inference_count", 0)) >= sent_rows:
                break
            time.sleep(0.1)

        def delta(stats_key: str, *path: str) -> int:
            def get(stats: dict[str, Any]) -> int:
                node: Any = stats
                for p in (stats_key, *path):
                    node = node.get(p, {}) if isinstance(node, dict) else {}
                return int(node) if not isinstance(node, dict) else 0
            return get(after) - get(stats_before)

        deltas = {
            "inference_count": delta("inference_count"),
            "execution_count": delta("execution_count"),
            "success.count": delta("inference_stats", "success", "count"),
            "queue.count": delta("inference_stats", "queue", "count"),
            "compute_infer.count": delta("inference_stats", "compute_infer", "count"),
            "compute_infer.ns": delta("inference_stats", "compute_infer", "ns"),
        }
        info["sent_rows"], info["sent_requests"], info["deltas"] = sent_rows, sent_requests, deltas
        # nothing else uses the server meanwhile: Triton counts batch rows and successful requests exactly
        expect(deltas["inference_count"] == sent_rows, f"inference_count grew by {deltas['inference_count']}, "
                                                       f"{sent_rows} rows were sent")
        expect(1 <= deltas["execution_count"] <= deltas["inference_count"], f"execution_count delta {deltas}")
        expect(deltas["success.count"] == sent_requests, f"success.count grew by {deltas['success.count']}, "
                                                         f"{sent_requests} requests succeeded")
        expect(deltas["queue.count"] == sent_requests, f"queue.count grew by {deltas['queue.count']}")
        expect(deltas["compute_infer.count"] >= 1 and deltas["compute_infer.ns"] > 0, "compute_infer not counted")
        expect(int(after.get("last_inference", 0)) >= int(time.time() * 1000) - 600_000, "last_inference not recent (ms)")
        expect(after.get("batch_stats"), "no batch_stats")
        all_stats = client.get_inference_statistics(as_json=True)["model_stats"]
        expect({s["name"] for s in all_stats} >= {SIMPLE, NOBATCH, MLP}, f"all-model stats {[s['name'] for s in all_stats]}")
    with checks.check("sync.get_inference_statistics.unknown_model",
                      divergence="Triton answers INVALID_ARGUMENT \"requested model 'no_such_model' is not "
                                 "available\" (TRITONSERVER_ServerModelStatistics)") as info:
        expect_error(lambda: client.get_inference_statistics(UNKNOWN), "StatusCode.INVALID_ARGUMENT", info)
    with checks.check("sync.get_inference_statistics.broken_model",
                      divergence="Triton answers INVALID_ARGUMENT \"requested model 'broken' is not available\" "
                                 "for a model with no READY version (TRITONSERVER_ServerModelStatistics)") as info:
        expect_error(lambda: client.get_inference_statistics(BROKEN), "StatusCode.INVALID_ARGUMENT", info)

    # ---- RPCs of extensions: UNIMPLEMENTED unless the extension is advertised ----------------------------
    for extension, (method, call) in EXTENSION_PROBES.items():
        with checks.check(f"sync.{method}") as info:
            if extension in extensions:
                info["advertised"] = True
                call(client)
            elif extension == "cuda_shared_memory":
                # not advertised (no GPU on the server's host), but its status lists none rather than
                # failing: perf_analyzer's cleanup calls it (README, Compatibility with Triton)
                info["advertised"] = False
                status = call(client)
                if len(status.regions):
                    raise CheckFailed(f"CUDA regions listed without the extension: {status}")
            else:
                info["advertised"] = False
                exc = expect_error(lambda call=call: call(client), "StatusCode.UNIMPLEMENTED")
                info["error"] = f"{exc.status()}: {exc.message()}"


# ---- asyncio client ----------------------------------------------------------------------------------

async def run_aio(url: str, checks: Checks) -> None:
    client = aioclient.InferenceServerClient(url)
    try:
        await _run_aio(client, checks)
    finally:
        await client.close()


async def _run_aio(client: aioclient.InferenceServerClient, checks: Checks) -> None:
    with checks.check("aio.health"):
        expect(await client.is_server_live() is True, "not live")
        expect(await client.is_server_ready() is True, "not ready")
        expect(await client.is_model_ready(SIMPLE) is True, "simple not ready")
        expect(await client.is_model_ready(BROKEN) is False, "broken ready")
        expect(await client.is_model_ready(UNKNOWN) is False, "unknown ready")
    with checks.check("aio.metadata_and_config"):
        meta = await client.get_server_metadata()
        expect(meta.name == "tensorgate" and "statistics" in meta.extensions, f"{meta}")
        model = await client.get_model_metadata(SIMPLE, as_json=True)
        expect([[int(d) for d in t["shape"]] for t in model["inputs"]] == [[-1, 16], [-1, 16]], f"{model}")
        config = (await client.get_model_config(SIMPLE)).config
        expect(config.max_batch_size == 8 and config.HasField("dynamic_batching"), f"{config}")
        index = await client.get_model_repository_index()
        expect({m.name for m in index.models} == set(MODELS), f"{index}")
        stats = await client.get_inference_statistics(SIMPLE)
        expect(stats.model_stats[0].name == SIMPLE, f"{stats}")
    with checks.check("aio.infer") as info:
        a, b = simple_data(5, seed=400)
        result = await client.infer(SIMPLE, simple_inputs(aioclient, a, b), request_id="aio-1", priority=1,
                                    timeout=5_000_000, client_timeout=30)
        check_simple_result(result, a, b, request_id="aio-1")
        # concurrent requests: the dynamic batcher may merge them; every answer must still be the right one
        data = [simple_data(1, seed=500 + i) for i in range(16)]
        before = await client.get_inference_statistics(SIMPLE, as_json=True)
        results = await asyncio.gather(*[
            client.infer(SIMPLE, simple_inputs(aioclient, a, b), request_id=f"aio-c{i}") for i, (a, b) in enumerate(data)
        ])
        for i, ((a, b), result) in enumerate(zip(data, results, strict=True)):
            check_simple_result(result, a, b, request_id=f"aio-c{i}")
        after = await client.get_inference_statistics(SIMPLE, as_json=True)
        executions = int(after["model_stats"][0]["execution_count"]) - int(before["model_stats"][0]["execution_count"])
        info["16 concurrent requests: executions"] = executions
    with checks.check("aio.infer.errors") as info:
        a, b = simple_data(1, seed=7)
        await expect_error_async(client.infer(UNKNOWN, simple_inputs(aioclient, a, b)), "StatusCode.NOT_FOUND",
                                 info, "unknown_model")
        fa, fb = a.astype(np.float32), b.astype(np.float32)
        await expect_error_async(client.infer(SIMPLE, simple_inputs(aioclient, fa, fb, "FP32")),
                                 "StatusCode.INVALID_ARGUMENT", info, "wrong_dtype")
        await expect_error_async(client.get_model_config(UNKNOWN), "StatusCode.NOT_FOUND", info, "config_unknown")
        if "system_shared_memory" in (await client.get_server_metadata()).extensions:
            await client.get_system_shared_memory_status()
        else:
            await expect_error_async(client.get_system_shared_memory_status(), "StatusCode.UNIMPLEMENTED",
                                     info, "system_shared_memory")
    with checks.check("aio.stream_infer") as info:
        good = {f"aio-s{i}": simple_data(1 + i % 3, seed=600 + i) for i in range(5)}

        async def requests() -> Any:
            for i, (rid, (a, b)) in enumerate(good.items()):
                yield {"model_name": SIMPLE, "inputs": simple_inputs(aioclient, a, b), "request_id": rid,
                       "priority": i % 2, "timeout": 10_000_000}
                if i == 2:
                    fa, fb = a.astype(np.float32), b.astype(np.float32)
                    yield {"model_name": SIMPLE, "inputs": simple_inputs(aioclient, fa, fb, "FP32"), "request_id": "bad"}
                if i == 3:
                    yield {"model_name": UNKNOWN, "inputs": simple_inputs(aioclient, a, b), "request_id": "unknown"}

        results, errors = {}, []
        stream = client.stream_infer(requests(), stream_timeout=60)
        async for result, error in stream:
            if error is not None:
                errors.append(str(error))
            else:
                results[result.get_response().id] = result
            if len(results) + len(errors) == len(good) + 2:
                break
        for rid, (a, b) in good.items():
            expect(rid in results, f"no response for {rid}")
            check_simple_result(results[rid], a, b, request_id=rid)
        expect(len(errors) == 2, f"expected 2 errors (wrong dtype, unknown model), got {errors}")
        info["ok_ids"] = sorted(results)
        info["errors"] = errors


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    url = argv[1]
    checks = Checks()
    start = time.perf_counter()
    run_sync(url, checks)
    asyncio.run(run_aio(url, checks))
    summary = checks.summary(url)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=2, default=str))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
