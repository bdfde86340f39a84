"""TensorRT optimization profiles: min/opt/max shapes per input, from the config or from max_batch_size.

Pure Python so it is tested without TensorRT. Explicit shapes use Triton's
ORT-TRT keys (``trt_profile_min_shapes`` / ``_opt_shapes`` / ``_max_shapes``,
"name:1x3x224x224,name2:1x128"); otherwise the batch axis runs from 1 to
max_batch_size (opt = the largest preferred batch size, else max_batch_size)
and every other dim must be fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..base import EngineLoadError, TensorSpec

__all__ = ["InputProfile", "assign_profiles", "compute_profiles", "format_shapes", "parse_shapes", "profiles_needed"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputProfile:
    """One input's shape range in an optimization profile.

    Args:
        name: the input tensor.
        min: smallest shape the engine accepts.
        opt: the shape TensorRT tunes its tactics for.
        max: largest shape (buffers are sized for it).
    """

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Shape) -> bool:
        return len(shape) == len(self.max) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )


def parse_shapes(text: str) -> dict[str, Shape]:
    """Parse "a:1x3x224x224,b:1x128" (Triton/ORT's profile syntax).

    Args:
        text: the parameter's value.

    Returns:
        Input name -> shape.

    Raises:
        EngineLoadError: malformed text.
    """
    shapes: dict[str, Shape] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 0 for d in shape):
                raise ValueError
        except ValueError:
            raise EngineLoadError(f"bad profile shape '{item}': expected name:1x3x224x224") from None
        shapes[name] = shape
    return shapes


def format_shapes(shapes: Mapping[str, Shape]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in sorted(shapes.items()))


def _explicit(spec: TensorSpec, lo: Shape, opt: Shape, hi: Shape) -> InputProfile:
    for label, shape in (("min", lo), ("opt", opt), ("max", hi)):
        if len(shape) != len(spec.shape):
            raise EngineLoadError(
                f"profile {label} shape {list(shape)} of input '{spec.name}' has rank {len(shape)}, "
                f"the model's is {len(spec.shape)}"
            )
        for axis, (model_dim, dim) in enumerate(zip(spec.shape, shape, strict=True)):
            if model_dim >= 0 and dim != model_dim:
                raise EngineLoadError(
                    f"profile {label} shape of input '{spec.name}' sets dim {axis} to {dim}; the model fixes it "
                    f"at {model_dim}"
                )
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise EngineLoadError(f"profile of input '{spec.name}' must have min <= opt <= max, got {lo}, {opt}, {hi}")
    return InputProfile(spec.name, lo, opt, hi)


def _check_batch_axis(spec: TensorSpec, max_batch_size: int) -> None:
    """A batch axis the ONNX fixes cannot take the profile 1..max_batch_size: say so before TensorRT does."""
    fixed = spec.shape[0]
    if fixed >= 0 and not fixed == max_batch_size == 1:
        raise EngineLoadError(
            f"input '{spec.name}' has a fixed first dim {fixed} in the ONNX model (shape {list(spec.shape)}), "
            f"but max_batch_size {max_batch_size} makes it the batch axis (1..{max_batch_size}): export the "
            "model with a dynamic batch dim, or set max_batch_size 0 and send the full shape"
        )


def compute_profiles(
    inputs: Sequence[TensorSpec],
    max_batch_size: int,
    *,
    min_shapes: Mapping[str, Shape] | None = None,
    opt_shapes: Mapping[str, Shape] | None = None,
    max_shapes: Mapping[str, Shape] | None = None,
    preferred_batch_sizes: Sequence[int] = (),
) -> list[InputProfile]:
    """One profile entry per input.

    Args:
        inputs: the model's inputs (shapes with -1 for variable dims, batch axis included).
        max_batch_size: the config's max_batch_size (0: the model does not batch).
        min_shapes / opt_shapes / max_shapes: explicit shapes per input (all three or none per input).
        preferred_batch_sizes: the dynamic batcher's preferred sizes (the largest becomes opt).

    Returns:
        The profile, in input order.

    Raises:
        EngineLoadError: a variable dim without explicit shapes, or explicit shapes that do not fit.
    """
    mins, opts, maxs = dict(min_shapes or {}), dict(opt_shapes or {}), dict(max_shapes or {})
    known = {s.name for s in inputs}
    unknown = sorted((set(mins) | set(opts) | set(maxs)) - known)
    if unknown:
        raise EngineLoadError(f"profile shapes name unknown inputs {unknown}; the model has {sorted(known)}")
    fitting = [b for b in preferred_batch_sizes if 0 < b <= max_batch_size]
    opt_batch = max(fitting) if fitting else max_batch_size
    profiles = []
    for spec in inputs:
        given = [spec.name in d for d in (mins, opts, maxs)]
        if any(given):
            if not all(given):
                raise EngineLoadError(
                    f"input '{spec.name}' needs all of trt_profile_min_shapes, trt_profile_opt_shapes and "
                    "trt_profile_max_shapes, or none"
                )
            profiles.append(_explicit(spec, mins[spec.name], opts[spec.name], maxs[spec.name]))
            continue
        dims = list(spec.shape)
        if max_batch_size > 0:
            if not dims:
                raise EngineLoadError(f"input '{spec.name}' is a scalar but max_batch_size is {max_batch_size}")
            _check_batch_axis(spec, max_batch_size)
            rest = dims[1:]
            lo: Shape = (1, *rest)
            opt: Shape = (opt_batch, *rest)
            hi: Shape = (max_batch_size, *rest)
        else:
            rest = dims
            lo = opt = hi = tuple(dims)
        variable = [i + (1 if max_batch_size > 0 else 0) for i, d in enumerate(rest) if d < 0]
        if variable:
            raise EngineLoadError(
                f"input '{spec.name}' has variable dim(s) {variable} (shape {dims}): TensorRT needs their range; "
                "set the model parameters trt_profile_min_shapes, trt_profile_opt_shapes and "
                "trt_profile_max_shapes (e.g. \"input_ids:1x16,...\")"
            )
        profiles.append(InputProfile(spec.name, lo, opt, hi))
    return profiles


def assign_profiles(instance_gpus: Sequence[int], profiles_per_plan: int) -> list[tuple[int, int]]:
    """Give each instance its own optimization profile on its GPU.

    TensorRT requires every execution context in concurrent use with dynamic
    shapes to have its own profile (NvInferRuntime.h, ``setOptimizationProfileAsync``),
    so a plan carries one copy of the profile per instance on a GPU and instance
    k on a GPU takes profile k.

    Args:
        instance_gpus: the GPU of each instance, in creation order.
        profiles_per_plan: how many (identical) profiles the plans were built with.

    Returns:
        (gpu, profile index) per instance, in the same order.

    Raises:
        EngineLoadError: a GPU has more instances than the plan has profiles.
    """
    seen: dict[int, int] = {}
    out = []
    for gpu in instance_gpus:
        index = seen.get(gpu, 0)
        if index >= profiles_per_plan:
            raise EngineLoadError(
                f"GPU {gpu} has {instance_gpus.count(gpu)} instances but the plan has {profiles_per_plan} "
                "optimization profile(s): each concurrent execution context needs its own"
            )
        seen[gpu] = index + 1
        out.append((gpu, index))
    return out


def profiles_needed(instance_gpus: Sequence[int]) -> int:
    """Profiles a plan needs: the most instances any one GPU runs (at least 1)."""
    return max((list(instance_gpus).count(g) for g in set(instance_gpus)), default=1) or 1
