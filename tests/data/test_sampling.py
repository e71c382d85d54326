"""Sampling: determinism per seed, balanced quota redistribution, exact counts, mixing, budget."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastcsi.data import Budget, mixture_indices, temperature_mix
from fastcsi.data.sampling import balanced_quotas, sample_from_keys
from fastcsi.errors import FastCSIError

# A long tail: one class of 1000, a few mid-size, many tiny ones.
KEYS = np.array(["big"] * 1000 + ["mid1"] * 50 + ["mid2"] * 30 + [f"tiny{k}" for k in range(20) for _ in range(2)])


class _Keys:
    def __init__(self, keys):
        self.keys = np.asarray(keys)

    def __len__(self):
        return len(self.keys)

    def class_keys(self):
        return self.keys


@pytest.mark.parametrize("strategy", ["random", "balanced"])
def test_deterministic_per_seed_sorted_exact(strategy):
    a = sample_from_keys(KEYS, 100, strategy, seed=3)
    b = sample_from_keys(KEYS, 100, strategy, seed=3)
    c = sample_from_keys(KEYS, 100, strategy, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.dtype == np.int64


def test_balanced_redistributes_leftover_quota():
    chosen = sample_from_keys(KEYS, 100, "balanced", seed=0)
    counts = {k: int(v) for k, v in zip(*np.unique(KEYS[chosen], return_counts=True))}
    # 23 classes -> 4 each; the 20 tiny classes hold only 2, so 40 are drawn from them and the
    # other 60 are split between big, mid1, mid2 (20 each), never exceeding what a class holds.
    assert all(counts[f"tiny{k}"] == 2 for k in range(20))
    assert counts["big"] == counts["mid1"] == counts["mid2"] == 20
    random = sample_from_keys(KEYS, 100, "random", seed=0)
    assert (KEYS[random] == "big").sum() > 60  # random follows the head of the distribution


def test_repeated_redistribution():
    # sizes 1, 3, 10, 100 with n=40: 10 each -> 1 and 3 run out (9 + 7 left over), 10 runs out next.
    quotas = balanced_quotas([1, 3, 10, 100], 40, np.random.default_rng(0))
    assert quotas.tolist() == [1, 3, 10, 26]


def test_all_and_oversized():
    assert np.array_equal(sample_from_keys(KEYS, None), np.arange(len(KEYS)))
    assert np.array_equal(sample_from_keys(KEYS, 10**6, "balanced"), np.arange(len(KEYS)))
    assert np.array_equal(sample_from_keys(KEYS, 5, "all"), np.arange(len(KEYS)))
    with pytest.raises(FastCSIError):
        sample_from_keys(KEYS, 5, "weird")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(0, 300), st.integers(0, 5))
def test_quota_properties(sizes, n, seed):
    quotas = balanced_quotas(sizes, n, np.random.default_rng(seed))
    sizes = np.array(sizes)
    assert quotas.sum() == min(n, sizes.sum()) and (quotas <= sizes).all() and (quotas >= 0).all()
    unsaturated = quotas[quotas < sizes]
    if unsaturated.size:  # classes not exhausted get equal quotas (within one); exhausted ones got no more
        assert unsaturated.max() - unsaturated.min() <= 1
        assert (quotas[quotas == sizes] <= unsaturated.max() + 1).all()  # +1: a remainder may fill a class


def test_temperature_mix_and_mixture():
    p = temperature_mix([100, 10000], T=2.0)
    assert p == pytest.approx(np.array([10, 100]) / 110)
    assert temperature_mix([100, 10000], T=1.0) == pytest.approx(np.array([100, 10000]) / 10100)
    datasets = [_Keys(["a"] * 10), _Keys(["b"] * 1000)]
    pairs = mixture_indices(datasets, 100, weights=[0.5, 0.5], seed=1)
    counts = np.bincount(pairs[:, 0], minlength=2)
    assert counts.tolist() == [10, 90]  # the small dataset runs out; its share moves on
    assert np.array_equal(pairs, mixture_indices(datasets, 100, weights=[0.5, 0.5], seed=1))
    assert len(np.unique(pairs[pairs[:, 0] == 1, 1])) == 90


def test_budget():
    b = Budget(n_samples=1000, epochs=5)
    assert b.total == 5000 and b.steps_per_epoch(32) == 32 and b.steps(32) == 160
    assert Budget.from_total(5000, 2000).epochs == 2.5
    with pytest.raises(FastCSIError):
        Budget(0, 1)
