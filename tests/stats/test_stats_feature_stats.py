"""FeatureStats: streaming equals whole, shards merge exactly, groups, persistence, CSI."""
import json
import zipfile

import numpy as np
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.stats import CSIResult, FeatureStats, check_comparable, csi, load_stats


def _features(n, d, seed, offset=1e3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + offset
    labels = rng.choice([1, 6, 8], size=n, p=[0.5, 0.3, 0.2])
    return x.astype(np.float32), labels


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_streaming_chunks_equal_np_cov_on_concatenation():
    x, _ = _features(5000, 16, seed=0)
    stats = FeatureStats(16)
    for start in range(0, 5000, 777):  # uneven chunks, mixed input types
        chunk = x[start : start + 777]
        stats.update(torch.from_numpy(chunk) if start % 2 else chunk)
    reference = np.cov(x.astype(np.float64), rowvar=False)
    assert stats.count == 5000
    assert _rel(stats.covariance(), reference) <= 1e-12
    assert _rel(stats.covariance(ddof=0), reference * 4999 / 5000) <= 1e-12
    assert np.abs(stats.mean - x.astype(np.float64).mean(0)).max() <= 1e-12 * 1e3
    assert stats.scatter.shape == (16, 16)


def test_shard_independence_and_groups():
    x, z = _features(3000, 8, seed=1)
    whole = FeatureStats(8, track_groups=True).update(x, groups=z)
    shards = [FeatureStats(8, track_groups=True).update(x[s : s + 1000], groups=z[s : s + 1000]) for s in (0, 1000, 2000)]
    merged = shards[2].merge(shards[0]).merge(shards[1])  # order must not matter
    assert merged.count == whole.count == 3000
    assert _rel(merged.covariance(), whole.covariance()) <= 1e-12
    assert sorted(merged.groups) == [1, 6, 8]
    for label, group in whole.groups.items():
        exact = x[z == label].astype(np.float64)
        assert group.count == len(exact)
        assert _rel(group.covariance(), np.cov(exact, rowvar=False)) <= 1e-12
        assert _rel(merged.groups[label].covariance(), group.covariance()) <= 1e-12
    assert sum(g.count for g in whole.groups.values()) == whole.count


def test_update_validation():
    stats = FeatureStats(4)
    with pytest.raises(FastCSIError, match=r"shape \(n, 4\)"):
        stats.update(np.zeros((3, 5)))
    bad = np.ones((6, 4))
    bad[4, 2] = np.nan
    with pytest.raises(FastCSIError, match="row 4"):
        stats.update(bad, where="file.pt")
    assert stats.count == 0  # nothing was added
    stats.update(np.zeros((0, 4)))
    assert stats.count == 0
    grouped = FeatureStats(4, track_groups=True)
    with pytest.raises(FastCSIError, match="row 4"):
        grouped.update(bad, groups=np.array([1, 1, 1, 2, 2, 2]))
    assert grouped.count == 0 and not grouped.groups
    with pytest.raises(FastCSIError, match="needs groups"):
        grouped.update(np.ones((3, 4)))
    with pytest.raises(FastCSIError, match="integer labels"):
        grouped.update(np.ones((3, 4)), groups=np.ones(2, dtype=int))
    with pytest.raises(FastCSIError):
        FeatureStats(0)


def test_covariance_undefined_for_zero_or_one_sample():
    stats = FeatureStats(3)
    with pytest.raises(FastCSIError, match="undefined"):
        stats.covariance()
    stats.update(np.ones((1, 3)))
    with pytest.raises(FastCSIError, match="undefined"):
        stats.covariance()
    other = FeatureStats(3).update(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(FastCSIError, match="at least 2"):
        csi(stats, other)
    with pytest.raises(FastCSIError, match="at least 2"):
        csi(FeatureStats(3), other)


def test_save_load_roundtrip(tmp_path):
    x, z = _features(500, 6, seed=2)
    stats = FeatureStats(6, {"extractor": "gemnet-oc@abc", "layer": 3, "seed": 0}, track_groups=True)
    stats.update(x, groups=z)
    path = stats.save(tmp_path / "sub" / "a.npz")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = load_stats(path)
    assert loaded.count == 500 and loaded.dim == 6 and loaded.track_groups
    assert loaded.metadata == {"extractor": "gemnet-oc@abc", "layer": 3, "seed": 0}
    assert np.array_equal(loaded.mean, stats.mean) and np.array_equal(loaded.scatter, stats.scatter)
    assert {k: g.count for k, g in loaded.groups.items()} == {k: g.count for k, g in stats.groups.items()}
    assert loaded.saved_versions["fastcsi"]
    with np.load(path) as raw:
        assert str(raw["dtype"]) == "float64"
        assert json.loads(str(raw["versions_json"]))["numpy"] == np.__version__
    assert abs(csi(stats, loaded).csi) <= 1e-10 * np.trace(stats.covariance())


def test_load_refuses_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FastCSIError, match="no such stats file"):
        load_stats(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(FastCSIError, match="garbage.npz"):
        load_stats(garbage)
    good = FeatureStats(3).update(np.random.default_rng(1).standard_normal((5, 3))).save(tmp_path / "g.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FastCSIError, match="truncated.npz"):
        load_stats(truncated)
    missing_field = tmp_path / "partial.npz"
    with np.load(good) as raw:
        np.savez(missing_field, **{k: raw[k] for k in raw.files if k != "scatter"})
    with pytest.raises(FastCSIError, match="partial.npz.*corrupt"):
        load_stats(missing_field)
    assert zipfile.is_zipfile(good)


def test_check_comparable_refuses_other_feature_spaces(tmp_path):
    rng = np.random.default_rng(3)
    a = FeatureStats(4, {"extractor": "m1"}).update(rng.standard_normal((10, 4)))
    b = FeatureStats(4, {"extractor": "m2"}).update(rng.standard_normal((10, 4)))
    c = FeatureStats(5).update(rng.standard_normal((10, 5)))
    with pytest.raises(FastCSIError, match="extractor"):
        check_comparable(a, b)
    with pytest.raises(FastCSIError, match="dimension 4.*5"):
        csi(a, c)
    a_path = a.save(tmp_path / "a.npz")
    with pytest.raises(FastCSIError, match="a.npz"):
        load_stats(a_path).merge(b)
    check_comparable(a, FeatureStats(4).update(rng.standard_normal((3, 4))))  # unknown extractor is fine


def test_metadata_merge_keeps_conflicts_and_sums_counts():
    rng = np.random.default_rng(4)
    a = FeatureStats(2, {"n_structures": 10, "seed": 1, "layer": 2}).update(rng.standard_normal((5, 2)))
    b = FeatureStats(2, {"n_structures": 7, "seed": 2, "layer": 2}).update(rng.standard_normal((5, 2)))
    a.merge(b)
    assert a.metadata["n_structures"] == 17
    assert a.metadata["layer"] == 2
    assert a.metadata["seeds"] == [1, 2] and "seed" not in a.metadata
    assert "merge_conflicts" not in a.metadata


def test_metadata_merge_adds_equal_counts_of_disjoint_shards():
    # Two shards of the same size: their equal counts still add up (they used to stay at one shard's).
    rng = np.random.default_rng(6)
    meta = {"n_structures": 40, "n_atoms": 360, "seed": 0, "layer": 2}
    a = FeatureStats(2, dict(meta)).update(rng.standard_normal((5, 2)))
    b = FeatureStats(2, {**meta, "seed": 1}).update(rng.standard_normal((5, 2)))
    c = FeatureStats(2, dict(meta)).update(rng.standard_normal((5, 2)))
    a.merge(b).merge(c)
    assert a.metadata["n_structures"] == 120 and a.metadata["n_atoms"] == 1080
    assert a.metadata["seeds"] == [0, 1] and "seed" not in a.metadata


def test_merge_refuses_mixing_grouped_and_ungrouped():
    rng = np.random.default_rng(5)
    grouped = FeatureStats(2, track_groups=True).update(rng.standard_normal((5, 2)), groups=np.ones(5, dtype=int))
    with pytest.raises(FastCSIError, match="groups"):
        grouped.merge(FeatureStats(2).update(rng.standard_normal((5, 2))))


def test_csi_terms_and_per_group_breakdown():
    x, z = _features(2000, 5, seed=6, offset=0.0)
    y, w = _features(1500, 5, seed=7, offset=0.5)
    w[:10] = 9  # an element present only in B
    a = FeatureStats(5, track_groups=True).update(x, groups=z)
    b = FeatureStats(5, track_groups=True).update(y, groups=w)
    result = csi(a, b, per_group=True)
    assert isinstance(result, CSIResult)
    assert result.csi == pytest.approx(result.mean_term + result.trace_term, rel=1e-15)
    assert result.csi > 0 and result.n_a == 2000 and result.n_b == 1500
    assert result.mean_term == pytest.approx(float(((a.mean - b.mean) ** 2).sum()), rel=1e-12)
    assert sorted(result.per_group) == [1, 6, 8] and 9 in result.skipped_groups
    assert result.per_group[6].n_a == a.groups[6].count
    assert csi(b, a).csi == pytest.approx(result.csi, rel=1e-10)
    assert abs(csi(a, a).csi) <= 1e-10 * np.trace(a.covariance())
    json.dumps(result.to_dict())
    with pytest.raises(FastCSIError, match="no per-element groups"):
        csi(FeatureStats(5).update(x), b, per_group=True)
