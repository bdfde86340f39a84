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
