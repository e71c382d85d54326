"""Exploding features: non-finite rows and atoms whose feature norm is far above the median, found
in one streaming pass with bounded memory. Pure numerics (numpy/torch only).

A foundation model fed geometries far from its training data can return per-atom features orders
of magnitude larger than usual (SevenNet-0 on Transition-1x: norms up to ~7e4 against ~10). A
handful of such atoms can carry most of a dataset's covariance trace, and so most of every CSI that
dataset enters. :class:`FeatureNormMonitor` sees each batch of features once and finds them.

How the median is known in one pass. The norms go into a fixed log-spaced histogram
(``BINS_PER_OCTAVE`` bins per factor of 2, from 2^-64 to 2^64; zero and smaller norms fall into
the first bin, larger ones into the last). Its counts are exact and mergeable across batches and
ranks, and give the median to within one bin (a factor 2^(1/16), 4.4%; interpolated inside the
bin). The outlier threshold is ``OUTLIER_FACTOR`` x that median, rounded up to the next bin edge,
so "outlier" means exactly "in a bin at or above the threshold's bin" and the counts, the listed
structures and the trace share all refer to the same atoms. Each bin also keeps the sum of its
atoms' feature vectors and squared norms (O(bins x dim) float64, allocated on first use), so the
outliers' share of the trace, 1 - tr Sigma(without them) / tr Sigma(all), is exact with no second
pass: the part of the dataset's total variance, and so of its share of the CSI trace term, that
would go away without those atoms.

Which structures hold outliers is decided when a batch is seen, before the final median exists:
every atom above ``CANDIDATE_FACTOR`` x the running median (of everything seen so far, this batch
included) is remembered as (owner, bin), at most ``MAX_CANDIDATES`` of them. At the end the
listing is complete when the final threshold is at least ``CANDIDATE_FACTOR`` x every running
median that was used; otherwise (the median fell more than 10x during the pass, or the candidate
list overflowed) the report says the listing is incomplete, while the counts and the share, which
come from the histogram, stay exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastcsi.errors import FastCSIError

# An atom is an outlier when its feature norm exceeds this multiple of the dataset's median norm.
OUTLIER_FACTOR = 100.0
# Warn when more than this share of the dataset's total variance tr(Sigma) (its part of the CSI trace
# term) goes away without the outlier atoms: then most of what the trace term compares is those few atoms.
DOMINANT_TRACE_SHARE = 0.5
BINS_PER_OCTAVE = 16
MIN_LOG2 = -64
MAX_LOG2 = 64
N_BINS = (MAX_LOG2 - MIN_LOG2) * BINS_PER_OCTAVE
# Atoms above this multiple of the running median are remembered with their owner: a factor 10
# of headroom below OUTLIER_FACTOR for the running median to move.
CANDIDATE_FACTOR = 10.0
MAX_CANDIDATES = 1_000_000
# Structures listed in a report (the count of all of them is always given).
MAX_LISTED_STRUCTURES = 1000


def _as_tensor(x):
    import torch

    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


class NonFiniteFeatures(FastCSIError):
    """Features holding NaN or inf, refused before anything was added; ``row`` is the first such row."""

    def __init__(self, row: int):
        super().__init__(f"features contain NaN or inf (first at row {row}); nothing was added")
        self.row = int(row)


def first_non_finite_row(x, rows=None) -> int | None:
    """Index of the first row of ``x`` (n, d) holding NaN or inf, or None when all are finite.

    ``rows`` (sorted indices): search only these, e.g. the rows whose norm is not finite, which
    are the only ones that can hold NaN or inf."""
    import torch

    t = _as_tensor(x)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        found = first_non_finite_row(t[torch.as_tensor(rows, device=t.device)])
        return None if found is None else int(rows[found])
    bad = ~torch.isfinite(t)
    if t.ndim == 2:
        bad = bad.any(dim=1)
    rows = bad.nonzero()
    return int(rows[0, 0]) if rows.numel() else None


def bin_of(norms: np.ndarray) -> np.ndarray:
    """Histogram bin of each norm (float64 array) on the fixed log2 grid."""
    with np.errstate(divide="ignore"):
        scaled = np.floor((np.log2(np.maximum(norms, 0.0)) - MIN_LOG2) * BINS_PER_OCTAVE)
    scaled = np.nan_to_num(scaled, nan=0.0, neginf=0.0, posinf=N_BINS - 1)
    return np.clip(scaled, 0, N_BINS - 1).astype(np.int64)


def bin_lower_edge(index: int) -> float:
    return 2.0 ** (MIN_LOG2 + index / BINS_PER_OCTAVE)


def histogram_median(counts: np.ndarray) -> float:
    """The median norm from the histogram counts, interpolated geometrically inside its bin."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    cumulative = np.cumsum(counts)
    half = total / 2.0
    index = int(np.searchsorted(cumulative, half, side="left"))
    before = cumulative[index - 1] if index else 0
    fraction = (half - before) / counts[index] if counts[index] else 0.0
    return bin_lower_edge(index) * 2.0 ** (fraction / BINS_PER_OCTAVE)


@dataclass
class OutlierReport:
    """The outliers of one dataset's features (see the module docstring for the definitions)."""

    n_atoms: int
    median_norm: float
    max_norm: float
    threshold: float  # norm from which an atom counts as an outlier (>= OUTLIER_FACTOR x median)
    n_outlier_atoms: int
    trace_share: float  # 1 - tr Sigma(without the outliers) / tr Sigma(all atoms)
    structures: dict = field(default_factory=dict)  # owner -> outlier atoms in it (the listed ones)
    # structures found holding outliers: all of them when listing_complete, otherwise a lower bound
    # (atoms that were not candidates when seen have no owner on record)
    n_structures: int = 0
    names: dict = field(default_factory=dict)  # owner -> name given to update() (e.g. structure id), where known
    listing_complete: bool = True

    @property
    def dominates_trace(self) -> bool:
        return self.trace_share > DOMINANT_TRACE_SHARE

    def to_dict(self) -> dict:
        top = sorted(self.structures.items(), key=lambda kv: (-kv[1], str(kv[0])))[:MAX_LISTED_STRUCTURES]
        return {
            "n_atoms": self.n_atoms,
            "median_norm": self.median_norm,
            "max_norm": self.max_norm,
            "outlier_factor": OUTLIER_FACTOR,
            "threshold": self.threshold,
            "n_outlier_atoms": self.n_outlier_atoms,
            "n_outlier_structures": self.n_structures,
            "trace_share": self.trace_share,
            "dominant_trace_share": DOMINANT_TRACE_SHARE,
            "dominates_trace": self.dominates_trace,
            "structures": [{"structure": owner, "outlier_atoms": n} for owner, n in top],
            "structures_listed": len(top),
            "listing_complete": self.listing_complete and len(top) == len(self.structures),
        }


class FeatureNormMonitor:
    """Streaming per-atom feature-norm statistics of one dataset; ``update`` per batch, then
    ``report``. Memory: the histogram, O(N_BINS x dim) float64 vector sums, and the candidates."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.counts = np.zeros(N_BINS, dtype=np.int64)
        self.sum_squares = np.zeros(N_BINS, dtype=np.float64)
        self.sum_vectors = None  # (N_BINS, dim) float64 on the features' device, on first update
        self.max_norm = 0.0
        self.max_running_median = 0.0
        self._candidate_owners: list = []
        self._candidate_bins: list = []
        self._candidate_names: dict = {}
        self.candidates_overflowed = False

    @property
    def n_atoms(self) -> int:
        return int(self.counts.sum())

    def update(self, x, owners, names=None) -> np.ndarray:
        """Add the rows of ``x`` (n, dim) with the label of the structure each row belongs to
        (``owners``, length n). Returns the boolean mask of the rows kept as candidates.

        ``names`` (owner -> name, e.g. the structure ids of this batch): the names of the candidates'
        owners are kept for the report, so that a listing never has to read the structures again.

        Rows holding NaN or inf raise :class:`NonFiniteFeatures` (naming the first) and nothing is
        added: the check reads the norms this pass computes anyway (such a row's norm is not finite)."""
        import torch

        t = _as_tensor(x)
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise FastCSIError(f"features must have shape (n, {self.dim}); got {tuple(t.shape)}")
        owners = np.asarray(owners)
        if owners.shape != (t.shape[0],):
            raise FastCSIError(f"owners must label each of the {t.shape[0]} rows; got shape {owners.shape}")
        if t.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        t64 = t.detach().to(torch.float64)
        squares = (t64 * t64).sum(dim=1)
        norms = squares.sqrt().cpu().numpy()
        finite = np.isfinite(norms)
        if not finite.all():
            # a non-finite norm may also be a finite row whose squares overflow: look at those rows only
            bad_row = first_non_finite_row(t, rows=np.nonzero(~finite)[0])
            if bad_row is not None:
                raise NonFiniteFeatures(bad_row)
        bins = bin_of(norms)
        self.counts += np.bincount(bins, minlength=N_BINS)
        self.sum_squares += np.bincount(bins, weights=squares.cpu().numpy(), minlength=N_BINS)
        if self.sum_vectors is None:
            self.sum_vectors = torch.zeros((N_BINS, self.dim), dtype=torch.float64, device=t64.device)
        self.sum_vectors.index_add_(0, torch.as_tensor(bins, device=t64.device), t64)
        self.max_norm = max(self.max_norm, float(norms.max()))

        running_median = histogram_median(self.counts)
        self.max_running_median = max(self.max_running_median, running_median)
        candidates = norms > CANDIDATE_FACTOR * running_median
        picked = np.nonzero(candidates)[0]
        room = MAX_CANDIDATES - len(self._candidate_bins)
        if picked.size > room:
            self.candidates_overflowed = True
            picked = picked[:room]
        self._candidate_owners.extend(owners[picked].tolist())
        self._candidate_bins.extend(bins[picked].tolist())
        if names and picked.size:
            for owner in dict.fromkeys(owners[picked].tolist()):
                if names.get(owner):
                    self._candidate_names[owner] = names[owner]
        return candidates

    def merge(self, other: "FeatureNormMonitor") -> "FeatureNormMonitor":
        """Absorb ``other`` (the same dataset's features seen elsewhere, e.g. another rank)."""
        if other.dim != self.dim:
            raise FastCSIError(f"cannot merge feature-norm monitors of dimensions {self.dim} and {other.dim}")
        self.counts += other.counts
        self.sum_squares += other.sum_squares
        if other.sum_vectors is not None:
            theirs = other.sum_vectors.cpu()
            self.sum_vectors = theirs.clone() if self.sum_vectors is None else self.sum_vectors + theirs.to(
                self.sum_vectors.device)
        self.max_norm = max(self.max_norm, other.max_norm)
        self.max_running_median = max(self.max_running_median, other.max_running_median)
        room = MAX_CANDIDATES - len(self._candidate_bins)
        self.candidates_overflowed |= other.candidates_overflowed or len(other._candidate_bins) > room
        self._candidate_owners.extend(other._candidate_owners[:room])
        self._candidate_bins.extend(other._candidate_bins[:room])
        kept = set(other._candidate_owners[:room])
        self._candidate_names.update((o, n) for o, n in other._candidate_names.items() if o in kept)
        return self

    def report(self) -> OutlierReport:
        n = self.n_atoms
        if n == 0:
            raise FastCSIError("no features were seen: nothing to check for outliers")
        median = histogram_median(self.counts)
        threshold_bin = int(bin_of(np.array([OUTLIER_FACTOR * median]))[0])
        # Round up to the grid so that membership is a whole number of bins.
        if bin_lower_edge(threshold_bin) < OUTLIER_FACTOR * median:
            threshold_bin += 1
        threshold = bin_lower_edge(threshold_bin) if threshold_bin < N_BINS else math.inf
        outlier_bins = slice(threshold_bin, N_BINS)
        n_outliers = int(self.counts[outlier_bins].sum())
        share = self._trace_share(outlier_bins, n_outliers)
        bins = np.asarray(self._candidate_bins, dtype=np.int64)
        owners = np.asarray(self._candidate_owners, dtype=object)[bins >= threshold_bin]
        structures: dict = {}
        for owner in owners.tolist():
            structures[owner] = structures.get(owner, 0) + 1
        complete = (not self.candidates_overflowed
                    and threshold >= CANDIDATE_FACTOR * self.max_running_median)
        return OutlierReport(
            n_atoms=n, median_norm=median, max_norm=self.max_norm, threshold=threshold,
            n_outlier_atoms=n_outliers, trace_share=share, structures=structures,
            n_structures=len(structures), listing_complete=complete,
            names={o: self._candidate_names[o] for o in structures if o in self._candidate_names},
        )

    def _trace_share(self, outlier_bins: slice, n_outliers: int) -> float:
        """1 - tr Sigma(without outliers) / tr Sigma(all), exactly, from the bin sums: the part of the
        total variance that goes away without the outlier atoms (they also move the mean, so this is
        more than their own squared deviations' share)."""
        if n_outliers == 0:
            return 0.0
        vectors = self.sum_vectors.cpu().numpy()
        n, n_rest = self.n_atoms, self.n_atoms - n_outliers
        if n_rest < 2:
            return 1.0
        total_sum = vectors.sum(axis=0)
        rest_sum = total_sum - vectors[outlier_bins].sum(axis=0)
        variance_all = (self.sum_squares.sum() - total_sum @ total_sum / n) / (n - 1)
        variance_rest = (self.sum_squares.sum() - self.sum_squares[outlier_bins].sum()
                         - rest_sum @ rest_sum / n_rest) / (n_rest - 1)
        if variance_all <= 0.0:
            return 0.0
        return float(min(max(1.0 - variance_rest / variance_all, 0.0), 1.0))

    def all_reduce(self) -> "FeatureNormMonitor":
        """Merge the monitors of all torch.distributed ranks into every rank's (small objects only
        travel: the histogram, the bin sums and the candidate list)."""
        import torch.distributed as dist

        mine = {
            "counts": self.counts, "sum_squares": self.sum_squares,
            "sum_vectors": None if self.sum_vectors is None else self.sum_vectors.cpu().numpy(),
            "max_norm": self.max_norm, "max_running_median": self.max_running_median,
            "owners": self._candidate_owners, "bins": self._candidate_bins, "names": self._candidate_names,
            "overflowed": self.candidates_overflowed,
        }
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        merged = FeatureNormMonitor(self.dim)
        for part in gathered:
            other = FeatureNormMonitor(self.dim)
            other.counts, other.sum_squares = part["counts"], part["sum_squares"]
            if part["sum_vectors"] is not None:
                import torch

                other.sum_vectors = torch.from_numpy(part["sum_vectors"])
            other.max_norm, other.max_running_median = part["max_norm"], part["max_running_median"]
            other._candidate_owners, other._candidate_bins = list(part["owners"]), list(part["bins"])
            other._candidate_names = dict(part["names"])
            other.candidates_overflowed = part["overflowed"]
            merged.merge(other)
        self.__dict__.update(merged.__dict__)
        return self
