"""``tensorgate doctor``: what this machine can run, checked, in one table.

Plain ``doctor`` checks versions and drivers (cuda-bindings, CUDA runtime and
driver, NVML, TensorRT and whether its CUDA major matches cuda-bindings',
ONNX Runtime), discovers the GPUs and, on a GPU, the CUDA layer the TensorRT
engine stands on (pinned round trips, stream overlap, concurrent instance
threads). ``--full`` adds the precision artifacts through the accuracy gate
and, where TensorRT and a GPU are present, the plan checks of
``tensorrt_checks``. Whatever is missing, it checks what it can, says plainly
what it could not check, and exits 0 unless a check FAILED.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tensorgate.engines.devices import GpuProbe, probe_gpus

from .report import FAILED, OK, SKIPPED, Row, failed, render, run_check

__all__ = ["FAILED", "OK", "SKIPPED", "Row", "run_doctor", "table"]

_CUDA_LAYER = ("pinned round trips", "stream overlap", "concurrent instances")
_TRT_FULL = ("tensorrt plans (mlp, minilm x FP32, FP16, INT8 static)", "tensorrt INT8 kernels (inspector)",
             "tensorrt vs onnxruntime at min/opt/max", "tensorrt contexts at once", "tensorrt plan cache",
             "GPU memory before/after load and close")


def _artifacts(folder: Path) -> str:
    """The precision pipeline on the CPU: FP16 and INT8 (over fp16) artifacts of the MLP, through the gate."""
    from tensorgate.engines.accuracy import AccuracyThresholds
    from tensorgate.engines.cache import EngineCache
    from tensorgate.engines.pipeline import prepare_artifact

    from .models import mlp_case
    from .tensorrt_checks import PRECISIONS

    case = mlp_case(folder)
    cache = EngineCache(folder / "cache")
    parts = []
    for spec in PRECISIONS[1:]:
        artifact = prepare_artifact(cache, case.model, spec, AccuracyThresholds.defaults(spec.precision), True)
        figures = artifact.accuracy.summary() if artifact.accuracy else "unchecked"
        parts.append(f"{spec.label}{' over fp16' if spec.int8_fp16_base else ''}: {figures}")
    return "mlp on onnxruntime CPU: " + "; ".join(parts)


def run_doctor(full: bool = False, instances: int = 4, probe: GpuProbe | None = None) -> tuple[list[Row], list[str]]:
    """Every check this machine allows.

    Args:
        full: also the precision artifacts and, with TensorRT on a GPU, the plan checks.
        instances: streams / execution contexts to run at once.
        probe: the GPU probe (default: this host's).

    Returns:
        The rows and footer lines (what could not be checked, and why).
    """
    from tensorgate.engines.tensorrt import installed_tensorrt

    from .cuda_layer import check_discovery, check_instances, check_overlap, check_round_trips
    from .versions import version_rows

    probe = probe or probe_gpus()
    rows: list[Row] = []
    footer: list[str] = []
    version_rows(probe, rows)
    found = run_check(rows, "device discovery", lambda: check_discovery(probe))
    if found:
        from tensorgate.engines.tensorrt.cuda import set_device

        device = probe.devices[0]
        set_device(device.index)
        run_check(rows, "pinned round trips", lambda: check_round_trips(instances))
        run_check(rows, "stream overlap", lambda: check_overlap(device, instances))
        run_check(rows, "concurrent instances", lambda: check_instances(device, instances))
    else:
        rows += [Row(name, SKIPPED, "no GPU") for name in _CUDA_LAYER]
        footer.append(f"GPU: none ({probe.reason}). Not checked: the CUDA layer ({', '.join(_CUDA_LAYER)}).")
    if not full:
        return rows, footer
    with tempfile.TemporaryDirectory(prefix="tensorgate-doctor-") as tmp:
        folder = Path(tmp)
        run_check(rows, "precision artifacts", lambda: _artifacts(folder / "cpu"))
        tensorrt = installed_tensorrt()
        missing = "no GPU" if not found else "TensorRT is not installed" if tensorrt is None else ""
        if missing:
            rows += [Row(name, SKIPPED, missing) for name in _TRT_FULL]
            footer.append(f"Not checked ({missing}): {', '.join(_TRT_FULL)}.")
            return rows, footer
        assert tensorrt is not None
        _full_tensorrt(probe, tensorrt, instances, rows, folder)
    return rows, footer


def _full_tensorrt(probe: GpuProbe, tensorrt: object, instances: int, rows: list[Row], folder: Path) -> None:
    from tensorgate.engines.tensorrt import TrtDistribution

    from .models import Case, minilm_case, mlp_case
    from .tensorrt_checks import tensorrt_rows

    assert isinstance(tensorrt, TrtDistribution)
    if not tensorrt.cuda_major:
        tensorrt = TrtDistribution(tensorrt.name, tensorrt.version, probe.runtime_version // 1000)
    cases: list[Case] = [mlp_case(folder / "gpu")]

    def minilm() -> str:
        from tensorgate.server.settings import default_cache_dir

        cases.append(minilm_case(folder / "gpu", default_cache_dir()))
        return "built from the demo weights"

    if not run_check(rows, "minilm demo model", minilm):
        rows.append(Row("tensorrt minilm", SKIPPED, "the MiniLM demo model could not be built (row above)"))
    tensorrt_rows(probe.devices[0], tensorrt, cases, instances, rows, folder / "gpu")


def table(full: bool = False, instances: int = 4) -> tuple[str, int]:
    """The doctor's table and its exit status (1 when a check FAILED)."""
    rows, footer = run_doctor(full, instances)
    title = "tensorgate doctor" + (" --full" if full else "")
    return render(rows, title, footer), 1 if failed(rows) else 0

