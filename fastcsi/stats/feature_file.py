"""Feature statistics from per-atom features saved elsewhere (``fastcsi stats from-features``).

Accepted files: a torch file (loaded with ``weights_only=True``) or ``.npy``/``.npz`` holding a
list of per-structure ``(n_atoms, d)`` arrays or dicts with ``node_features`` (and optionally
``atomic_numbers``), one ``(n_atoms, d)`` array, or a dict with ``features`` (+ ``natoms`` for
structure boundaries). Rows are streamed into :class:`FeatureStats` in chunks of ``FLUSH_ROWS``.
"""
from __future__ import annotations

from pathlib import Path

from fastcsi.errors import FastCSIError
from fastcsi.utils import file_sha256

AGGREGATIONS = ("flat", "mean", "sum", "max")
FLUSH_ROWS = 1 << 16  # rows gathered before one covariance call (amortises the BLAS call)


def _load_feature_file(path: Path):
    """Return the raw object of a features file without running arbitrary pickles."""
    import numpy as np
    import torch

    if not path.is_file():
        raise FastCSIError(f"{path}: no such features file")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse a user's file is a user error
        raise FastCSIError(
            f"{path}: cannot read features: not a .npy/.npz or a torch-saved file of tensors, lists and "
            f"dicts loadable without arbitrary pickles ({type(exc).__name__})"
        ) from None


def _as_tensor(value, path: Path, index):
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        where = f" (structure {index})" if index is not None else ""
        shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
        raise FastCSIError(f"{path}{where}: features must be a 2-D float array (n_atoms, d); got {shape}")
    return value


def _structures(obj, path: Path):
    """Yield (index, features (n_atoms, d), atomic_numbers or None) per structure, or a single
    (None, features, numbers) item when the file has no structure boundaries."""
    import torch

    def numbers_of(item):
        for key in ("atomic_numbers", "z", "numbers"):
            if key in item:
                return torch.as_tensor(item[key]).reshape(-1).long()
        return None

    if isinstance(obj, dict):
        key = next((k for k in ("features", "node_features") if k in obj), None)
        if key is None:
            raise FastCSIError(f"{path}: a features dict needs a 'features' or 'node_features' entry")
        inner = obj[key]
        if isinstance(inner, (list, tuple)):
            yield from _structures(list(inner), path)
            return
        features = _as_tensor(inner, path, None)
        numbers = numbers_of(obj)
        natoms = obj.get("natoms")
        if natoms is None:
            yield None, features, numbers
            return
        sizes = torch.as_tensor(natoms).reshape(-1).long().tolist()
        if sum(sizes) != features.shape[0]:
            raise FastCSIError(f"{path}: natoms sums to {sum(sizes)} but features has {features.shape[0]} rows")
        start = 0
        for index, size in enumerate(sizes):
            yield index, features[start : start + size], None if numbers is None else numbers[start : start + size]
            start += size
        return
    if isinstance(obj, (list, tuple)):
        for index, item in enumerate(obj):
            if isinstance(item, dict):
                if "node_features" not in item:
                    raise FastCSIError(f"{path} (structure {index}): entry has no 'node_features'")
                yield index, _as_tensor(item["node_features"], path, index), numbers_of(item)
            else:
                yield index, _as_tensor(item, path, index), None
        return
    yield None, _as_tensor(obj, path, None), None


def _aggregate(features, agg: str):
    if agg == "mean":
        return features.mean(dim=0, keepdim=True)
    if agg == "sum":
        return features.sum(dim=0, keepdim=True)
    return features.max(dim=0, keepdim=True).values


def from_feature_file(features_file, agg: str = "flat", groups: bool | None = None, extractor: str | None = None,
                      layer: str | None = None, metadata: dict | None = None, backend: str = "auto",
                      progress: bool = False):
    """:class:`FeatureStats` of a saved features file. ``agg``: ``flat`` (every atom a sample) or
    ``mean|sum|max`` (one sample per structure); ``groups``: per-element stats (flat only; default:
    when atomic numbers are present); ``extractor``/``layer``/``metadata`` are recorded."""
    import torch
    from tqdm import tqdm

    from fastcsi.stats.feature_stats import FeatureStats

    features_file = Path(features_file)
    if agg not in AGGREGATIONS:
        raise FastCSIError(f"aggregation {agg!r}: choose one of {', '.join(AGGREGATIONS)}")
    obj = _load_feature_file(features_file)
    items = _structures(obj, features_file)
    total = len(obj) if isinstance(obj, (list, tuple)) else None
    result = None
    pending, pending_numbers, pending_rows = [], [], 0
    n_structures = n_atoms = 0
    track = None

    def flush():
        nonlocal pending, pending_numbers, pending_rows
        if pending:
            chunk = torch.cat(pending)
            labels = torch.cat(pending_numbers) if track else None
            result.update(chunk, groups=labels, backend=backend, where=str(features_file))
        pending, pending_numbers, pending_rows = [], [], 0

    bar = tqdm(items, total=total, desc="features", unit="struct",
               disable=None if progress else True)  # None: shown only on a terminal
    for index, features, numbers in bar:
        if index is None and agg != "flat":
            raise FastCSIError(f"{features_file}: has no structure boundaries (no natoms); use --agg flat")
        if result is None:
            track = (numbers is not None and agg == "flat") if groups is None else groups
            if track and agg != "flat":
                raise FastCSIError("--groups needs --agg flat (per-element stats are over atoms)")
            if track and numbers is None:
                raise FastCSIError(f"{features_file}: --groups needs atomic numbers, which the file lacks")
            settings = {"aggregation": agg, "source": str(features_file), "dataset_fingerprint": file_sha256(features_file)}
            if extractor:
                settings["extractor"] = extractor
            if layer:
                settings["layer"] = layer
            settings.update(metadata or {})
            result = FeatureStats(features.shape[1], settings, track_groups=track)
        if features.shape[1] != result.dim:
            raise FastCSIError(
                f"{features_file} (structure {index}): feature dimension {features.shape[1]} != {result.dim}"
            )
        if track:
            if numbers is None or numbers.shape[0] != features.shape[0]:
                raise FastCSIError(f"{features_file} (structure {index}): atomic numbers missing or wrong length")
            pending_numbers.append(numbers)
        n_structures += 1
        n_atoms += features.shape[0]
        sample = features if agg == "flat" else _aggregate(features, agg)
        pending.append(sample)
        pending_rows += sample.shape[0]
        if pending_rows >= FLUSH_ROWS:
            flush()
    if result is None:
        raise FastCSIError(f"{features_file}: contains no features")
    flush()
    if index is not None:
        result.metadata["n_structures"] = n_structures
    result.metadata["n_atoms"] = n_atoms
    return result
