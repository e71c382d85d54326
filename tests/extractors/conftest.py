"""Structures shared by the extractor tests: small molecules and one periodic slab."""
import numpy as np
import pytest
from ase.build import fcc111, molecule


@pytest.fixture(scope="session")
def structures():
    rng = np.random.default_rng(0)
    frames = []
    for name in ("CH3CH2OH", "H2O", "C6H6", "CH3COOH"):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    # 3x3: a smaller cell would give GemNet-OC's max_neighbors exact ties among periodic images
    slab = fcc111("Cu", (3, 3, 3), vacuum=5.0)
    slab.pbc = (True, True, False)
    slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
    frames.append(slab)
    return frames


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
