"""The settings of a CSI selection run: parsing of user values, the demo defaults, and the cache key.

Every setting that can change a CSI value is part of :func:`stats_key` and is recorded in the stats
file and in ``csi.json``; settings that only change speed (batch size, device, workers) are not.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from fastcsi.errors import FastCSIError

# The paper draws ~10k structures per dataset: class-balanced upstream, random downstream.
PAPER_SAMPLES = 10_000
# `fastcsi demo` runs the pretrained default (sevennet-0, 128 features) and its first run must be
# adequate by its own checks (no warnings): 224 structures give every demo dataset more than 10 atoms
# per feature dimension (the reactions, at ~6 atoms a structure, need ~210) while staying below each
# dataset's size, so the two seeds draw different samples; the ranking keeps its order on both seeds.
DEMO_SAMPLES = 224
DEMO_SEEDS = (0, 1)

SAMPLING_STRATEGIES = ("random", "balanced", "all")
AGGREGATIONS = ("flat", "mean", "sum", "max")
FEATURE_KINDS = ("node", "edge")
DTYPES = ("float32", "float64")
WEIGHT_SETS = ("raw", "ema")
# Below this many samples per feature dimension the covariance estimate is noisy enough that the
# trace term is biased upwards; we warn rather than refuse (small data is a legitimate use).
ADEQUATE_SAMPLES_PER_DIM = 10


def parse_seeds(text) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2). Seeds are distinct non-negative integers."""
    if isinstance(text, (list, tuple)):
        parts = [str(p) for p in text]
    else:
        parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise FastCSIError(f"--seeds {text!r}: give comma-separated non-negative integers, e.g. 0,1,2")
    seeds = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise FastCSIError(
                f"--seeds {text!r}: {part!r} is not an integer; give comma-separated non-negative integers, e.g. 0,1,2"
            ) from None
        if value < 0:
            raise FastCSIError(f"--seeds {text!r}: seeds must be non-negative, got {value}")
        seeds.append(value)
    if len(set(seeds)) != len(seeds):
        raise FastCSIError(f"--seeds {text!r}: seeds must be distinct")
    return tuple(seeds)


def parse_samples(text) -> int | None:
    """``"10000"`` -> 10000; ``"all"`` -> None (stream the whole dataset)."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower()
        if s == "all":
            return None
        try:
            value = int(s.replace("_", ""))
        except ValueError:
            raise FastCSIError(f"--samples {text!r}: give a positive integer or 'all'") from None
    if value < 2:
        # One sample has no covariance: the Fréchet distance is undefined.
        raise FastCSIError(f"--samples {text!r}: need at least 2 structures per dataset (or 'all')")
    return value


def parse_threads(text) -> int | None:
    """``"auto"`` -> None; ``"4"`` -> 4."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise FastCSIError(f"--threads {text!r}: give a positive integer or 'auto'") from None
    if value < 1:
        raise FastCSIError(f"--threads {text!r}: give a positive integer or 'auto'")
    return value


def _choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise FastCSIError(f"{name} {value!r}: choose one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class SelectSettings:
    """Everything that defines a selection run. Defaults follow the paper (Ghunaim et al. 2025)."""

    samples: int | None = PAPER_SAMPLES  # structures per dataset; None = all
    upstream_sampling: str = "balanced"
    downstream_sampling: str = "random"
    agg: str = "flat"  # flat: every atom is a sample; mean/sum/max: one sample per structure
    backbone: str | None = None  # NAME[:MODEL] (fastcsi.extractors); None: --checkpoint, else the default
    base: str | None = None  # GemNet-OC config for a checkpoint whose hyperparameters cannot be read or inferred
    weights: str = "raw"  # raw | ema: the weight set of a JMP / fairchem checkpoint
    layer: str = "final"
    kind: str = "node"
    seeds: tuple = (0,)
    dtype: str = "float32"
    per_element: bool = True
    # leave out of every sample the structures holding atoms with feature norms over 100x the median
    # (fastcsi.stats.outliers); changes the CSI, and is part of the cache key through the indices left out
    drop_outlier_structures: bool = False
    # speed only (not part of any cache key)
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 0
    max_atoms_per_batch: int | None = None  # batches also capped in atoms: memory bounded by the budget
    threads: int | None = None  # intra-op CPU threads; None = auto (see backbone.apply_thread_policy)
    format: str | None = None
    data_options: dict = field(default_factory=dict)

    def __post_init__(self):
        _choice("--upstream-sampling", self.upstream_sampling, SAMPLING_STRATEGIES)
        _choice("--downstream-sampling", self.downstream_sampling, SAMPLING_STRATEGIES)
        _choice("--agg", self.agg, AGGREGATIONS)
        _choice("--kind", self.kind, FEATURE_KINDS)
        _choice("--dtype", self.dtype, DTYPES)
        _choice("--weights", self.weights, WEIGHT_SETS)
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 2):
            raise FastCSIError(f"--samples {self.samples!r}: need at least 2 structures per dataset (or 'all')")
        if not self.seeds:
            raise FastCSIError("--seeds: give at least one seed")
        if self.batch_size < 1:
            raise FastCSIError(f"--batch-size {self.batch_size}: must be a positive integer")
        if self.threads is not None and self.threads < 1:
            raise FastCSIError(f"--threads {self.threads}: must be a positive integer or 'auto'")
        if self.num_workers < 0:
            raise FastCSIError(f"--num-workers {self.num_workers}: must be >= 0")
        if self.max_atoms_per_batch is not None and self.max_atoms_per_batch < 1:
            raise FastCSIError(f"--max-atoms-per-batch {self.max_atoms_per_batch}: must be a positive integer")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        out["samples"] = "all" if self.samples is None else self.samples
        return out


@dataclass(frozen=True)
class SampleSpec:
    """Which structures of one dataset feed one stats object."""

    strategy: str  # random | balanced | all
    n: int | None  # None = all
    seed: int | None  # None when the sample does not depend on the seed (all structures)

    @classmethod
    def make(cls, strategy: str, n: int | None, seed: int, dataset_size: int) -> "SampleSpec":
        # Taking every structure does not depend on the seed (flat statistics are order-free), so
        # all seeds share one stats object (and one cache entry) for small datasets.
        if strategy == "all" or n is None or n >= dataset_size:
            return cls("all", None, None)
        return cls(strategy, int(n), int(seed))


def stats_key(fields: dict) -> str:
    """A short stable hash of the settings that determine one stats object."""
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]
