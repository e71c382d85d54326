"""Mixtures of feature statistics and their CSI-optimal weights. Pure numerics (float64).

A sample that draws a share w_k of its feature samples (atoms, for flat features) from component k
follows the mixture distribution, whose first two moments need only each component's mean mu_k and
covariance S_k:

    mu(w) = sum_k w_k mu_k,      S(w) = sum_k w_k (S_k + mu_k mu_k^T) - mu(w) mu(w)^T.

So CSI(w) = FD(N(mu(w), S(w)), N(mu_t, S_t)) costs no pass through any model, and
:func:`optimize_mixture` minimises it over the simplex. The problem is convex: expanding the FD,
the |mu(w)|^2 of the mean term cancels the one in tr S(w), leaving a linear function of w plus
-2 tr (S_t^1/2 S(w) S_t^1/2)^1/2, which is convex because S(w) is matrix-concave in w and
tr (A^1/2 X A^1/2)^1/2 is concave and monotone in X >= 0. The entropy bonus keeps it convex, so the
optimum is global and does not depend on the order of the components.

Gradient: the same symmetric eigen formulation as :mod:`fastcsi.stats.frechet`. S_t is factored
once (Cholesky S_t = L L^T, or S_t^1/2 by eigh when S_t is singular), then every evaluation takes
the eigenvalues of the symmetric PSD matrix M(w) = L^T S(w) L (same spectrum as S_t^1/2 S(w) S_t^1/2;
``torch.linalg.eigh`` in float64). Only eigenvalues enter, so the gradient of sum_i sqrt(lambda_i) with respect to M
is V diag(1 / (2 sqrt lambda)) V^T, written out analytically (it is what autograd through
``torch.linalg.eigvalsh`` returns, at a fraction of the cost for the small matrices here): it has no
1/(lambda_i - lambda_j) factors, and repeated eigenvalues are harmless (the result is the same for
any orthonormal basis of an eigenspace). Inside the optimiser the eigenvalues are clamped at
``eps = 1e-12 * tr S_t`` before the square root, so zero eigenvalues (singular mixtures) give a
finite gradient; the reported CSI clips at 0 exactly as ``frechet_distance`` does.

Optimiser: spectral projected gradient (Barzilai-Borwein steps, non-monotone Armijo backtracking
along the projection arc, Euclidean projection onto {floor <= w (<= ceiling), sum w = 1}), iterated
from the uniform mixture (from a vertex, where the root-trace term is steepest, steps crawl) and
stopped when the Frank-Wolfe gap (an upper bound on objective - optimum, the problem being convex)
is below ``tol`` times the objective. The best point seen, the best single component included, is
returned, so with no diversity bonus the result's CSI is never above the best single component's.

Memory O(K d^2) for K components of dimension d; time O(K d^3) once, then O(K d^2 + d^3) per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastcsi.errors import FastCSIError

__all__ = [
    "MixtureMoments",
    "MixtureResult",
    "cluster_components",
    "merge_components",
    "mixture_csi",
    "mixture_stats",
    "optimize_mixture",
]


@dataclass
class MixtureMoments:
    """Mean (d,) and covariance (d, d) of the mixture with the given ``weights``."""

    mean: np.ndarray
    covariance: np.ndarray
    weights: np.ndarray


@dataclass
class MixtureResult:
    """The CSI-optimal mixture and the comparisons that say whether mixing paid off.

    ``csi`` is the Fréchet distance of the optimal mixture (eigenvalues clipped at 0 as in
    :func:`fastcsi.stats.frechet_distance`, not the optimiser's clamped objective); ``objective`` is
    csi - diversity * entropy(weights). ``single_csi[k]`` is the CSI of component k alone;
    ``baselines`` maps a name to {"weights", "csi"} (by default ``balanced`` and ``temperature:T``)."""

    weights: np.ndarray
    csi: float
    objective: float
    iterations: int
    converged: bool
    single_csi: np.ndarray
    best_single: int
    baselines: dict = field(default_factory=dict)
    diversity: float = 0.0
    floor: float = 0.0
    names: list | None = None
    gap: float = 0.0  # Frank-Wolfe gap at the end: objective - optimum <= gap

    @property
    def best_single_csi(self) -> float:
        return float(self.single_csi[self.best_single])

    @property
    def entropy(self) -> float:
        w = self.weights[self.weights > 0]
        return float(-(w * np.log(w)).sum())

    def to_dict(self) -> dict:
        names = self.names or [str(k) for k in range(len(self.weights))]
        return {
            "weights": {n: float(w) for n, w in zip(names, self.weights)},
            "csi": self.csi,
            "objective": self.objective,
            "entropy": self.entropy,
            "iterations": self.iterations,
            "converged": self.converged,
            "gap": self.gap,
            "diversity": self.diversity,
            "floor": self.floor,
            "best_single": {"component": names[self.best_single], "csi": self.best_single_csi},
            "single_csi": {n: float(c) for n, c in zip(names, self.single_csi)},
            "baselines": {
                k: {"weights": {n: float(w) for n, w in zip(names, v["weights"])}, "csi": float(v["csi"])}
                for k, v in self.baselines.items()
            },
        }


# ---------------------------------------------------------------------------------------- inputs
def _describe(index: int, names) -> str:
    return f"component {names[index]!r}" if names else f"component {index}"


def _moments(item, what: str, ddof: int):
    """(count, mean, covariance, metadata) of a FeatureStats or a (mean, covariance) pair."""
    if hasattr(item, "scatter") and hasattr(item, "count"):  # FeatureStats
        count = int(item.count)
        if count <= ddof:
            raise FastCSIError(
                f"{what} holds {count} sample(s); a mixture component needs more than {ddof} (a covariance)"
            )
        mean, cov, meta = item.mean, item.covariance(ddof), dict(getattr(item, "metadata", {}) or {})
    else:
        try:
            mean, cov = item
        except (TypeError, ValueError):
            raise FastCSIError(f"{what}: give a FeatureStats or a (mean, covariance) pair") from None
        count, meta = None, {}
    try:
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise FastCSIError(f"{what}: statistics are not numeric ({exc})") from None
    d = mean.shape[0]
    if mean.ndim != 1 or d == 0 or cov.shape != (d, d):
        raise FastCSIError(f"{what}: mean of shape {mean.shape} and covariance of shape {cov.shape} do not match")
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        raise FastCSIError(f"{what}: statistics contain NaN or inf")
    return count, mean, (cov + cov.T) * 0.5, meta


def _gather(components, ddof: int, names=None, target=None):
    """Validated (counts, means (K, d), covariances (K, d, d)) of the components (and target)."""
    from fastcsi.stats.feature_stats import FINGERPRINT_KEYS

    components = list(components)
    if not components:
        raise FastCSIError("a mixture needs at least one component")
    if names is not None and len(names) != len(components):
        raise FastCSIError(f"{len(names)} names for {len(components)} mixture components")
    parts = [_moments(c, _describe(k, names), ddof) for k, c in enumerate(components)]
    if target is not None:
        parts.append(_moments(target, "the target", ddof))
    dim = parts[0][1].shape[0]
    labels = [_describe(k, names) for k in range(len(components))] + (["the target"] if target is not None else [])
    for label, (_, mean, _, meta) in zip(labels, parts):
        if mean.shape[0] != dim:
            raise FastCSIError(
                f"{label} has feature dimension {mean.shape[0]} but {labels[0]} has {dim}; they are not comparable"
            )
    for key in FINGERPRINT_KEYS:  # different extractors: same dimension, different feature spaces
        seen = {}
        for label, (_, _, _, meta) in zip(labels, parts):
            if key in meta:
                seen.setdefault(str(meta[key]), label)
        if len(seen) > 1:
            (a, la), (b, lb) = list(seen.items())[:2]
            raise FastCSIError(f"{la} and {lb} were computed with different {key} ({a!r} vs {b!r}); they are not comparable")
    counts = [p[0] for p in parts]
    means = np.stack([p[1] for p in parts])
    covs = np.stack([p[2] for p in parts])
    return counts, means, covs


def _check_weights(weights, k: int) -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise FastCSIError("mixture weights must be numbers") from None
    if w.shape != (k,):
        raise FastCSIError(f"{w.size} mixture weights for {k} components")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise FastCSIError("mixture weights must be finite, non-negative and not all zero")
    return w / w.sum()


def _mix(means, covs, w):
    mean = w @ means
    second = np.einsum("k,kij->ij", w, covs + means[:, :, None] * means[:, None, :])
    cov = second - np.outer(mean, mean)
    return mean, (cov + cov.T) * 0.5


# ---------------------------------------------------------------------------------------- public API
def mixture_stats(components, weights, ddof: int = 1) -> MixtureMoments:
    """Mean and covariance of the mixture of ``components`` (FeatureStats or (mean, covariance)
    pairs) with shares ``weights`` (normalised to sum 1). With weights n_k / sum n and ``ddof=0``
    this equals the pooled statistics of the concatenated samples exactly."""
    _, means, covs = _gather(components, ddof)
    w = _check_weights(weights, len(means))
    mean, cov = _mix(means, covs, w)
    return MixtureMoments(mean, cov, w)


def mixture_csi(components, target, weights, ddof: int = 1) -> float:
    """CSI (Fréchet distance) between the mixture of ``components`` with ``weights`` and ``target``
    (the symmetric eigen formulation of :mod:`fastcsi.stats.frechet`, eigenvalues clipped at 0)."""
    _, means, covs = _gather(components, ddof, target=target)
    w = _check_weights(weights, len(means) - 1)
    return _Objective(means[:-1], covs[:-1], means[-1], covs[-1], 0.0).csi(w)


class _Objective:
    """CSI(w) - tau * H(w) and its gradient, in float64 (see the module docstring)."""

    def __init__(self, means, covs, target_mean, target_cov, tau: float):
        import torch

        # The many small eigenproblems go through torch's LAPACK, which keeps to torch's thread
        # budget: numpy's OpenBLAS back-transformation spins up its own threads for each small call,
        # which on a loaded machine costs far more than the eigenproblem.
        self._eigvalsh = lambda m: torch.linalg.eigvalsh(torch.from_numpy(m)).numpy()
        self._eigh = lambda m: tuple(t.numpy() for t in torch.linalg.eigh(torch.from_numpy(m)))
        try:  # Cholesky S_t = L L^T; M(w) = L^T S(w) L has the spectrum of S_t^1/2 S(w) S_t^1/2
            factor = np.linalg.cholesky(target_cov)
        except np.linalg.LinAlgError:  # singular target: symmetric root by eigh, clipped at 0
            vals, vecs = np.linalg.eigh(target_cov)
            factor = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
        second = covs + means[:, :, None] * means[:, None, :]
        # M(w) = sum_k w_k F^T P_k F - (F^T mu(w))(F^T mu(w))^T: every P_k is reduced once.
        k, d = means.shape
        self.reduced_second = (factor.T @ second @ factor).reshape(k, d * d)  # batched: K (d x d) products
        self.reduced_means = means @ factor
        # |mu(w)|^2 cancels between the mean term and tr S(w): what is left is linear in w ...
        self.linear = np.einsum("kii->k", second) - 2.0 * means @ target_mean
        self.const = float(target_mean @ target_mean + np.trace(target_cov))
        self.eps = 1e-12 * max(float(np.trace(target_cov)), 1e-300)
        self.tau = float(tau)
        self.d = d

    def _middle(self, w):
        m_tilde = w @ self.reduced_means
        middle = (w @ self.reduced_second).reshape(self.d, self.d) - np.outer(m_tilde, m_tilde)
        return (middle + middle.T) * 0.5, m_tilde

    def _entropy_terms(self, w):
        if not self.tau:
            return 0.0, 0.0
        logs = np.log(np.maximum(w, 1e-300))
        return self.tau * float(w @ logs), self.tau * (logs + 1.0)

    def __call__(self, w, grad: bool = True):
        """Objective (eigenvalues clamped at eps) and, with ``grad``, its gradient."""
        w = np.asarray(w, dtype=np.float64)
        middle, m_tilde = self._middle(w)
        bonus, bonus_grad = self._entropy_terms(w)
        if not grad:
            eig = self._eigvalsh(middle)
            return float(w @ self.linear + self.const - 2.0 * np.sqrt(np.maximum(eig, self.eps)).sum() + bonus)
        eig, vecs = self._eigh(middle)
        value = float(w @ self.linear + self.const - 2.0 * np.sqrt(np.maximum(eig, self.eps)).sum() + bonus)
        # d/dM sum_i sqrt(lambda_i) = V diag(1 / (2 sqrt lambda)) V^T (0 where the clamp binds): a
        # spectral function of M, the same for any basis of a repeated eigenvalue's eigenspace.
        scale = np.where(eig > self.eps, 0.5 / np.sqrt(np.maximum(eig, self.eps)), 0.0)
        h = (vecs * scale) @ vecs.T
        # dM/dw_k = P~_k - m~_k m~^T - m~ m~_k^T
        root_grad = self.reduced_second @ h.reshape(-1) - 2.0 * self.reduced_means @ (h @ m_tilde)
        return value, self.linear - 2.0 * root_grad + bonus_grad

    def csi(self, w) -> float:
        """The Fréchet distance itself (eigenvalues clipped at 0, as in fastcsi.stats.frechet)."""
        middle, _ = self._middle(np.asarray(w, dtype=np.float64))
        eig = self._eigvalsh(middle)
        return float(np.asarray(w) @ self.linear + self.const - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())


_MEMORY = 10  # objective values the non-monotone line search compares against


def _project(v: np.ndarray, lower: float, upper: np.ndarray | None = None) -> np.ndarray:
    """Euclidean projection onto {lower <= w (<= upper), sum w = 1}: sort-based without upper bounds
    (Duchi et al. 2008), else bisection on the shift theta of clip(v - theta, lower, upper)."""
    if upper is not None:
        lo, hi = float(np.min(v - upper)), float(np.max(v - lower))
        for _ in range(200):
            theta = 0.5 * (lo + hi)
            if np.clip(v - theta, lower, upper).sum() > 1.0:
                lo = theta
            else:
                hi = theta
            if hi - lo <= 1e-17 * max(1.0, abs(theta)):
                break
        w = np.clip(v - 0.5 * (lo + hi), lower, upper)
        free = (w > lower) & (w < upper)  # put the bisection's last roundoff where no bound binds
        if free.any():
            w[free] += (1.0 - w.sum()) / free.sum()
        return np.clip(w, lower, upper)
    k = v.size
    total = 1.0 - k * lower
    if total <= 0:  # the floors use up the whole simplex
        return np.full(k, 1.0 / k)
    u = v - lower
    s = np.sort(u)[::-1]
    cumulative = np.cumsum(s) - total
    rho = np.nonzero(s - cumulative / np.arange(1, k + 1) > 0)[0][-1]
    theta = cumulative[rho] / (rho + 1.0)
    return lower + np.maximum(u - theta, 0.0)


def optimize_mixture(
    components,
    target,
    diversity: float = 0.0,
    floor: float = 0.0,
    *,
    names=None,
    sizes=None,
    temperature: float = 2.0,
    baselines: dict | None = None,
    ddof: int = 1,
    max_iter: int = 2000,
    tol: float = 1e-8,
    ceiling=None,
    initial=None,
) -> MixtureResult:
    """The weights on the simplex that minimise CSI(mixture(w), target) - diversity * H(w), with
    every share >= ``floor`` (H the entropy in nats).

    ``components`` and ``target``: FeatureStats (compared only when their extractor fingerprints
    agree) or (mean, covariance) pairs of one dimension. ``baselines`` (name -> weights) are
    evaluated for comparison; by default ``balanced`` (equal shares) and ``temperature:T``
    (shares ∝ size^(1/T), sizes = ``sizes`` or the component counts; skipped without either).
    ``ceiling`` (K,): optional upper bounds on the shares (what a component can supply); the
    guarantee "not above the best single component" then holds only among feasible points.
    ``initial``: an extra starting point (a warm start), besides the best single component and the
    uniform mixture."""
    try:
        diversity, floor = float(diversity), float(floor)
    except (TypeError, ValueError):
        raise FastCSIError("diversity and floor must be numbers") from None
    if not np.isfinite(diversity) or diversity < 0:
        raise FastCSIError(f"--diversity {diversity}: the entropy bonus TAU must be >= 0")
    all_counts, all_means, all_covs = _gather(components, ddof, names=names, target=target)
    counts = all_counts[:-1]
    means, covs = all_means[:-1], all_covs[:-1]
    target_mean, target_cov = all_means[-1], all_covs[-1]
    k = len(means)
    if not np.isfinite(floor) or floor < 0 or floor * k > 1.0 + 1e-12:
        raise FastCSIError(f"floor {floor}: every share must be >= 0 and the {k} floors must sum to at most 1")
    if max_iter < 1:
        raise FastCSIError(f"max_iter {max_iter}: must be >= 1")
    floor = min(floor, 1.0 / k)
    upper = None
    if ceiling is not None:
        try:
            upper = np.asarray(ceiling, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise FastCSIError("ceiling must be one number per component") from None
        if upper.shape != (k,) or not np.isfinite(upper).all() or (upper < floor).any() or upper.sum() < 1.0:
            raise FastCSIError(f"ceiling: give {k} finite upper bounds >= the floor that add up to at least 1")
        upper = np.minimum(upper, 1.0)

    objective = _Objective(means, covs, target_mean, target_cov, diversity)
    exact_csi = objective.csi
    single = np.array([exact_csi(np.eye(k)[j]) for j in range(k)])
    best = int(np.argmin(single))
    # log w is finite only for w > 0: an entropy bonus keeps every share a hair above 0.
    lower = max(floor, 1e-12) if diversity > 0 else floor
    # Iterate from the interior (a vertex sits where the root-trace term is steepest, and steps from
    # there crawl), but keep the best single component as the incumbent to beat.
    w = _project(np.full(k, 1.0 / k) if initial is None else _check_weights(initial, k), lower, upper)
    value, gradient = objective(w)
    vertex_start = _project(np.eye(k)[best], lower, upper)
    vertex_value = objective(vertex_start, grad=False)
    best_w, best_value = (vertex_start, vertex_value) if vertex_value < value else (w, value)
    gap = 0.0
    recent = [value]
    step = 1.0 / max(np.abs(gradient).max(), 1e-12)
    iterations, converged = 0, k == 1
    while not converged and iterations < max_iter:
        # Frank-Wolfe gap g.(w - v), v the best vertex of the feasible set: for a convex objective
        # it bounds value - optimum from above, so it is a certified stopping rule.
        vertex = _best_vertex(gradient, lower, upper)
        gap = float(gradient @ (w - vertex))
        if gap <= tol * max(abs(value), 1e-12):
            converged = True
            break
        iterations += 1
        reference = max(recent[-_MEMORY:])  # non-monotone (Grippo-Lampariello-Lucidi) Armijo test
        # Backtrack along the projection arc P(w - a g): a long step then moves weight to the
        # components with the lowest gradient instead of overshooting along one fixed direction.
        for _ in range(60):
            trial = _project(w - step * gradient, lower, upper)
            slope = float(gradient @ (trial - w))
            if slope >= 0:
                break  # roundoff: no descent left
            if objective(trial, grad=False) <= reference + 1e-4 * slope:
                break
            step *= 0.5
        else:
            slope = 0.0
        if slope >= 0:
            converged = True  # no decrease possible at roundoff level: a stationary point
            break
        new_value, new_gradient = objective(trial)
        s, y = trial - w, new_gradient - gradient
        sy = float(s @ y)
        step = float(np.clip((s @ s) / sy, 1e-12, 1e12)) if sy > 0 else step * 2.0
        w, value, gradient = trial, new_value, new_gradient
        recent.append(value)
        if value < best_value:
            best_w, best_value = w, value
    w = best_w  # never worse than the start, so never worse than the best single component

    csi_value = exact_csi(w)
    if baselines is None:
        baselines = {"balanced": np.full(k, 1.0 / k)}
        base_sizes = sizes if sizes is not None else (counts if all(c is not None for c in counts) else None)
        if base_sizes is not None:
            s = np.asarray(base_sizes, dtype=np.float64)
            if s.shape != (k,) or (s < 0).any() or s.sum() <= 0:
                raise FastCSIError(f"sizes must be {k} non-negative numbers with a positive sum")
            powered = np.where(s > 0, s ** (1.0 / float(temperature)), 0.0)
            baselines[f"temperature:{temperature:g}"] = powered / powered.sum()
    compared = {}
    for name, weights in baselines.items():
        bw = _check_weights(weights, k)
        compared[name] = {"weights": bw, "csi": exact_csi(bw)}
    return MixtureResult(
        weights=w,
        csi=float(csi_value),
        objective=float(csi_value - diversity * _entropy(w)),
        iterations=iterations,
        converged=converged,
        single_csi=single,
        best_single=best,
        baselines=compared,
        diversity=diversity,
        floor=floor,
        names=list(names) if names is not None else None,
        gap=max(gap, 0.0),
    )


def _best_vertex(gradient: np.ndarray, lower: float, upper: np.ndarray | None) -> np.ndarray:
    """argmin over the feasible set of gradient . v (a linear programme: fill the cheapest first)."""
    k = gradient.size
    vertex = np.full(k, lower)
    left = 1.0 - k * lower
    for j in np.argsort(gradient, kind="stable"):
        room = left if upper is None else min(left, upper[j] - lower)
        vertex[j] += room
        left -= room
        if left <= 0:
            break
    return vertex


def _entropy(w: np.ndarray) -> float:
    w = w[w > 0]
    return float(-(w * np.log(w)).sum())


# ---------------------------------------------------------------------------------------- clustering
def cluster_components(means, counts, k: int, seed: int = 0, max_iter: int = 100) -> np.ndarray:
    """Labels 0..k'-1 (k' <= k) grouping the rows of ``means`` (C, d) by count-weighted k-means
    (k-means++ start, seeded, Lloyd iterations until assignments settle). With C <= k every row is
    its own cluster. Used to merge thousands of classes into at most k mixture components."""
    means = np.asarray(means, dtype=np.float64)
    weights = np.asarray(counts, dtype=np.float64)
    c = len(means)
    if k < 1:
        raise FastCSIError(f"the number of clusters must be >= 1, got {k}")
    if c <= k:
        return np.arange(c, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = [means[rng.choice(c, p=weights / weights.sum())]]
    distance = ((means - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = weights * distance
        if p.sum() <= 0:
            break  # fewer distinct means than k
        centres.append(means[rng.choice(c, p=p / p.sum())])
        distance = np.minimum(distance, ((means - centres[-1]) ** 2).sum(1))
    centres = np.stack(centres)
    labels = np.full(c, -1, dtype=np.int64)
    for _ in range(max_iter):
        d2 = ((means[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        new = np.argmin(d2, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(centres)):
            members = labels == j
            if members.any():
                centres[j] = weights[members] @ means[members] / weights[members].sum()
    _, compact = np.unique(labels, return_inverse=True)
    return compact.astype(np.int64)


def merge_components(components, labels) -> list:
    """One FeatureStats per label: the exact (Chan) merge of the components carrying it."""
    from fastcsi.stats.feature_stats import FeatureStats

    labels = np.asarray(labels)
    if len(labels) != len(components):
        raise FastCSIError(f"{len(labels)} labels for {len(components)} components")
    merged = []
    for label in np.unique(labels):
        out = FeatureStats(components[0].dim)
        for index in np.flatnonzero(labels == label):
            out.merge(components[index])
        merged.append(out)
    return merged
