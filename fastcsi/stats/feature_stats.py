"""FeatureStats: streaming, mergeable, persistable first and second moments of a feature cloud.

Holds count, float64 mean (d,) and float64 centred scatter (d, d) (covariance = scatter / (n - ddof)),
optionally the same per group label (atomic number) for a per-element CSI breakdown. Chunks are
reduced by the covariance op (``fastcsi.stats.covariance``) and combined by the exact Chan merge;
``merge`` and ``all_reduce`` use the same update, so stats of shards merged equal stats of the whole
to roundoff. Memory O(d^2) (times the number of groups), whatever the number of samples.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from fastcsi.errors import FastCSIError
from fastcsi.stats.covariance import chunk_moments
from fastcsi.stats.covariance_ref import merge_moments
from fastcsi.utils import atomic_path, versions

FORMAT = "fastcsi.FeatureStats/1"
# Metadata keys whose disagreement makes two stats incomparable (different feature spaces).
FINGERPRINT_KEYS = ("extractor", "layer", "aggregation")
# Metadata keys that add up when disjoint shards are merged (equal values too: two shards of 40
# structures make 80).
ADDITIVE_KEYS = ("n_structures", "n_atoms")


def _label(stats: "FeatureStats", fallback: str) -> str:
    return f"{fallback} ({stats.source})" if stats.source else fallback


def _seeds_of(metadata: dict) -> list:
    if "seeds" in metadata:
        return list(metadata["seeds"])
    return [metadata["seed"]] if "seed" in metadata else []


def _merge_metadata(mine: dict, theirs: dict) -> dict:
    merged = dict(mine)
    for key, value in theirs.items():
        if key in ("seed", "seeds"):
            continue
        if key in ADDITIVE_KEYS and key in merged and all(isinstance(v, (int, float)) for v in (merged[key], value)):
            merged[key] = merged[key] + value
        elif key not in merged:
            merged[key] = value
        elif merged[key] == value:
            continue
        else:
            # Keep the first value but never drop the other silently.
            conflicts = merged.setdefault("merge_conflicts", {})
            seen = conflicts.setdefault(key, [merged[key]])
            if value not in seen:
                seen.append(value)
    # Shards drawn with different seeds: the merged stats hold every seed's sample, so a single
    # "seed" would misstate them; "seeds" lists each seed once, in merge order.
    seeds = []
    for seed in _seeds_of(mine) + _seeds_of(theirs):
        if seed not in seeds:
            seeds.append(seed)
    merged.pop("seed", None)
    merged.pop("seeds", None)
    if len(seeds) == 1:
        merged["seed"] = seeds[0]
    elif seeds:
        merged["seeds"] = seeds
    return merged


class FeatureStats:
    """Count, mean and centred scatter of (n, dim) feature chunks, accumulated in float64."""

    def __init__(self, dim: int, metadata: dict | None = None, track_groups: bool = False):
        if int(dim) < 1:
            raise FastCSIError(f"FeatureStats: feature dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.metadata = dict(metadata or {})
        self.track_groups = bool(track_groups)
        self.source: str | None = None  # file it was loaded from, for error messages
        self._count = 0
        self._mean = np.zeros(self.dim)
        self._scatter = np.zeros((self.dim, self.dim))
        self._groups: dict[int, FeatureStats] = {}

    # ------------------------------------------------------------------ accessors
    @property
    def count(self) -> int:
        return self._count

    @property
    def mean(self) -> np.ndarray:
        return self._mean

    @property
    def scatter(self) -> np.ndarray:
        return self._scatter

    @property
    def groups(self) -> dict:
        return self._groups

    def covariance(self, ddof: int = 1) -> np.ndarray:
        if self._count - ddof <= 0:
            raise FastCSIError(
                f"{_label(self, 'feature stats')}: covariance is undefined for {self._count} sample(s) "
                f"(need more than {ddof})"
            )
        return self._scatter / (self._count - ddof)

    def __repr__(self) -> str:
        groups = f", groups={len(self._groups)}" if self.track_groups else ""
        return f"FeatureStats(dim={self.dim}, count={self._count}{groups})"

    # ------------------------------------------------------------------ accumulation
    def _absorb(self, count, mean, scatter) -> None:
        self._count, self._mean, self._scatter = merge_moments(
            self._count, self._mean, self._scatter, count, mean, scatter
        )

    def update(self, x, groups=None, backend: str = "auto", where: str | None = None) -> "FeatureStats":
        """Add the rows of ``x`` (n, dim): torch tensor (CPU/CUDA; float32/bf16/float64) or numpy.

        ``groups`` (n,) integer labels (atomic numbers) are required when ``track_groups``; the
        totals are then the exact merge of the per-group moments (one pass over x)."""
        where = f" from {where}" if where else ""
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 2 or shape[1] != self.dim:
            raise FastCSIError(f"features{where} must have shape (n, {self.dim}); got {shape}")
        n = shape[0]
        if n == 0:
            return self
        if not self.track_groups:
            moments = chunk_moments(x, backend=backend)
            self._check_finite(x, moments, where)
            self._absorb(*moments)
            return self
        if groups is None:
            raise FastCSIError(f"features{where}: these stats track groups, so update() needs groups=")
        labels = groups.detach().cpu().numpy() if hasattr(groups, "detach") else np.asarray(groups)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise FastCSIError(
                f"groups{where} must be {n} integer labels, got shape {labels.shape} dtype {labels.dtype}"
            )
        order = np.argsort(labels, kind="stable")
        unique, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        if hasattr(x, "detach"):
            import torch

            order_index = torch.as_tensor(order, device=x.device)
        else:
            order_index = order
        sorted_x = x[order_index]
        per_group = []
        for label, start, size in zip(unique.tolist(), starts.tolist(), counts.tolist()):
            moments = chunk_moments(sorted_x[start : start + size], backend=backend)
            self._check_finite(x, moments, where)  # before absorbing anything: all or nothing
            per_group.append((label, moments))
        for label, moments in per_group:
            group = self._groups.get(label)
            if group is None:
                group = self._groups[label] = FeatureStats(self.dim)
            group._absorb(*moments)
            self._absorb(*moments)
        return self

    def _check_finite(self, x, moments, where: str) -> None:
        _, mean, scatter = moments
        if np.isfinite(mean).all() and np.isfinite(np.diagonal(scatter)).all():
            return
        from fastcsi.stats.outliers import first_non_finite_row

        row = first_non_finite_row(x)
        raise FastCSIError(f"features{where} contain NaN or inf (first at row {-1 if row is None else row}); "
                           "nothing was added")

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Absorb ``other`` exactly (Chan et al.); groups and metadata are merged too."""
        check_comparable(self, other)
        if self._count and other._count and self.track_groups != other.track_groups:
            with_groups, without = (self, other) if self.track_groups else (other, self)
            raise FastCSIError(
                f"{_label(with_groups, 'one stats')} tracks per-element groups but "
                f"{_label(without, 'the other')} does not; merge stats computed the same way"
            )
        self._absorb(other._count, other._mean, other._scatter)
        for label, group in other._groups.items():
            mine = self._groups.get(label)
            if mine is None:
                mine = self._groups[label] = FeatureStats(self.dim)
            mine._absorb(group._count, group._mean, group._scatter)
        self.track_groups = self.track_groups or other.track_groups
        self.metadata = _merge_metadata(self.metadata, other.metadata)
        return self

    def copy(self) -> "FeatureStats":
        out = FeatureStats(self.dim, self.metadata, self.track_groups)
        out._absorb(self._count, self._mean, self._scatter)
        for label, group in self._groups.items():
            out._groups[label] = group.copy()
        out.source = self.source
        return out

    # ------------------------------------------------------------------ distributed
    def all_reduce(self, group=None) -> "FeatureStats":
        """Combine the stats of all ranks of ``torch.distributed`` in place, exactly.

        Two SUM all-reduces (counts and count-weighted means -> global mean; then each rank's scatter
        plus n_r (m_r - m)(m_r - m)^T, the multi-way Chan update), all in float64. Group labels are
        unioned first so every rank reduces the same tensor layout."""
        import torch
        import torch.distributed as dist

        labels = sorted(self._groups)
        if self.track_groups:
            gathered: list = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, labels, group=group)
            labels = sorted({label for part in gathered for label in part})
        members = [self] + [self._groups.get(label) or FeatureStats(self.dim) for label in labels]
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        counts = torch.tensor([float(m._count) for m in members], dtype=torch.float64, device=device)
        weighted = torch.tensor(np.stack([m._mean * m._count for m in members]), device=device)
        dist.all_reduce(counts, group=group)
        dist.all_reduce(weighted, group=group)
        totals = counts.cpu().numpy()
        means = weighted.cpu().numpy() / np.maximum(totals, 1.0)[:, None]
        local = np.stack(
            [m._scatter + np.outer(m._mean - mu, m._mean - mu) * m._count for m, mu in zip(members, means)]
        )
        scatter = torch.tensor(local, device=device)
        dist.all_reduce(scatter, group=group)
        scatters = scatter.cpu().numpy()
        for index, member in enumerate(members):
            member._count = int(round(totals[index]))
            member._mean = means[index] if member._count else np.zeros(self.dim)
            member._scatter = scatters[index]
        for label, member in zip(labels, members[1:]):
            self._groups[label] = member
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write an .npz (atomic) with the moments, groups, metadata JSON, dtype and versions."""
        path = Path(path)
        labels = sorted(self._groups)
        arrays = {
            "format": np.array(FORMAT),
            "dim": np.array(self.dim, dtype=np.int64),
            "count": np.array(self._count, dtype=np.int64),
            "dtype": np.array("float64"),
            "mean": self._mean,
            "scatter": self._scatter,
            "track_groups": np.array(self.track_groups),
            "group_labels": np.array(labels, dtype=np.int64),
            "group_counts": np.array([self._groups[z]._count for z in labels], dtype=np.int64),
            "group_means": np.array([self._groups[z]._mean for z in labels]).reshape(len(labels), self.dim),
            "group_scatters": np.array([self._groups[z]._scatter for z in labels]).reshape(
                len(labels), self.dim, self.dim
            ),
            "metadata_json": np.array(json.dumps(self.metadata, sort_keys=True, default=str)),
            "versions_json": np.array(json.dumps(versions(), sort_keys=True)),
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:  # a handle stops numpy from appending ".npz"
                np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path) -> "FeatureStats":
        path = Path(path)
        if not path.is_file():
            raise FastCSIError(f"{path}: no such stats file")
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {key: data[key] for key in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise FastCSIError(f"{path}: not a readable fastcsi stats .npz file ({exc})") from None
        try:
            if str(fields["format"]) != FORMAT:
                raise FastCSIError(f"{path}: unknown stats format {str(fields['format'])!r} (expected {FORMAT})")
            dim = int(fields["dim"])
            stats = cls(dim, json.loads(str(fields["metadata_json"])), bool(fields["track_groups"]))
            stats.source = str(path)
            stats._count = int(fields["count"])
            stats._mean = np.asarray(fields["mean"], dtype=np.float64)
            stats._scatter = np.asarray(fields["scatter"], dtype=np.float64)
            labels = fields["group_labels"]
            for index, label in enumerate(labels.tolist()):
                group = cls(dim)
                group._count = int(fields["group_counts"][index])
                group._mean = np.asarray(fields["group_means"][index], dtype=np.float64)
                group._scatter = np.asarray(fields["group_scatters"][index], dtype=np.float64)
                stats._groups[int(label)] = group
            stats.saved_versions = json.loads(str(fields["versions_json"]))
        except FastCSIError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise FastCSIError(f"{path}: corrupt stats file (missing or malformed field: {exc})") from None
        for member in [stats, *stats._groups.values()]:
            if (
                member._count < 0
                or member._mean.shape != (dim,)
                or member._scatter.shape != (dim, dim)
                or not np.isfinite(member._mean).all()
                or not np.isfinite(member._scatter).all()
            ):
                raise FastCSIError(f"{path}: corrupt stats file (bad count, shape or non-finite moments)")
        return stats


def load_stats(path) -> FeatureStats:
    """Load a FeatureStats .npz written by :meth:`FeatureStats.save`."""
    return FeatureStats.load(path)


def check_comparable(a: FeatureStats, b: FeatureStats) -> None:
    """Raise FastCSIError unless a and b live in the same feature space (dim, extractor, layer,
    aggregation, when both record them)."""
    name_a, name_b = _label(a, "stats A"), _label(b, "stats B")
    if a.dim != b.dim:
        raise FastCSIError(f"{name_a} has feature dimension {a.dim} but {name_b} has {b.dim}; they are not comparable")
    for key in FINGERPRINT_KEYS:
        if key in a.metadata and key in b.metadata and a.metadata[key] != b.metadata[key]:
            raise FastCSIError(
                f"{name_a} and {name_b} were computed with different {key} "
                f"({a.metadata[key]!r} vs {b.metadata[key]!r}); they are not comparable"
            )
