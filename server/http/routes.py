"""The KServe v2 REST routes (Triton's HTTP endpoint) on aiohttp, over the shared DataPlane.

Every route belongs to one of Triton's protocol groups (the names of its
``--http-restricted-api``): an ``authorize(group, headers)`` hook sees each
call before anything else happens and may refuse it (403 with the reason, as
Triton answers a restricted API). Handlers are thin: decode, call the data
plane (the same methods the gRPC servicers call), encode. Failures become
``{"error": "..."}`` with Triton's status codes in one middleware.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from tensorgate.clients.pb import grpc_service_pb2 as pb

from ..dataplane import DataPlane
from ..errors import InvalidArgumentError
from ..request import InferRequest
from ..security.access import AccessPolicy
from ..servicer import LoopSink, wait_for_result
from ..wire import encode_response
from .json_pb import (
    log_settings_request,
    log_settings_to_json,
    message_to_json,
    trace_setting_request,
    trace_setting_to_json,
)
from .status import error_response, http_status_for
from .tensors import HEADER_LENGTH, decode_infer_body, encode_infer_response, parse_json

__all__ = ["GROUPS", "Authorize", "allow_all", "make_http_app", "policy_authorizer"]

#: Triton's protocol groups (``--http-restricted-api`` / ``--grpc-restricted-protocol`` names)
GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
          "statistics", "trace", "logging")

Authorize = Callable[[str, Mapping[str, str]], "str | None"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TRACE_HEADERS = ("traceparent", "tracestate")


def allow_all(group: str, headers: Mapping[str, str]) -> str | None:
    return None


def policy_authorizer(policy: AccessPolicy) -> Authorize:
    """The server's access policy (restricted groups, bearer tokens) as this endpoint's hook."""

    def authorize(group: str, headers: Mapping[str, str]) -> str | None:
        refusal = policy.check(group, headers)  # aiohttp's headers are case-insensitive
        return None if refusal is None else refusal.message

    return authorize


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc, separators=(",", ":")).encode(),
                        content_type="application/json")


async def _body_json(request: web.Request) -> Any:
    """The JSON body, or {} when there is none."""
    raw = await request.read()
    return parse_json(raw) if raw.strip() else {}


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


class _Routes:
    """The handlers, bound to one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._tracer = plane.telemetry.tracer
        self._sink: LoopSink | None = None

    # ---- health and metadata ----------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._plane.live else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._plane.ready else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._plane.model_ready(*_model(request)) else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(message_to_json(self._plane.server_metadata()))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return _json(message_to_json(self._plane.model_metadata(*_model(request))))

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(message_to_json(self._plane.model_config(*_model(request)).config))

    async def model_statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        return _json(message_to_json(self._plane.model_statistics(name, request.match_info.get("version", ""))))

    # ---- model repository -------------------------------------------------------------

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _body_json(request)
        ready = body.get("ready", False) if isinstance(body, dict) else None
        if not isinstance(ready, bool):
            raise InvalidArgumentError("'ready' must be a bool")
        models = []
        for m in self._plane.repository_index(ready).models:
            entry = {"name": m.name}
            entry.update({k: v for k, v in (("version", m.version), ("state", m.state), ("reason", m.reason)) if v})
            models.append(entry)
        return _json(models)

    async def _repository_parameters(self, request: web.Request, target: Any) -> None:
        body = await _body_json(request)
        params = body.get("parameters", {}) if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise InvalidArgumentError("'parameters' must be a JSON object")
        for key, value in params.items():
            if isinstance(value, bool):
                target[key].bool_param = value
            elif isinstance(value, int) and -(2**63) <= value < 2**63:
                target[key].int64_param = value
            elif isinstance(value, str) and key.startswith("file:"):
                try:  # Triton's HTTP endpoint takes model files base64-encoded
                    target[key].bytes_param = base64.b64decode(value, validate=True)
                except binascii.Error:
                    raise InvalidArgumentError(f"parameter '{key}' must be base64-encoded") from None
            elif isinstance(value, str):
                target[key].string_param = value
            else:
                raise InvalidArgumentError(f"parameter '{key}' must be a bool, an int64 or a string")

    async def model_load(self, request: web.Request) -> web.Response:
        message = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        await self._repository_parameters(request, message.parameters)
        # blocks (a load builds engines, an unload waits for in-flight requests): never on the event loop
        await asyncio.get_running_loop().run_in_executor(None, self._plane.repository_model_load, message)
        return web.Response(status=200)

    async def model_unload(self, request: web.Request) -> web.Response:
        message = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        await self._repository_parameters(request, message.parameters)
        # blocks (a load builds engines, an unload waits for in-flight requests): never on the event loop
        await asyncio.get_running_loop().run_in_executor(None, self._plane.repository_model_unload, message)
        return web.Response(status=200)

    # ---- inference ---------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        body = await request.read()
        message, binary = decode_infer_body(body, request.headers.get(HEADER_LENGTH), name, version)
        try:
            with self._plane.admission.admitted():  # 503 once draining; a drain waits for this request
                prepared = await self._run(message, request.headers)
                header, chunks = encode_infer_response(encode_response(prepared, self._plane.shm), binary)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the log line names the request id (and trace id, when traced)
            return error_response(*http_status_for(exc, message.id))
        if not chunks:
            response = web.Response(body=header, content_type="application/json")
        else:
            response = web.Response(body=b"".join([header, *chunks]), content_type="application/octet-stream",
                                    headers={HEADER_LENGTH: str(len(header))})
        if request.headers.get("Accept-Encoding"):
            response.enable_compression()  # gzip/deflate, as the client accepts (tritonclient's option)
        return response

    async def _run(self, message: pb.ModelInferRequest, headers: Mapping[str, str]) -> InferRequest:
        """Prepare, queue and wait for one request; raises ServerError on failure."""
        prepared = self._plane.prepare(message)
        if self._tracer.active:  # the one check a request pays when tracing is off
            self._tracer.begin(prepared, [(k, headers[k]) for k in _TRACE_HEADERS if k in headers])
        if self._sink is None:
            self._sink = LoopSink(asyncio.get_running_loop())
        return await wait_for_result(self._plane, prepared, self._sink)  # handler cancellation is on

    # ---- trace and logging -----------------------------------------------------------------

    async def trace_setting(self, request: web.Request) -> web.Response:
        model = request.match_info.get("model", "")
        body = await _body_json(request) if request.method == "POST" else {}
        response = self._plane.telemetry.trace_setting(trace_setting_request(body, model))
        return _json(trace_setting_to_json(response))

    async def log_settings(self, request: web.Request) -> web.Response:
        body = await _body_json(request) if request.method == "POST" else {}
        return _json(log_settings_to_json(self._plane.telemetry.log_settings(log_settings_request(body))))

    # ---- shared memory ------------------------------------------------------------------------

    async def system_shared_memory(self, request: web.Request) -> web.Response:
        """status (all or one region), register (JSON key/offset/byte_size), unregister (one or all)."""
        region = request.match_info.get("region", "")
        action = request.path.rsplit("/", 1)[-1]
        if action == "status":
            return _json([{"name": s.name, "key": s.key, "offset": s.offset, "byte_size": s.byte_size}
                          for s in self._plane.shm_status(region).regions.values()])
        if action == "register":
            body = _object_body(await _body_json(request))
            self._plane.shm_register(pb.SystemSharedMemoryRegisterRequest(
                name=region, key=_field(body, "key", str), offset=_field(body, "offset", int, 0),
                byte_size=_field(body, "byte_size", int)))
            return web.Response(status=200)
        self._plane.shm_unregister(region)
        return web.Response(status=200)

    async def cuda_shared_memory(self, request: web.Request) -> web.Response:
        """status (all or one region), register (JSON raw_handle {"b64": ...}, device_id, byte_size), unregister."""
        region = request.match_info.get("region", "")
        action = request.path.rsplit("/", 1)[-1]
        if action == "status":
            return _json([{"name": s.name, "device_id": s.device_id, "byte_size": s.byte_size}
                          for s in self._plane.cuda_shm_status(region).regions.values()])
        if action == "register":
            body = _object_body(await _body_json(request))
            handle = _field(body, "raw_handle", dict)
            b64 = handle.get("b64")
            if not isinstance(b64, str):
                raise InvalidArgumentError("'raw_handle' must be an object with a base64 string 'b64'")
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgumentError("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t") from None
            message = pb.CudaSharedMemoryRegisterRequest(
                name=region, raw_handle=raw, device_id=_field(body, "device_id", int, 0),
                byte_size=_field(body, "byte_size", int))
            # opening an IPC handle maps device memory: off the event loop
            await asyncio.get_running_loop().run_in_executor(None, self._plane.cuda_shm_register, message)
            return web.Response(status=200)
        await asyncio.get_running_loop().run_in_executor(None, self._plane.cuda_shm_unregister, region)
        return web.Response(status=200)


def _object_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """A required (default None) or optional field of a JSON body, type-checked (a bool is not an int)."""
    value = body.get(key, default)
    if value is None:
        raise InvalidArgumentError(f"the request body needs '{key}'")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = "string" if kind is str else "JSON object" if kind is dict else "non-negative integer"
        raise InvalidArgumentError(f"'{key}' must be a {what}")
    if isinstance(value, int) and not 0 <= value < 2**63:
        raise InvalidArgumentError(f"'{key}' is out of range")
    return value


def _guard(group: str, authorize: Authorize, handler: Handler) -> Handler:
    """Ask `authorize` first: a refusal answers 403 with its reason (Triton's restricted-API answer)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        refusal = authorize(group, request.headers)
        if refusal is not None:
            return error_response(403, refusal)
        return await handler(request)

    return guarded


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": ...}`` with Triton's status; the server keeps serving."""
    try:
        return await handler(request)
    except web.HTTPException as exc:  # no route (404), wrong method (405), body too large (413)
        return error_response(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return error_response(*http_status_for(exc))


def _route_table(r: _Routes) -> list[tuple[str, str, str, Handler]]:
    """(method, path, group, handler): Triton's HTTP routes."""
    table: list[tuple[str, str, str, Handler]] = [
        ("GET", "/v2/health/live", "health", r.live),
        ("GET", "/v2/health/ready", "health", r.ready),
        ("GET", "/v2", "metadata", r.server_metadata),
        ("GET", "/v2/models/stats", "statistics", r.model_statistics),
        ("POST", "/v2/repository/index", "model-repository", r.repository_index),
        ("POST", "/v2/repository/models/{model}/load", "model-repository", r.model_load),
        ("POST", "/v2/repository/models/{model}/unload", "model-repository", r.model_unload),
        ("GET", "/v2/trace/setting", "trace", r.trace_setting),
        ("POST", "/v2/trace/setting", "trace", r.trace_setting),
        ("GET", "/v2/models/{model}/trace/setting", "trace", r.trace_setting),
        ("POST", "/v2/models/{model}/trace/setting", "trace", r.trace_setting),
        ("GET", "/v2/logging", "logging", r.log_settings),
        ("POST", "/v2/logging", "logging", r.log_settings),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        table += [
            ("GET", prefix, "metadata", r.model_metadata),
            ("GET", prefix + "/ready", "health", r.model_ready),
            ("GET", prefix + "/config", "model-config", r.model_config),
            ("GET", prefix + "/stats", "statistics", r.model_statistics),
            ("POST", prefix + "/infer", "inference", r.infer),
        ]
    for kind, handler in (("system", r.system_shared_memory), ("cuda", r.cuda_shared_memory)):
        base = f"/v2/{kind}sharedmemory"
        table += [
            ("GET", base + "/status", "shared-memory", handler),
            ("GET", base + "/region/{region}/status", "shared-memory", handler),
            ("POST", base + "/region/{region}/register", "shared-memory", handler),
            ("POST", base + "/unregister", "shared-memory", handler),
            ("POST", base + "/region/{region}/unregister", "shared-memory", handler),
        ]
    return table


def make_http_app(plane: DataPlane, authorize: Authorize | None = None,
                  max_body_bytes: int = 2**31 - 1) -> web.Application:
    """The aiohttp application serving `plane` on Triton's HTTP routes.

    Args:
        plane: the data plane the gRPC transport serves too.
        authorize: ``(group, headers) -> None`` to allow or a refusal message (403); default allow-all.
        max_body_bytes: the largest request body (the gRPC message limit, by default 2 GiB - 1).
    """
    app = web.Application(middlewares=[_errors], client_max_size=max_body_bytes)
    routes = _Routes(plane)
    check = authorize or allow_all
    for method, path, group, handler in _route_table(routes):
        app.router.add_route(method, path, _guard(group, check, handler))
    return app
