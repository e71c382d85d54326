"""Chemical Similarity Index: the Fréchet distance between two FeatureStats (lower = more similar)."""
from __future__ import annotations

from dataclasses import dataclass, field

from fastcsi.errors import FastCSIError
from fastcsi.stats.feature_stats import FeatureStats, _label, check_comparable
from fastcsi.stats.frechet import frechet_terms


@dataclass
class CSIResult:
    """CSI = mean_term + trace_term, with mean_term = |mu_a - mu_b|^2 and
    trace_term = tr S_a + tr S_b - 2 tr sqrt(S_a^1/2 S_b S_a^1/2); n_a, n_b the sample counts."""

    csi: float
    mean_term: float
    trace_term: float
    n_a: int
    n_b: int
    per_group: dict = field(default_factory=dict)  # label (Z) -> CSIResult
    skipped_groups: dict = field(default_factory=dict)  # label -> why no per-group CSI

    def to_dict(self) -> dict:
        out = {
            "csi": self.csi,
            "mean_term": self.mean_term,
            "trace_term": self.trace_term,
            "n_a": self.n_a,
            "n_b": self.n_b,
        }
        if self.per_group or self.skipped_groups:
            out["per_group"] = {str(z): r.to_dict() for z, r in sorted(self.per_group.items())}
            out["skipped_groups"] = {str(z): why for z, why in sorted(self.skipped_groups.items())}
        return out


def _pair(a: FeatureStats, b: FeatureStats, backend: str) -> CSIResult:
    mean_term, trace_term = frechet_terms(a.mean, a.covariance(), b.mean, b.covariance(), backend=backend)
    return CSIResult(mean_term + trace_term, mean_term, trace_term, a.count, b.count)


def csi(a: FeatureStats, b: FeatureStats, per_group: bool = False, backend: str = "auto") -> CSIResult:
    """CSI between the feature distributions summarised by ``a`` and ``b`` (covariances ddof=1).

    With ``per_group``, also the CSI of every group label present in both with >= 2 samples each;
    the others are listed in ``skipped_groups``."""
    check_comparable(a, b)
    for stats, name in ((a, "stats A"), (b, "stats B")):
        if stats.count < 2:
            raise FastCSIError(
                f"{_label(stats, name)} holds {stats.count} sample(s); CSI needs at least 2 (a covariance)"
            )
    result = _pair(a, b, backend)
    if per_group:
        for stats, name in ((a, "stats A"), (b, "stats B")):
            if not stats.groups:
                raise FastCSIError(f"{_label(stats, name)} has no per-element groups; recompute with groups")
        for label in sorted(set(a.groups) | set(b.groups)):
            group_a, group_b = a.groups.get(label), b.groups.get(label)
            if group_a is None or group_b is None:
                result.skipped_groups[label] = "present in only one of the two"
            elif group_a.count < 2 or group_b.count < 2:
                result.skipped_groups[label] = f"too few samples ({group_a.count}, {group_b.count})"
            else:
                result.per_group[label] = _pair(group_a, group_b, backend)
    return result
