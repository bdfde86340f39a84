"""NVIDIA's tritonclient drives tensorgate's model control: load, unload, index, config and file overrides.

Run with .venv-tritonclient's python against a server in explicit mode whose repository holds ``simple``
(INT32 add/sub) and, not loaded at start, ``spare`` (the same model):

    .venv-tritonclient/bin/python tests/interop/tritonclient_lifecycle_checks.py 127.0.0.1:8001 <model.onnx>

Prints one JSON summary and exits 1 when any check failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

CONFIG = json.dumps({
    "max_batch_size": 4,
    "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},
              {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]},
               {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
    "instance_group": [{"kind": "KIND_CPU", "count": 1}],
})


def _index(client: grpcclient.InferenceServerClient) -> dict[tuple[str, str], str]:
    return {(m.name, m.version): m.state for m in client.get_model_repository_index().models}


def _infer(client: grpcclient.InferenceServerClient, model: str) -> str:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    result = client.infer(model, inputs)
    assert (result.as_numpy("OUTPUT0") == 2 * a).all()
    return str(result.get_response().model_version)


def _refused(call: Callable[[], Any], status: str, text: str) -> None:
    try:
        call()
    except InferenceServerException as exc:
        assert exc.status() == status, f"{exc.status()}: {exc.message()}"
        assert text in (exc.message() or ""), exc.message()
        return
    raise AssertionError("the call was not refused")


def main(url: str, model_file: Path) -> int:
    client = grpcclient.InferenceServerClient(url)
    model_bytes = model_file.read_bytes()
    results: list[dict[str, Any]] = []

    def check(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            results.append({"name": name, "ok": True})
        except Exception as exc:  # every check reports; the summary says which failed
            results.append({"name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "trace": traceback.format_exc(limit=3)})

    def round_trip() -> None:
        index = _index(client)
        assert index[("simple", "1")] == "READY" and ("spare", "") in index, index
        client.load_model("spare")
        assert _index(client)[("spare", "1")] == "READY" and client.is_model_ready("spare")
        assert _infer(client, "spare") == "1"
        client.unload_model("spare")
        assert _index(client)[("spare", "1")] == "UNAVAILABLE" and not client.is_model_ready("spare")
        client.load_model("simple")  # a reload of a serving model
        assert _infer(client, "simple") == "1"

    def as_json() -> None:
        index = client.get_model_repository_index(as_json=True)
        assert {"name": "simple", "version": "1", "state": "READY"} in index["models"], index

    def config_override() -> None:
        client.load_model("simple", config=CONFIG)
        assert client.get_model_config("simple").config.max_batch_size == 4

    def file_override() -> None:
        client.load_model("uploaded", config=CONFIG, files={"file:7/model.onnx": model_bytes})
        assert _infer(client, "uploaded") == "7"
        client.unload_model("uploaded", unload_dependents=True)

    def traversal_refused() -> None:
        for name in ("../simple", "a/b", ".."):
            _refused(lambda n=name: client.load_model(n), "StatusCode.INVALID_ARGUMENT", "invalid model name")
        for path in ("file:../1/model.onnx", "file:/tmp/x", "file:1/../../x"):
            _refused(lambda p=path: client.load_model("x", config=CONFIG, files={p: model_bytes}),
                     "StatusCode.INVALID_ARGUMENT", "not allowed")
        assert _infer(client, "simple") == "1"

    def aio_round_trip() -> None:
        async def go() -> None:
            aio = aioclient.InferenceServerClient(url)
            try:
                await aio.load_model("spare")
                assert await aio.is_model_ready("spare")
                await aio.unload_model("spare")
                assert not await aio.is_model_ready("spare")
                models = (await aio.get_model_repository_index()).models
                assert any(m.name == "spare" and m.state == "UNAVAILABLE" for m in models)
            finally:
                await aio.close()

        asyncio.run(go())

    for name, fn in (("load_unload_index", round_trip), ("index_as_json", as_json),
                     ("config_override", config_override), ("file_override", file_override),
                     ("traversal_refused", traversal_refused), ("aio_load_unload", aio_round_trip)):
        check(name, fn)
    failed = [r["name"] for r in results if not r["ok"]]
    print(json.dumps({"checks": len(results), "failed": failed, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
