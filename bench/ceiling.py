"""In-process ONNX Runtime ceiling: how many inferences a second the engine alone does.

    python -m tensorgate.bench.ceiling --model-file model.onnx --batch 1,16 --seconds 5 [--threads 1]

Runs the same session the server would (CPU execution provider, the same
thread settings) in a tight loop with random inputs of the right dtype, and
prints one JSON line per batch size: batch, runs/s, infer/s, ms per run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tensorgate.engines.onnxruntime_engine import OnnxRuntimeEngine, OrtOptions

__all__ = ["measure_ceiling", "random_inputs"]

_NUMPY = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def random_inputs(engine: OnnxRuntimeEngine, batch: int, dims: dict[str, list[int]] | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Random data of each input's dtype; variable dims from `dims` (batch axis excluded) or 1."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for spec in engine.inputs:
        rest = (dims or {}).get(spec.name) or [d if d > 0 else 1 for d in spec.shape[1:]]
        shape = [batch, *rest]
        dtype = _NUMPY[spec.datatype]
        if np.issubdtype(dtype, np.floating):
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[spec.name] = rng.integers(0, 100, shape).astype(dtype)
    return out


def measure_ceiling(model_file: Path, batch: int, seconds: float, threads: int = 1) -> dict[str, float]:
    """Runs/s and inferences/s of one session at one batch size."""
    engine = OnnxRuntimeEngine(model_file, OrtOptions(intra_op_threads=threads))
    instance = engine.create_instance()
    names = [o.name for o in engine.outputs]
    inputs = random_inputs(engine, batch)
    for _ in range(10):
        instance.run(inputs, names)
    runs = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        instance.run(inputs, names)
        runs += 1
    elapsed = time.perf_counter() - start
    return {"batch": batch, "runs_per_sec": runs / elapsed, "infer_per_sec": runs * batch / elapsed,
            "ms_per_run": 1000 * elapsed / runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    args = parser.parse_args(argv)
    for batch in (int(b) for b in args.batch.split(",")):
        print(json.dumps(measure_ceiling(args.model_file, batch, args.seconds, args.threads)), flush=True)


if __name__ == "__main__":
    main()
