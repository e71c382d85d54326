"""Mixtures of feature statistics: exact moments, CSI-optimal weights, clustering, bad inputs.

Tolerances (float64): analytic moments vs pooled data <= 1e-10; recovered weights of an exact
mixture <= 1e-4; permuted components give the permuted optimum <= 1e-5 (convex problem)."""
import numpy as np
import pytest

from fastcsi.errors import FastCSIError
from fastcsi.stats import (
    FeatureStats,
    cluster_components,
    csi,
    frechet_distance,
    merge_components,
    mixture_csi,
    mixture_stats,
    optimize_mixture,
)
from fastcsi.stats.mixture import _Objective


def _cloud(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    return (rng.standard_normal((n, d)) @ mixing) * scale + shift


def _stats(x, **meta):
    return FeatureStats(x.shape[1], metadata=meta).update(x)


def _gaussian(d, seed, shift):
    x = _cloud(400, d, seed, shift=shift, scale=1.0 + 0.3 * seed)
    return x.mean(0), np.cov(x, rowvar=False)


def test_analytic_moments_equal_pooled_stats():
    clouds = [_cloud(n, 5, seed, shift=seed) for n, seed in ((50, 0), (120, 1), (31, 2))]
    parts = [_stats(x) for x in clouds]
    pooled = _stats(np.concatenate(clouds))
    shares = [len(x) for x in clouds]
    exact = mixture_stats(parts, shares, ddof=0)
    np.testing.assert_allclose(exact.mean, pooled.mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(exact.covariance, pooled.covariance(ddof=0), rtol=0, atol=1e-10)
    # the same mixture given as (mean, covariance) pairs
    pairs = [(p.mean, p.covariance(ddof=0)) for p in parts]
    np.testing.assert_allclose(mixture_stats(pairs, shares, ddof=0).covariance, exact.covariance, atol=1e-12)
    # with the usual ddof=1 covariances the difference is O(1/n), not zero
    loose = mixture_stats(parts, shares).covariance
    assert 0 < np.abs(loose - pooled.covariance()).max() < 0.1 * np.abs(pooled.covariance()).max()


def test_mixture_csi_of_one_component_is_its_csi():
    a, b = _stats(_cloud(300, 4, 0)), _stats(_cloud(200, 4, 1, shift=0.5))
    assert mixture_csi([a], b, [1.0]) == pytest.approx(csi(a, b).csi, rel=1e-12)


def test_gradient_matches_finite_differences():
    comps = [_gaussian(6, s, shift=0.4 * s) for s in range(3)]
    target = _gaussian(6, 7, shift=0.2)
    means = np.stack([m for m, _ in comps])
    covs = np.stack([c for _, c in comps])
    for tau in (0.0, 0.3):
        objective = _Objective(means, covs, *target, tau)
        w = np.array([0.2, 0.5, 0.3])
        _, grad = objective(w)
        h = 1e-6
        numeric = [(objective(w + h * e, grad=False) - objective(w - h * e, grad=False)) / (2 * h) for e in np.eye(3)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
        # the objective is the Fréchet distance of the mixture (minus the entropy bonus)
        mix = mixture_stats(comps, w)
        entropy = -(w * np.log(w)).sum()
        fd = frechet_distance(mix.mean, mix.covariance, *target)
        assert objective(w, grad=False) == pytest.approx(fd - tau * entropy, rel=1e-9)
        assert objective.csi(w) == pytest.approx(fd, rel=1e-10)


def test_gradient_with_repeated_eigenvalues_matches_autograd():
    # isotropic components and target: M(w) has one eigenvalue of multiplicity d
    import torch

    d = 5
    comps = [(np.zeros(d), np.eye(d) * s) for s in (1.0, 2.0, 4.0)]
    target = (np.zeros(d), np.eye(d) * 3.0)
    objective = _Objective(np.stack([m for m, _ in comps]), np.stack([c for _, c in comps]), *target, 0.0)
    w = np.array([0.2, 0.5, 0.3])
    _, grad = objective(w)
    wt = torch.tensor(w, requires_grad=True)
    middle = 3.0 * torch.einsum("k,kij->ij", wt, torch.tensor(np.stack([c for _, c in comps])))
    value = (wt * torch.tensor([1.0, 2.0, 4.0])).sum() * d + 3.0 * d - 2 * torch.linalg.eigvalsh(middle).sqrt().sum()
    (expected,) = torch.autograd.grad(value, wt)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-10)


def test_optimum_not_above_best_single_and_below_baselines():
    comps = [_stats(_cloud(300, 6, s, shift=s * 0.7)) for s in range(4)]
    target = _stats(np.concatenate([_cloud(150, 6, 10, shift=0.0), _cloud(150, 6, 11, shift=2.1)]))
    result = optimize_mixture(comps, target)
    assert result.converged
    assert result.csi <= result.best_single_csi + 1e-12
    # the target lies between components: a real mixture beats every single one
    assert result.csi < 0.9 * result.best_single_csi
    for baseline in result.baselines.values():
        assert result.csi <= baseline["csi"] + 1e-12
    assert set(result.baselines) == {"balanced", "temperature:2"}
    assert result.weights.min() >= 0 and result.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert result.single_csi[result.best_single] == pytest.approx(csi(comps[result.best_single], target).csi)


def test_one_component_returns_that_component():
    a, target = _stats(_cloud(200, 3, 0)), _stats(_cloud(200, 3, 1, shift=1.0))
    result = optimize_mixture([a], target)
    assert result.weights.tolist() == [1.0]
    assert result.csi == pytest.approx(csi(a, target).csi, rel=1e-12)


def test_order_independence():
    comps = [_stats(_cloud(250, 5, s, shift=0.5 * s, scale=1 + 0.2 * s)) for s in range(4)]
    target = _stats(_cloud(300, 5, 20, shift=0.8))
    forward = optimize_mixture(comps, target, tol=1e-11, max_iter=2000)
    order = [2, 0, 3, 1]
    permuted = optimize_mixture([comps[i] for i in order], target, tol=1e-11, max_iter=2000)
    np.testing.assert_allclose(permuted.weights, forward.weights[order], atol=1e-5)
    assert permuted.csi == pytest.approx(forward.csi, rel=1e-9)


def test_exact_mixture_of_two_components_recovers_weights():
    comps = [_gaussian(5, s, shift=(-1.0, 1.5, 0.3)[s]) for s in range(3)]
    truth = np.array([0.3, 0.0, 0.7])
    mix = mixture_stats(comps, truth)
    result = optimize_mixture(comps, (mix.mean, mix.covariance), max_iter=2000, tol=1e-12)
    np.testing.assert_allclose(result.weights, truth, atol=1e-4)
    assert result.csi < 1e-6
    # pairs carry no counts: no temperature baseline unless sizes are given
    assert set(result.baselines) == {"balanced"}
    with_sizes = optimize_mixture(comps, (mix.mean, mix.covariance), sizes=[1, 4, 9], temperature=2)
    np.testing.assert_allclose(with_sizes.baselines["temperature:2"]["weights"], np.array([1, 2, 3]) / 6)


def test_diversity_and_floor():
    comps = [_gaussian(4, s, shift=3.0 * s) for s in range(3)]
    target = comps[0]
    plain = optimize_mixture(comps, target)
    assert plain.weights[0] > 0.999
    diverse = optimize_mixture(comps, target, diversity=50.0)
    assert diverse.entropy > plain.entropy + 0.1
    assert diverse.csi >= plain.csi  # diversity is paid for in CSI
    floored = optimize_mixture(comps, target, floor=0.1)
    assert floored.weights.min() >= 0.1 - 1e-12
    assert floored.weights[0] == pytest.approx(0.8, abs=1e-6)


def test_bad_inputs_raise():
    good = _stats(_cloud(50, 4, 0))
    target = _stats(_cloud(50, 4, 1))
    with pytest.raises(FastCSIError, match="dimension"):
        optimize_mixture([good, _stats(_cloud(50, 3, 2))], target)
    with pytest.raises(FastCSIError, match="dimension"):
        mixture_stats([good, _stats(_cloud(50, 5, 2))], [0.5, 0.5])
    with pytest.raises(FastCSIError, match="extractor"):
        optimize_mixture([_stats(_cloud(50, 4, 0), extractor="a")], _stats(_cloud(50, 4, 1), extractor="b"))
    with pytest.raises(FastCSIError, match="0 sample"):
        optimize_mixture([good, FeatureStats(4)], target)
    with pytest.raises(FastCSIError, match="NaN"):
        optimize_mixture([good, (np.full(4, np.nan), np.eye(4))], target)
    with pytest.raises(FastCSIError, match="TAU"):
        optimize_mixture([good], target, diversity=-0.1)
    with pytest.raises(FastCSIError, match="floor"):
        optimize_mixture([good, good], target, floor=0.6)
    with pytest.raises(FastCSIError, match="at least one"):
        optimize_mixture([], target)
    with pytest.raises(FastCSIError, match="weights"):
        mixture_stats([good, good], [1.0, -1.0])
    with pytest.raises(FastCSIError, match="2 mixture weights"):
        mixture_stats([good], [0.5, 0.5])


def test_cluster_and_merge_components():
    centres = [0.0, 5.0, 10.0]
    parts = [_stats(_cloud(40 + i, 3, i, shift=centres[i % 3])) for i in range(9)]
    labels = cluster_components(np.stack([p.mean for p in parts]), [p.count for p in parts], k=3, seed=0)
    assert len(set(labels.tolist())) == 3
    for i in range(9):  # members of one cluster share a centre
        assert all(labels[j] == labels[i] for j in range(9) if j % 3 == i % 3)
    merged = merge_components(parts, labels)
    assert sum(m.count for m in merged) == sum(p.count for p in parts)
    whole = FeatureStats(3)
    for p in parts:
        whole.merge(p)
    np.testing.assert_allclose(mixture_stats(merged, [m.count for m in merged], ddof=0).covariance,
                               whole.covariance(ddof=0), atol=1e-9)
    assert cluster_components(np.zeros((2, 3)), [1, 1], k=5).tolist() == [0, 1]
    again = cluster_components(np.stack([p.mean for p in parts]), [p.count for p in parts], k=3, seed=0)
    assert again.tolist() == labels.tolist()


def test_ceiling_caps_the_shares():
    comps = [_gaussian(4, s, shift=3.0 * s) for s in range(3)]
    free = optimize_mixture(comps, comps[0])
    capped = optimize_mixture(comps, comps[0], ceiling=[0.6, 1.0, 1.0])
    assert free.weights[0] > 0.999
    assert capped.weights[0] == pytest.approx(0.6, abs=1e-9)
    assert capped.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert capped.csi > free.csi
    with pytest.raises(FastCSIError, match="ceiling"):
        optimize_mixture(comps, comps[0], ceiling=[0.2, 0.2, 0.2])
