"""Seeded train / validation / test splits: ``"950,50,rest"`` (counts), ``"0.8,0.1,0.1"``
(fractions) or any mix, ``rest`` taking what remains. A part that comes from its own file
(``finetune --val`` / ``--test``) is 0 in the split of the training data (``split_for_files``)."""
from __future__ import annotations

import numpy as np

from fastcsi.errors import FastCSIError


PARTS = ("train", "val", "test")
_PART_NAMES = {"train": "training", "val": "validation", "test": "test"}


def parse_split(spec: str, n: int, from_files=()) -> tuple[int, int, int]:
    """Sizes (train, val, test) for ``n`` structures; parts named in ``from_files`` must be 0
    (their structures come from a file of their own), the others at least 1."""
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
    for part, size in zip(PARTS, sizes):
        if part in from_files and size:
            raise FastCSIError(f"split {spec!r} takes {size} {_PART_NAMES[part]} structures from the data, but the "
                               f"{_PART_NAMES[part]} set comes from its own file: make that part 0")
        if part not in from_files and size < 1:
            raise FastCSIError(f"split {spec!r} leaves the {_PART_NAMES[part]} set empty ({n} structures)")
    return tuple(sizes)


def split_for_files(spec: str, from_files) -> str:
    """``spec`` with the parts that come from their own files set to 0 and training taking the rest:
    the recipe's default ``950,50,rest`` with a test file becomes ``rest,50,0``."""
    parts = [p.strip() for p in str(spec).split(",")]
    if not from_files or len(parts) != 3:
        return spec
    parts = ["0" if name in from_files else p for name, p in zip(PARTS, parts)]
    parts[0] = "rest"
    return ",".join(parts)


def split_indices(n: int, spec: str, seed: int, from_files=()) -> dict:
    """Disjoint index arrays ``{"train", "val", "test"}`` drawn from a seeded permutation of range(n)."""
    n_train, n_val, n_test = parse_split(spec, n, from_files)
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train:n_train + n_val]),
        "test": np.sort(perm[n_train + n_val:n_train + n_val + n_test]),
    }
