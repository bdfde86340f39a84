"""Traces of ensembles (a model and compute span per step, under the ensemble's model span) and of
response cache hits (a CACHE_HIT event, no compute span)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from apps_models import CHAIN, SIMPLE, chain_request, write_ensemble
from telemetry_support import attributes, flushed_spans, stub_for, traced_server

from support import write_model


def test_an_ensemble_request_has_a_span_per_step_under_the_ensemble(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "simple", SIMPLE)
    write_ensemble(repo, "chain", CHAIN)
    write_ensemble(repo, "cached_chain", CHAIN + "response_cache { enable: true }\n")
    out = tmp_path / "spans.jsonl"
    with traced_server(repo, "level=TIMESTAMPS", "rate=1", f"opentelemetry,file={out}",
                       response_cache_bytes=1 << 20) as handle:
        stub = stub_for(handle)
        a = np.ones((1, 16), np.int32)
        stub.ModelInfer(chain_request(a, a, request_id="ens"))
        spans = flushed_spans(handle, out)
        roots = [s for s in spans if s["name"] == "InferRequest"]
        assert len(roots) == 1  # one request on the wire, one root
        (ensemble,) = [s for s in spans if s["name"] == "chain"]
        assert ensemble["parentSpanId"] == roots[0]["spanId"]
        steps = [s for s in spans if s["name"] == "simple"]
        assert len(steps) == 2
        for step in steps:
            assert step["traceId"] == ensemble["traceId"] and step["parentSpanId"] == ensemble["spanId"]
            assert attributes(step)["triton.trace_parent_id"] == attributes(ensemble)["triton.trace_id"]
            (compute,) = [s for s in spans if s["name"] == "compute" and s["parentSpanId"] == step["spanId"]]
            assert compute["traceId"] == ensemble["traceId"]
        assert not [s for s in spans if s["name"] == "compute" and s["parentSpanId"] == ensemble["spanId"]]

        for _ in range(2):
            stub.ModelInfer(chain_request(a, a, model="cached_chain"))
        spans = flushed_spans(handle, out)
        cached = [s for s in spans if s["name"] == "cached_chain"]
        assert len(cached) == 2
        events = [[e["name"] for e in s.get("events", [])] for s in cached]
        assert sum("CACHE_HIT" in names for names in events) == 1
        hit = cached[[("CACHE_HIT" in names) for names in events].index(True)]
        assert not [s for s in spans if s["traceId"] == hit["traceId"] and s["name"] == "simple"]  # no step ran


def test_step_and_cache_hit_records_encode_exactly_like_their_spans() -> None:
    """The file exporter's record encoder and the span factory agree on ensemble steps and cache hits."""
    import json

    from tensorgate.server.telemetry.otlp_json import RecordEncoder, encode_spans
    from tensorgate.server.telemetry.records import RequestRecord
    from tensorgate.server.telemetry.spans import SpanFactory

    model = {"triton.model_name": "m", "triton.model_version": 1, "tensorgate.engine": "onnxruntime",
             "tensorgate.precision": "FP32"}
    from opentelemetry.trace import SpanContext, TraceFlags

    ensemble_span = SpanContext(0xABC, 0x77, False, TraceFlags(1))
    step = RequestRecord(0xABC, 1, 2, 3, ensemble_span, 9, "s", model, 1, 1000, 1100, 2000,
                         2100, 2900, 3000, 0, 3500, 0, "OK", False, "tg-m-1-0", 1, 1, 0xF00, 0x99, 4, 0)
    hit = step._replace(parent=None, parent_number=0, compute_start=0, input_end=0, output_start=0,
                        compute_end=0, batch_id=0, instance="", cache_hit=1050)
    factory = SpanFactory({}, "1.0")
    direct = json.loads(RecordEncoder(factory).line([step, hit]))
    assert direct == json.loads(encode_spans(factory.spans([step, hit])))
    spans = direct["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [s["name"] for s in spans] == ["m", "compute", "InferRequest", "m"]  # a step has no root of its own
    assert spans[0]["parentSpanId"] == f"{0x77:016x}"
    assert "CACHE_HIT" in [e["name"] for e in spans[3]["events"]]
