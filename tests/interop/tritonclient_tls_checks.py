"""tritonclient against a tensorgate server with mutual TLS, restricted groups and a bearer token.

Run with the python of .venv-tritonclient (its ``inference.*`` protobuf symbols clash with tensorgate's):

    .venv-tritonclient/bin/python tests/interop/tritonclient_tls_checks.py URL CA CLIENT_CERT CLIENT_KEY \
        OTHER_CLIENT_CERT OTHER_CLIENT_KEY

The server (tests/interop/test_tritonclient_tls.py) serves the interop repository with
``--grpc-use-ssl-mutual``, ``--grpc-restricted-protocol logging:admin=open-sesame`` and a token file holding
``interop-token``. Prints one JSON summary on stdout; exits 1 if any check failed.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException
from tritonclient_checks import Checks, expect, expect_error

TOKEN = {"authorization": "Bearer interop-token"}
ADMIN = {"triton-grpc-protocol-admin": "open-sesame"}


def simple_inputs(module: Any) -> tuple[list[Any], np.ndarray]:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    for i in inputs:
        i.set_data_from_numpy(data)
    return inputs, data


def main(url: str, ca: str, cert: str, key: str, other_cert: str, other_key: str) -> int:
    checks = Checks()
    tls = {"ssl": True, "root_certificates": ca, "private_key": key, "certificate_chain": cert}
    client = grpcclient.InferenceServerClient(url, **tls)  # type: ignore[arg-type]

    with checks.check("mutual TLS: health without a token (exempt)"):
        expect(client.is_server_live() and client.is_server_ready(), "not live/ready")
    with checks.check("mutual TLS: infer with the bearer token"):
        inputs, data = simple_inputs(grpcclient)
        result = client.infer("simple", inputs, headers=TOKEN)
        expect(np.array_equal(result.as_numpy("OUTPUT0"), data + data), "wrong sum")
    with checks.check("no token: UNAUTHENTICATED") as info:
        expect_error(lambda: client.get_server_metadata(), "StatusCode.UNAUTHENTICATED", info)
    with checks.check("restricted logging without its header: UNAVAILABLE with Triton's message") as info:
        exc = expect_error(lambda: client.get_log_settings(headers=TOKEN), "StatusCode.UNAVAILABLE", info)
        expected = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin'"
        expect(exc.message() == expected, f"message {exc.message()!r}")
    with checks.check("restricted logging with its header"):
        expect(client.get_log_settings(headers={**TOKEN, **ADMIN}, as_json=True).get("settings"), "no settings")
    with checks.check("stream without a token is refused; with it, served"):
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(lambda result, error: answers.put(error or result))
        inputs, data = simple_inputs(grpcclient)
        try:
            client.async_stream_infer("simple", inputs)
        except InferenceServerException:
            pass  # the refusal may end the stream before the request is queued: it comes through the callback
        refused = answers.get(timeout=30)
        client.stop_stream()
        expect(isinstance(refused, InferenceServerException) and "bearer token" in str(refused), repr(refused))
        client.start_stream(lambda result, error: answers.put(error or result), headers=TOKEN)
        client.async_stream_infer("simple", inputs)
        served = answers.get(timeout=30)
        client.stop_stream()
        expect(not isinstance(served, InferenceServerException), repr(served))
        expect(np.array_equal(served.as_numpy("OUTPUT1"), data - data), "wrong difference")
    client.close()

    async def aio_checks() -> None:
        async with aioclient.InferenceServerClient(url, **tls) as aio:  # type: ignore[arg-type]
            inputs, data = simple_inputs(aioclient)
            result = await aio.infer("simple", inputs, headers=TOKEN)
            expect(np.array_equal(result.as_numpy("OUTPUT0"), data + data), "wrong sum")

    with checks.check("grpc.aio client over mutual TLS"):
        asyncio.run(aio_checks())
    for name, kwargs in (
        ("plaintext client", {}),
        ("TLS without a client certificate", {"ssl": True, "root_certificates": ca}),
        ("client certificate from another CA", {"ssl": True, "root_certificates": ca, "private_key": other_key,
                                                "certificate_chain": other_cert}),
    ):
        with checks.check(f"{name}: refused cleanly") as info:
            refused = grpcclient.InferenceServerClient(url, **kwargs)  # type: ignore[arg-type]
            expect_error(lambda c=refused: c.is_server_live(client_timeout=20), "StatusCode.UNAVAILABLE", info)
            refused.close()
    summary = checks.summary(url)
    print(json.dumps(summary, indent=1))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:7]))
