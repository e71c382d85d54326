"""Fixtures of the model tests: a molecule, a slab with adsorbate and a bulk crystal, and float64
tiny GemNet-OC models (direct and gradient forces)."""
import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111, molecule

from goc_helpers import make_model, rattled


@pytest.fixture(scope="session")
def structures():
    """A molecule, a periodic slab with an adsorbate (tags 0/1/2) and a bulk crystal."""
    ethanol = rattled(molecule("CH3CH2OH"), 1)
    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0, periodic=True)
    add_adsorbate(slab, "O", 1.4, "fcc")
    slab = rattled(slab, 2, 0.03)
    # OC20 tags: adsorbate 2 (ase tags it 0), top layer 1 (ase tag 1), the rest 0
    ase_tags = slab.get_tags()
    slab.set_tags(np.where(ase_tags == 0, 2, np.where(ase_tags == 1, 1, 0)))
    nacl = rattled(bulk("NaCl", "rocksalt", a=5.64), 3, 0.05)
    return {"molecule": ethanol, "slab": slab, "bulk": nacl}


@pytest.fixture(scope="session")
def model_direct():
    return make_model(direct_forces=True)


@pytest.fixture(scope="session")
def model_grad():
    return make_model(direct_forces=False)


