"""The ``extra=`` fields of tensorgate's structured log lines (logs.py formats them); a leaf any module can use."""

from __future__ import annotations

from typing import Any

__all__ = ["model_state", "request_fields"]


def model_state(name: str, version: int | str, state: str, reason: str = "") -> dict[str, Any]:
    """``extra=`` fields of a model state change line."""
    fields: dict[str, Any] = {"model": name, "version": str(version), "state": state}
    if reason:
        fields["reason"] = reason
    return fields


def request_fields(request_id: str, trace_id: str, grpc_code: str) -> dict[str, Any]:
    """``extra=`` fields of a failed request line."""
    return {"request_id": request_id, "trace_id": trace_id, "grpc_code": grpc_code}
