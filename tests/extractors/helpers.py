"""Checks every extractor must pass: invariance, batch independence, the protocol's face."""
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from fastcsi.data import batch_from_atoms
from fastcsi.extractors import FeatureExtractor


def features_of(extractor, frames):
    return extractor.features(batch_from_atoms(frames, dtype=extractor.dtype, device=extractor.device))


def rotated(atoms, seed=0):
    rot = Rotation.random(random_state=seed).as_matrix()
    out = atoms.copy()
    out.positions = atoms.positions @ rot.T
    out.cell = np.asarray(atoms.cell) @ rot.T
    return out


def check_protocol(extractor):
    assert isinstance(extractor, FeatureExtractor)
    described = extractor.describe()
    for key in ("extractor_name", "pretrained", "backbone", "extractor", "layer", "kind", "feature_dim", "dtype"):
        assert key in described, key
    assert described["extractor_name"] == extractor.name and described["feature_dim"] == extractor.dim


def check_invariance_and_batching(extractor, frames, atol):
    together = features_of(extractor, frames)
    assert together.shape == (sum(len(a) for a in frames), extractor.dim)
    assert torch.isfinite(together).all()
    start = 0
    for k, atoms in enumerate(frames):
        alone = features_of(extractor, [atoms])
        # batch independence: a structure's features do not depend on its batch neighbours
        torch.testing.assert_close(alone, together[start:start + len(atoms)], atol=atol, rtol=0)
        start += len(atoms)
        # rotation (cell included) leaves invariant features unchanged
        torch.testing.assert_close(features_of(extractor, [rotated(atoms, seed=k)]), alone, atol=atol, rtol=0)
        # permuting the atoms permutes the features
        perm = np.random.default_rng(k).permutation(len(atoms))
        torch.testing.assert_close(features_of(extractor, [atoms[perm]]), alone[torch.as_tensor(perm)], atol=atol,
                                   rtol=0)
    # features are not trivially constant across atoms
    assert float(together.std(dim=0).max()) > 1e-3
