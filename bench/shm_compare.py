"""Large inputs over the wire vs through system shared memory, side by side against one server.

    python -m tensorgate.bench.shm_compare [--concurrency 1,8] [--window-ms 3000] [--rounds 2]

Two models take one big FP32 input and return its mean (so the output is tiny and the input's trip is what is
measured): ``image``, 3x224x224 (588 KiB, an ImageNet-sized image) and ``blob``, 2,097,152 floats (8 MiB).
tensorgate serves both with ``--allow-client-shm true``; ``tensorgate bench`` drives each model at each
concurrency with ``--shared-memory none`` and ``system`` alternately (the order flips each round), and the report
gives the median throughput and p50 of each, and shm / wire.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from .cli import main as bench_main
from .servers import start_tensorgate

__all__ = ["build_repository", "main"]

MODELS = {"image": [3, 224, 224], "blob": [2_097_152]}


def build_repository(root: Path) -> Path:
    """``image`` and ``blob``: FP32 input (batch dim first), output = the mean of each row."""
    import onnx
    from onnx import TensorProto, helper

    for name, dims in MODELS.items():
        axes = list(range(1, len(dims) + 1))
        graph = helper.make_graph(
            [helper.make_node("ReduceMean", ["INPUT0"], ["OUTPUT0"], axes=axes, keepdims=0)],
            name,
            [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", *dims])],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch"])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        path = root / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nmax_batch_size: 8\n'
            f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }} ]\n'
            'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
            "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
            "instance_group [ { kind: KIND_CPU count: 1 } ]\n")
    return root


def _window(url: str, model: str, concurrency: int, shm: str, window_ms: int, out: Path) -> dict[str, Any]:
    code = bench_main(["--url", url, "--model", model, "--concurrency", str(concurrency), "--shared-memory", shm,
                       "--window-ms", str(window_ms), "--max-windows", "3", "--stability-percentage", "1000",
                       "--warmup-s", "1", "--quiet", "--json", str(out)])
    if code != 0:
        raise SystemExit(f"tensorgate bench exited {code} for {model} c={concurrency} shm={shm}")
    result: dict[str, Any] = json.loads(out.read_text())["results"][0]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tg-shm-") as tmp:
        repo = build_repository(Path(tmp) / "repo")
        server = start_tensorgate(repo, ["--allow-client-shm", "true", "--allow-metrics", "false"])
        try:
            for model in MODELS:
                for c in levels:
                    runs: dict[str, list[dict[str, Any]]] = {"none": [], "system": []}
                    for round_ in range(args.rounds):
                        for shm in ("none", "system") if round_ % 2 == 0 else ("system", "none"):
                            runs[shm].append(_window(server.url, model, c, shm, args.window_ms,
                                                     Path(tmp) / "out.json"))
                    row: dict[str, Any] = {"model": model, "concurrency": c}
                    for shm, results in runs.items():
                        row[f"{shm}_infer_per_sec"] = statistics.median(r["throughput_infer_per_sec"] for r in results)
                        row[f"{shm}_p50_ms"] = statistics.median(r["p50_ms"] for r in results)
                    row["throughput_shm_over_wire"] = row["system_infer_per_sec"] / row["none_infer_per_sec"]
                    row["p50_shm_over_wire"] = row["system_p50_ms"] / row["none_p50_ms"]
                    rows.append(row)
                    print(f"{model:<6} c={c:<3} wire {row['none_infer_per_sec']:7.0f} infer/s p50 "
                          f"{row['none_p50_ms']:6.2f} ms | shm {row['system_infer_per_sec']:7.0f} infer/s p50 "
                          f"{row['system_p50_ms']:6.2f} ms | throughput x{row['throughput_shm_over_wire']:.2f}, "
                          f"p50 x{row['p50_shm_over_wire']:.2f}", flush=True)
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
