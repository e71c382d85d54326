"""Seeded train / validation / test splits: ``"950,50,rest"`` (counts), ``"0.8,0.1,0.1"``
(fractions) or any mix, ``rest`` taking what remains."""
from __future__ import annotations

import numpy as np

from fastcsi.errors import FastCSIError


def parse_split(spec: str, n: int) -> tuple[int, int, int]:
    """Sizes (train, val, test) for ``n`` structures."""
    parts = [p.strip().lower() for p in str(spec).split(",")]
    if len(parts) != 3:
        raise FastCSIError(f"split {spec!r} must have three parts: train,val,test (e.g. 950,50,rest or 0.8,0.1,0.1)")
    sizes: list = []
    for part in parts:
        if part == "rest":
            sizes.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise FastCSIError(f"split {spec!r}: {part!r} is neither a count, a fraction nor 'rest'") from None
        if value < 0:
            raise FastCSIError(f"split {spec!r}: sizes must be non-negative")
        is_fraction = "." in part or (0 < value < 1)
        sizes.append(int(round(value * n)) if is_fraction else int(value))
    if sizes.count(None) > 1:
        raise FastCSIError(f"split {spec!r}: only one part may be 'rest'")
    fractions = [float(p) for p in parts if p != "rest"]
    if "rest" not in parts and all("." in p for p in parts) and abs(sum(fractions) - 1.0) < 1e-6:
        sizes[0] = None  # fractions covering everything: training takes the rounding leftovers
    fixed = sum(s for s in sizes if s is not None)
    if None in sizes:
        sizes[sizes.index(None)] = n - fixed
    if any(s < 0 for s in sizes) or sum(sizes) > n:
        raise FastCSIError(f"split {spec!r} asks for {fixed} structures but the dataset has only {n}")
    if sizes[0] < 1 or sizes[1] < 1 or sizes[2] < 1:
        raise FastCSIError(f"split {spec!r} leaves an empty train, validation or test set ({n} structures)")
    return tuple(sizes)


def split_indices(n: int, spec: str, seed: int) -> dict:
    """Disjoint index arrays ``{"train", "val", "test"}`` drawn from a seeded permutation of range(n)."""
    n_train, n_val, n_test = parse_split(spec, n)
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train:n_train + n_val]),
        "test": np.sort(perm[n_train + n_val:n_train + n_val + n_test]),
    }
