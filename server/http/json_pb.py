"""Protobuf messages <-> the JSON documents Triton's HTTP endpoint reads and writes.

Model config, metadata and statistics are the gRPC messages printed with their
proto field names and every field present (what perf_analyzer and
tritonclient.http read), except that protobuf's JSON mapping writes 64-bit
integers as strings: Triton writes numbers (``"dims": [16]``,
``"inference_count": 3``), so those are turned back into numbers here, walking
the message descriptor so a string field that merely looks numeric is never
touched. Trace and log settings have their own small JSON shapes.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tensorgate.clients.pb import grpc_service_pb2 as pb

from ..errors import InvalidArgumentError

__all__ = [
    "log_settings_request",
    "log_settings_to_json",
    "message_to_json",
    "trace_setting_request",
    "trace_setting_to_json",
]

_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _numbers(descriptor: Any, doc: dict[str, Any]) -> None:
    """Turn the int64/uint64 strings of `doc` (printed from `descriptor`) into ints, in place."""
    for field in descriptor.fields:
        if field.name not in doc:
            continue
        value = doc[field.name]
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    _numbers(value_field.message_type, item)
                elif value_field.cpp_type in _INT64:
                    value[key] = int(item)
        elif message_type is not None:
            for item in value if _is_repeated(field) else [value]:
                _numbers(message_type, item)
        elif field.cpp_type in _INT64:
            doc[field.name] = [int(v) for v in value] if _is_repeated(field) else int(value)


def message_to_json(message: Message) -> dict[str, Any]:
    """A message as Triton's HTTP endpoint prints it: proto field names, every field, 64-bit ints as numbers."""
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(message.DESCRIPTOR, doc)
    return doc


# ---- trace settings ---------------------------------------------------------------


def trace_setting_request(body: Any, model: str) -> pb.TraceSettingRequest:
    """POST v2[/models/{m}]/trace/setting: values are strings, lists of strings, or null (clear)."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the trace settings must be a JSON object")
    request = pb.TraceSettingRequest(model_name=model)
    for key, value in body.items():
        entry = request.settings[key]
        if value is None:
            continue  # an empty value clears a per-model override
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise InvalidArgumentError(f"trace setting '{key}' must be a string or a list of strings")
            entry.value.append(str(item))
    return request


def trace_setting_to_json(response: pb.TraceSettingResponse) -> dict[str, Any]:
    """Triton prints trace_level as a list and every other setting as one string."""
    out: dict[str, Any] = {}
    for key, entry in sorted(response.settings.items()):
        values = list(entry.value)
        out[key] = values if key == "trace_level" or len(values) != 1 else values[0]
    return out


# ---- log settings -----------------------------------------------------------------


def log_settings_request(body: Any) -> pb.LogSettingsRequest:
    """POST v2/logging: bool, unsigned int or string values."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the log settings must be a JSON object")
    request = pb.LogSettingsRequest()
    for key, value in body.items():
        entry = request.settings[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int) and 0 <= value < 2**32:
            entry.uint32_param = value
        elif isinstance(value, str):
            entry.string_param = value
        else:
            raise InvalidArgumentError(f"log setting '{key}' must be a bool, an unsigned 32-bit int or a string")
    return request


def log_settings_to_json(response: pb.LogSettingsResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, entry in sorted(response.settings.items()):
        which = entry.WhichOneof("parameter_choice")
        out[key] = getattr(entry, which) if which else None
    return out
