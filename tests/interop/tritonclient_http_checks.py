"""Exercise every REST route of a running tensorgate server with NVIDIA's own tritonclient.http (sync and aio).

Run it with the python of .venv-tritonclient (see tritonclient_checks.py for why it runs in its own process):

    .venv-tritonclient/bin/python tests/interop/tritonclient_http_checks.py 127.0.0.1:8000

Same repository and JSON summary as tritonclient_checks.py (whose helpers it uses); errors are HTTP status
codes here, as Triton's HTTP endpoint answers them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient_checks import (
    BROKEN,
    MLP,
    MODELS,
    NOBATCH,
    SIMPLE,
    UNKNOWN,
    Checks,
    check_simple_result,
    expect,
    expect_error,
    expect_error_async,
    simple_data,
)


def inputs(module: Any, a: np.ndarray, b: np.ndarray, binary: bool = True, dtype: str = "INT32") -> list[Any]:
    out = [module.InferInput("INPUT0", list(a.shape), dtype), module.InferInput("INPUT1", list(b.shape), dtype)]
    out[0].set_data_from_numpy(a, binary_data=binary)
    out[1].set_data_from_numpy(b, binary_data=binary)
    return out


def run_sync(url: str, checks: Checks) -> None:
    client = httpclient.InferenceServerClient(url, concurrency=8)
    try:
        _run_sync(client, checks)
    finally:
        client.close()


def _run_sync(client: httpclient.InferenceServerClient, checks: Checks) -> None:
    with checks.check("http.health") as info:
        expect(client.is_server_live(), "server not live")
        expect(client.is_server_ready(), "server not ready")
        ready = {m: client.is_model_ready(m) for m in MODELS}
        info["model_ready"] = ready
        expect(ready == {SIMPLE: True, NOBATCH: True, MLP: True, BROKEN: False}, f"model readiness {ready}")
        expect(client.is_model_ready(SIMPLE, "1") and not client.is_model_ready(UNKNOWN), "versioned/unknown ready")
    with checks.check("http.server_metadata") as info:
        meta = client.get_server_metadata()
        info["extensions"] = meta["extensions"]
        expect(meta["name"] == "tensorgate" and "binary_tensor_data" in meta["extensions"], f"metadata {meta}")
    with checks.check("http.model_metadata_and_config") as info:
        meta = client.get_model_metadata(SIMPLE)
        expect(meta["inputs"][0]["shape"] == [-1, 16], f"metadata shape {meta['inputs'][0]}")
        expect(client.get_model_metadata(SIMPLE, "1") == meta, "versioned metadata differs")
        config = client.get_model_config(SIMPLE)
        info["max_batch_size"] = config["max_batch_size"]
        expect(config["max_batch_size"] == 8 and config["input"][0]["dims"] == [16], f"config {config}")
        expect_error(lambda: client.get_model_metadata(UNKNOWN), "404", info, "metadata_unknown")
        expect_error(lambda: client.get_model_config(UNKNOWN), "404", info, "config_unknown")
    with checks.check("http.infer.binary") as info:
        a, b = simple_data(3, seed=1)
        result = client.infer(SIMPLE, inputs(httpclient, a, b), request_id="h1",
                              outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
                                       httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)])
        check_simple_result(_Shim(result), a, b, request_id="h1")
    with checks.check("http.infer.json") as info:
        a, b = simple_data(2, seed=2)
        result = client.infer(SIMPLE, inputs(httpclient, a, b, binary=False),
                              outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)])
        check_simple_result(_Shim(result), a, b, outputs=("OUTPUT0",))
    with checks.check("http.infer.priority_timeout_compression") as info:
        a, b = simple_data(1, seed=3)
        result = client.infer(SIMPLE, inputs(httpclient, a, b), priority=1, timeout=10_000_000,
                              request_compression_algorithm="gzip", response_compression_algorithm="deflate")
        check_simple_result(_Shim(result), a, b)
    with checks.check("http.infer.nobatch_fp32_and_classification") as info:
        x = np.ones((1, 16), np.float32)
        got = client.infer(NOBATCH, inputs(httpclient, x, x, dtype="FP32")).as_numpy("OUTPUT0")
        expect(got is not None and np.array_equal(got, x + x), f"nobatch OUTPUT0 {got}")
        mlp = client.get_model_metadata(MLP)
        feature = httpclient.InferInput(mlp["inputs"][0]["name"], [2, 784], "FP32")
        feature.set_data_from_numpy(np.random.default_rng(0).random((2, 784), dtype=np.float32))
        out = mlp["outputs"][0]["name"]
        top = client.infer(MLP, [feature], outputs=[httpclient.InferRequestedOutput(out, class_count=3)])
        classes = top.as_numpy(out)
        info["classes"] = str(classes[0].tolist()) if classes is not None else None
        expect(classes is not None and classes.shape == (2, 3), f"classification shape {getattr(classes, 'shape', None)}")
    with checks.check("http.async_infer") as info:
        pending = [(client.async_infer(SIMPLE, inputs(httpclient, *simple_data(1, seed=10 + i)), request_id=f"a{i}"),
                    simple_data(1, seed=10 + i)) for i in range(8)]
        for i, (request, (a, b)) in enumerate(pending):
            check_simple_result(_Shim(request.get_result()), a, b, request_id=f"a{i}")
    with checks.check("http.infer.errors") as info:
        a, b = simple_data(1, seed=4)
        expect_error(lambda: client.infer(UNKNOWN, inputs(httpclient, a, b)), "404", info, "unknown_model")
        fa, fb = a.astype(np.float32), b.astype(np.float32)
        expect_error(lambda: client.infer(SIMPLE, inputs(httpclient, fa, fb, dtype="FP32")), "400", info, "wrong_dtype")
        expect_error(lambda: client.infer(BROKEN, inputs(httpclient, a, b), model_version="1"), "503", info,
                     "not_ready")
        expect(client.is_server_live(), "server died after bad requests")
    with checks.check("http.statistics") as info:
        stats = client.get_inference_statistics(SIMPLE)
        (entry,) = stats["model_stats"]
        info["success"] = entry["inference_stats"]["success"]
        expect(entry["inference_stats"]["success"]["count"] >= 11, f"success count {entry['inference_stats']}")
        everything = client.get_inference_statistics()
        expect({SIMPLE, MLP} <= {s["name"] for s in everything["model_stats"]}, "all-model statistics")
    with checks.check("http.repository") as info:
        index = client.get_model_repository_index()
        info["index"] = index
        states = {m["name"]: m.get("state") for m in index}
        expect(states.get(SIMPLE) == "READY" and states.get(BROKEN) == "UNAVAILABLE", f"index {states}")
        if "model_repository" in client.get_server_metadata()["extensions"]:
            client.load_model(SIMPLE)
        else:
            expect_error(lambda: client.load_model(SIMPLE), "501", info, "load")
            expect_error(lambda: client.unload_model(SIMPLE), "501", info, "unload")
    with checks.check("http.shared_memory") as info:
        extensions = client.get_server_metadata()["extensions"]
        for kind, call in (("system_shared_memory", client.get_system_shared_memory_status),
                           ("cuda_shared_memory", client.get_cuda_shared_memory_status)):
            if kind in extensions:
                call()
            else:  # CUDA without a GPU: not advertised, but status lists none (perf_analyzer's cleanup calls it)
                expect(call() == [], f"{kind} status without the extension")
    with checks.check("http.trace_settings") as info:
        settings = client.get_trace_settings()
        info["global"] = settings
        expect("trace_level" in settings and "trace_rate" in settings, f"trace settings {settings}")
        updated = client.update_trace_settings(SIMPLE, {"trace_rate": "9"})
        expect(updated["trace_rate"] == "9", f"updated {updated}")
        expect(client.get_trace_settings(SIMPLE)["trace_rate"] == "9", "per-model trace rate not kept")
        client.update_trace_settings(SIMPLE, {"trace_rate": None})
        expect(client.get_trace_settings()["trace_rate"] == settings["trace_rate"], "global rate changed")
    with checks.check("http.log_settings") as info:
        settings = client.get_log_settings()
        info["log"] = settings
        expect(isinstance(settings.get("log_info"), bool), f"log settings {settings}")
        client.update_log_settings({"log_info": settings["log_info"]})


class _Shim:
    """tritonclient.http's InferResult through the grpc-shaped check (get_response() as an object)."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def get_response(self) -> Any:
        doc = self._result.get_response()
        outputs = [type("Out", (), {"name": o["name"]}) for o in doc["outputs"]]
        return type("Response", (), {"model_name": doc["model_name"], "model_version": doc["model_version"],
                                     "id": doc.get("id", ""), "outputs": outputs})

    def as_numpy(self, name: str) -> Any:
        return self._result.as_numpy(name)


async def run_aio(url: str, checks: Checks) -> None:
    client = aiohttpclient.InferenceServerClient(url)
    try:
        with checks.check("http.aio.metadata_and_ready") as info:
            expect(await client.is_server_ready(), "aio: server not ready")
            meta = await client.get_model_metadata(SIMPLE)
            info["inputs"] = meta["inputs"]
            expect((await client.get_model_config(SIMPLE))["max_batch_size"] == 8, "aio: config")
        with checks.check("http.aio.infer") as info:
            data = [simple_data(1 + i % 3, seed=100 + i) for i in range(16)]
            results = await asyncio.gather(*[client.infer(SIMPLE, inputs(aiohttpclient, a, b), request_id=f"x{i}")
                                             for i, (a, b) in enumerate(data)])
            for i, ((a, b), result) in enumerate(zip(data, results, strict=True)):
                check_simple_result(_Shim(result), a, b, request_id=f"x{i}")
            await expect_error_async(client.infer(UNKNOWN, inputs(aiohttpclient, *data[0])), "404", info, "unknown")
    finally:
        await client.close()


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
