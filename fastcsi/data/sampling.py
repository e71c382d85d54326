"""Seeded sampling over a dataset's class keys (never its structures).

- ``random``: uniform without replacement.
- ``balanced``: equal quota per class; classes with fewer structures than their quota give the
  leftover to the others, repeatedly (water filling), as in the paper's long-tail analysis.
  O(N + C log C) for N structures and C classes.
- ``temperature_mix``/``mixture_indices``: JMP-style multi-dataset mixing, p_i ∝ n_i^(1/T).
- ``Budget``: the paper's compute budget C = N x E.

Every function returns indices **sorted ascending** (better I/O locality); the same seed gives the
same indices on every machine (numpy ``default_rng``, PCG64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fastcsi.errors import FastCSIError

STRATEGIES = ("random", "balanced", "all")


def balanced_quotas(class_sizes: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """How many items to draw from each class so that the total is ``min(n, sum(sizes))`` and
    quotas are as equal as availability allows. Remainders go to randomly chosen classes."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    quotas = np.zeros_like(sizes)
    remaining = int(min(n, sizes.sum()))
    active = np.flatnonzero(sizes > 0)
    while remaining > 0 and active.size:
        share = remaining // active.size
        short = active[sizes[active] - quotas[active] <= share]
        if short.size:
            # These classes run out: take all they have; their unused quota is redistributed.
            taken = sizes[short] - quotas[short]
            quotas[short] += taken
            remaining -= int(taken.sum())
            active = np.setdiff1d(active, short)
            continue
        quotas[active] += share
        remaining -= share * active.size
        if remaining:
            lucky = rng.choice(active, size=remaining, replace=False)
            quotas[lucky] += 1
            remaining = 0
    return quotas


def _balanced(keys: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(classes))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    quotas = balanced_quotas(sizes, n, rng)
    chosen = [
        rng.choice(order[starts[c] : starts[c + 1]], size=int(q), replace=False)
        for c, q in enumerate(quotas)
        if q
    ]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def sample_from_keys(keys, n: int | None, strategy: str = "random", seed: int = 0) -> np.ndarray:
    """:func:`sample_indices` on an array of class keys (one per structure)."""
    keys = np.asarray(keys)
    total = len(keys)
    if strategy not in STRATEGIES:
        raise FastCSIError(f"unknown sampling strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if n is not None and n < 0:
        raise FastCSIError(f"sample size must be non-negative, got {n}")
    if strategy == "all" or n is None or n >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        chosen = rng.choice(total, size=n, replace=False)
    else:
        chosen = _balanced(keys, n, rng)
    return np.sort(chosen).astype(np.int64)


def sample_indices(ds, n: int | None, strategy: str = "random", seed: int = 0) -> np.ndarray:
    """``n`` indices of ``ds`` (all when ``n`` is None or >= len), sorted ascending.

    Uses the dataset's class codes only (from its index; no structure is read). Balanced draws
    on the codes are those on the keys themselves: the codes number the sorted keys."""
    keys = ds.class_codes()[1] if strategy == "balanced" else np.zeros(len(ds), dtype=np.int8)
    return sample_from_keys(keys, n, strategy, seed)


def temperature_mix(sizes: Sequence[int], T: float = 2.0) -> np.ndarray:
    """Mixing probabilities p_i ∝ n_i^(1/T) (JMP): T=1 proportional, T->inf uniform."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if T <= 0:
        raise FastCSIError(f"temperature must be positive, got {T}")
    if (sizes < 0).any() or sizes.sum() <= 0:
        raise FastCSIError("dataset sizes must be non-negative with a positive total")
    weights = np.where(sizes > 0, sizes ** (1.0 / T), 0.0)
    return weights / weights.sum()


def _apportion(n: int, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Integer counts summing to min(n, sum(capacity)), proportional to weights (largest
    remainder), capped by capacity with the excess handed on to the others."""
    counts = np.zeros(len(weights), dtype=np.int64)
    remaining = int(min(n, capacity.sum()))
    open_ = (capacity > 0) & (weights > 0)
    while remaining > 0 and open_.any():
        w = np.where(open_, weights, 0.0)
        ideal = remaining * w / w.sum()
        add = np.floor(ideal).astype(np.int64)
        leftover = remaining - int(add.sum())
        if leftover:
            order = np.argsort(-(ideal - add), kind="stable")
            add[order[:leftover]] += 1
        add = np.minimum(add, capacity - counts)
        counts += add
        remaining -= int(add.sum())
        open_ &= counts < capacity
    return counts


def mixture_indices(datasets, n: int, weights=None, seed: int = 0, strategy: str = "random") -> np.ndarray:
    """``n`` (dataset, index) pairs drawn across ``datasets`` in proportion to ``weights``
    (default: ``temperature_mix`` of their sizes). Returns an (n, 2) int64 array sorted by
    dataset then index; a dataset that runs out passes its share to the others."""
    sizes = np.array([len(d) for d in datasets], dtype=np.int64)
    weights = temperature_mix(sizes) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != sizes.shape or (weights < 0).any() or weights.sum() <= 0:
        raise FastCSIError("mixture weights must be one non-negative number per dataset with a positive sum")
    counts = _apportion(n, weights, sizes)
    parts = []
    for k, (ds, count) in enumerate(zip(datasets, counts)):
        idx = sample_indices(ds, int(count), strategy, seed + k)
        parts.append(np.stack([np.full(len(idx), k, dtype=np.int64), idx], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class Budget:
    """Pretraining compute budget of the paper: N samples seen E times, C = N x E."""

    n_samples: int
    epochs: float

    def __post_init__(self):
        if self.n_samples <= 0 or self.epochs <= 0:
            raise FastCSIError(f"budget needs positive samples and epochs, got N={self.n_samples}, E={self.epochs}")

    @property
    def total(self) -> int:
        return int(round(self.n_samples * self.epochs))

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_samples / batch_size)

    def steps(self, batch_size: int) -> int:
        """Optimizer steps for the whole budget at ``batch_size`` (last partial batch counted)."""
        return math.ceil(self.steps_per_epoch(batch_size) * self.epochs)

    @classmethod
    def from_total(cls, total: int, n_samples: int) -> "Budget":
        """The budget spending ``total`` sample-visits on ``n_samples`` samples."""
        return cls(n_samples, total / n_samples)


def draw_selection(datasets, plan, n: int, seed: int):
    """Per-dataset sorted indices of an N-structure pretraining set, and the quota of each component.

    ``plan``: components ``{"dataset": k, "classes": [keys] or None (the whole dataset),
    "structure_share": q}``. Quotas: N apportioned by the shares (largest remainder), each capped by
    the structures its component holds; inside a component the draw is class-balanced and seeded
    (dataset level: exactly ``fastcsi.data.mixture_indices``, so fresh draws of a mix reproduce it)."""
    shares = np.array([float(c["structure_share"]) for c in plan])
    if not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
        raise FastCSIError("the mixture's structure shares must be finite, non-negative and not all zero")
    whole = [c["classes"] is None for c in plan]
    if all(whole) and sorted(c["dataset"] for c in plan) == list(range(len(datasets))):
        # the pretraining sampler's own draw, so that `pretrain --mix csi:` with this seed gives this set
        weights = np.zeros(len(datasets))
        for c, q in zip(plan, shares):
            weights[c["dataset"]] = q
        pairs = mixture_indices(datasets, n, weights=weights, seed=seed, strategy="balanced")
        chosen = [pairs[pairs[:, 0] == k, 1] for k in range(len(datasets))]
        quotas = [len(chosen[c["dataset"]]) for c in plan]
    else:
        keys = [np.asarray(d.class_keys()).astype(str) for d in datasets]
        members = []
        for c in plan:
            k = c["dataset"]
            members.append(np.arange(len(keys[k])) if c["classes"] is None
                           else np.flatnonzero(np.isin(keys[k], np.asarray(c["classes"], dtype=str))))
        quotas = _apportion(n, shares, np.array([len(m) for m in members], dtype=np.int64))
        parts = [[] for _ in datasets]
        for j, (c, member, quota) in enumerate(zip(plan, members, quotas)):
            if quota:
                pick = sample_from_keys(keys[c["dataset"]][member], int(quota), "balanced", seed=[seed, j])
                parts[c["dataset"]].append(member[pick])
        chosen = [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]
        quotas = [int(q) for q in quotas]
    got = sum(len(c) for c in chosen)
    if got < n:
        raise FastCSIError(
            f"--budget {n}: the components the mixture uses hold only {got} structures; lower --budget or "
            "spread the mixture with --floor / --diversity"
        )
    return chosen, quotas
