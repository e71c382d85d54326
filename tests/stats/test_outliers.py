"""The exploding-feature check: planted outliers and NaNs in synthetic features."""
import numpy as np
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.stats.outliers import (
    BINS_PER_OCTAVE,
    OUTLIER_FACTOR,
    FeatureNormMonitor,
    NonFiniteFeatures,
    first_non_finite_row,
    histogram_median,
    bin_of,
)

DIM = 8


def _features(n_structures=200, atoms=10, seed=0):
    """Gaussian per-atom features (norm ~ sqrt(DIM)) and the structure index of each row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_structures * atoms, DIM))
    owners = np.repeat(np.arange(n_structures), atoms)
    return x, owners


def _plant(x, owners, rows, scale):
    x = x.copy()
    x[rows] *= scale
    return x


def _exact_share(x, outlier_mask):
    """1 - tr Sigma(without the outliers) / tr Sigma(all)."""
    return 1.0 - np.var(x[~outlier_mask], axis=0, ddof=1).sum() / np.var(x, axis=0, ddof=1).sum()


def _feed(monitor, x, owners, batch_rows):
    for start in range(0, len(x), batch_rows):
        monitor.update(torch.as_tensor(x[start : start + batch_rows]), owners[start : start + batch_rows])
    return monitor


def test_median_from_the_histogram_is_within_one_bin_of_the_exact_median():
    x, owners = _features()
    monitor = _feed(FeatureNormMonitor(DIM), x, owners, 97)
    exact = np.median(np.linalg.norm(x, axis=1))
    assert abs(np.log2(monitor.report().median_norm / exact)) <= 1.0 / BINS_PER_OCTAVE


def test_clean_features_have_no_outliers():
    x, owners = _features()
    report = _feed(FeatureNormMonitor(DIM), x, owners, 64).report()
    assert report.n_outlier_atoms == 0 and report.structures == {} and report.trace_share == 0.0
    assert report.listing_complete and not report.dominates_trace
    assert report.threshold >= OUTLIER_FACTOR * report.median_norm


def test_planted_outliers_are_counted_listed_by_structure_and_their_trace_share_is_exact():
    x, owners = _features()
    rows = [31, 35, 702, 1500, 1999]  # structures 3, 3, 70, 150, 199
    x = _plant(x, owners, rows, 1e4)
    norms = np.linalg.norm(x, axis=1)
    report = _feed(FeatureNormMonitor(DIM), x, owners, 64).report()
    expected = norms >= report.threshold
    assert expected.sum() == 5 and report.n_outlier_atoms == 5
    assert report.structures == {3: 2, 70: 1, 150: 1, 199: 1}
    assert report.n_structures == 4 and report.listing_complete
    assert report.max_norm == pytest.approx(norms.max())
    assert report.trace_share == pytest.approx(_exact_share(x, expected), rel=1e-9)
    assert report.dominates_trace  # five atoms 1e4x larger carry nearly all the variance
    listed = report.to_dict()["structures"]
    assert listed[0] == {"structure": 3, "outlier_atoms": 2}


def test_moderately_large_atoms_below_the_factor_are_not_outliers():
    x, owners = _features()
    x = _plant(x, owners, [10, 20], 20.0)  # 20x the typical norm: large, but below 100x the median
    report = _feed(FeatureNormMonitor(DIM), x, owners, 64).report()
    assert report.n_outlier_atoms == 0


def test_a_small_outlier_share_does_not_dominate():
    x, owners = _features(n_structures=2000)
    x = _plant(x, owners, [5], 110.0)  # one atom just above the threshold among 20,000
    report = _feed(FeatureNormMonitor(DIM), x, owners, 500).report()
    assert report.n_outlier_atoms == 1 and 0.0 < report.trace_share < 0.5 and not report.dominates_trace


def test_batching_and_merging_do_not_change_the_report():
    x, owners = _features()
    x = _plant(x, owners, [100, 1234], 5e3)
    whole = FeatureNormMonitor(DIM)
    whole.update(x, owners)
    streamed = _feed(FeatureNormMonitor(DIM), x, owners, 33)
    halves = _feed(FeatureNormMonitor(DIM), x[:1000], owners[:1000], 100)
    halves.merge(_feed(FeatureNormMonitor(DIM), x[1000:], owners[1000:], 100))
    reports = [m.report() for m in (whole, streamed, halves)]
    for r in reports[1:]:
        assert r.n_outlier_atoms == reports[0].n_outlier_atoms == 2
        assert r.structures == reports[0].structures == {10: 1, 123: 1}
        assert r.median_norm == reports[0].median_norm
        assert r.trace_share == pytest.approx(reports[0].trace_share, rel=1e-9)


def test_string_structure_ids_are_listed():
    x, owners = _features(n_structures=20)
    ids = np.array([f"C2H6O/{i}" for i in owners], dtype=object)
    x = _plant(x, owners, [55], 1e3)
    report = _feed(FeatureNormMonitor(DIM), x, ids, 50).report()
    assert report.structures == {"C2H6O/5": 1}


def test_listing_is_marked_incomplete_when_the_running_median_falls_far():
    # The first batches are all large (median ~1e3), then a flood of tiny features moves the median to
    # ~1e-3: atoms seen early at 1e3 were not candidates then, but are outliers at the end.
    big, owners_big = _features(n_structures=20, seed=1)
    small, owners_small = _features(n_structures=400, seed=2)
    x = np.concatenate([big * 1e3, small * 1e-3])
    owners = np.concatenate([owners_big, owners_small + 1000])
    report = _feed(FeatureNormMonitor(DIM), x, owners, 50).report()
    assert report.n_outlier_atoms == 200  # exact, from the histogram
    assert not report.listing_complete and not report.to_dict()["listing_complete"]


def test_non_finite_rows_are_found():
    x, _ = _features(n_structures=5)
    assert first_non_finite_row(x) is None
    x[17, 3] = np.nan
    x[30, 0] = np.inf
    assert first_non_finite_row(torch.as_tensor(x)) == 17
    assert first_non_finite_row(x) == 17
    # restricted to candidate rows: the first bad one among them, as an index of x
    assert first_non_finite_row(x, rows=[3, 30, 40]) == 30 and first_non_finite_row(x, rows=[3, 40]) is None


def test_monitor_refuses_non_finite_rows_before_changing_anything():
    x, owners = _features(n_structures=5)
    monitor = _feed(FeatureNormMonitor(DIM), x[:20], owners[:20], 20)
    before = (monitor.counts.copy(), monitor.sum_squares.copy(), monitor.sum_vectors.clone(), monitor.max_norm,
              list(monitor._candidate_owners))
    bad = x[20:].copy()
    bad[12, 5] = -np.inf
    bad[7, 1] = np.nan
    for batch in (bad, torch.as_tensor(bad, dtype=torch.float32)):
        with pytest.raises(NonFiniteFeatures, match="first at row 7") as caught:
            monitor.update(batch, owners[20:])
        assert caught.value.row == 7 and isinstance(caught.value, FastCSIError)
    assert np.array_equal(monitor.counts, before[0]) and np.array_equal(monitor.sum_squares, before[1])
    assert torch.equal(monitor.sum_vectors, before[2]) and monitor.max_norm == before[3]
    assert monitor._candidate_owners == before[4]


def test_monitor_keeps_a_finite_row_whose_norm_overflows():
    x, owners = _features(n_structures=5)
    x[4] = 1e200  # finite, but its squared norm is inf in float64
    monitor = FeatureNormMonitor(DIM)
    candidates = monitor.update(x, owners)
    assert monitor.n_atoms == len(x) and candidates[4] and monitor.max_norm == np.inf


def test_shape_mismatch_is_refused():
    monitor = FeatureNormMonitor(DIM)
    with pytest.raises(FastCSIError, match=r"shape \(n, 8\)"):
        monitor.update(np.zeros((3, 4)), np.arange(3))
    with pytest.raises(FastCSIError, match="owners"):
        monitor.update(np.zeros((3, DIM)), np.arange(2))
    with pytest.raises(FastCSIError, match="no features"):
        monitor.report()


def test_histogram_median_and_bins_on_known_values():
    bins = bin_of(np.array([0.0, 1.0, 2.0, 1e300]))
    assert bins[0] == 0 and bins[2] - bins[1] == BINS_PER_OCTAVE and bins[3] == 2047
    counts = np.bincount(bin_of(np.array([1.0, 1.0, 1.0])), minlength=2048)
    assert 1.0 <= histogram_median(counts) < 2 ** (1 / BINS_PER_OCTAVE)


def test_names_are_kept_for_the_listed_structures_only_and_travel_with_merge():
    x, owners = _features(n_structures=40)
    x = _plant(x, owners, [15, 215], 1e4)  # one atom of structure 1, one of structure 21
    names = {o: f"id-{o}" for o in range(40)}
    whole = FeatureNormMonitor(DIM)
    for start in range(0, len(x), 100):
        part = slice(start, start + 100)
        batch_owners = owners[part]
        whole.update(x[part], batch_owners, names={o: names[o] for o in set(batch_owners.tolist())})
    report = whole.report()
    assert sorted(report.structures) == [1, 21] and report.names == {1: "id-1", 21: "id-21"}
    # split over two monitors (two ranks) and merged: each one's names come along
    first, second = FeatureNormMonitor(DIM), FeatureNormMonitor(DIM)
    first.update(x[:200], owners[:200], names={o: names[o] for o in range(20)})
    second.update(x[200:], owners[200:], names={21: "id-21"})
    assert first.report().names == {1: "id-1"}  # only the candidates' owners are remembered
    merged = first.merge(second).report()
    assert sorted(merged.structures) == [1, 21] and merged.names == {1: "id-1", 21: "id-21"}
    # a monitor given no names lists its structures without any
    unnamed = FeatureNormMonitor(DIM)
    unnamed.update(x, owners)
    assert sorted(unnamed.report().structures) == [1, 21] and unnamed.report().names == {}
