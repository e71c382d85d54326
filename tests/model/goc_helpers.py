"""Helpers for the model tests (a unique module name: several test folders have a conftest.py, and
``from conftest import`` would pick whichever was imported first)."""
import numpy as np
import torch

from fastcsi.data.batch import batch_from_atoms
from fastcsi.model import build_model

# The test machine is shared: one intra-op thread is far faster than oversubscribed threads.
torch.set_num_threads(1)


def rattled(atoms, seed, amount=0.05):
    """Rattled positions and, for periodic cells, a small random strain: lattice vectors of equal
    length make an atom's own images tie in distance, and which tied image a k-nearest cut keeps
    then depends on rounding (true of the reference too), which would break exact invariances."""
    atoms = atoms.copy()
    if atoms.pbc.any():
        rng = np.random.default_rng(seed)
        strain = np.eye(3) + 0.04 * rng.uniform(-1, 1, size=(3, 3))
        atoms.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
    atoms.rattle(amount, seed=seed)
    return atoms


def make_model(**overrides):
    torch.manual_seed(0)
    model = build_model("gemnet-oc-tiny", **overrides).double()
    # Give every scale factor a fitted (non-zero) value so the tests exercise them.
    gen = torch.Generator().manual_seed(1)
    for name, buf in model.named_buffers():
        if name.endswith("scale_factor"):
            buf.fill_(float(0.5 + torch.rand((), generator=gen)))
    return model.eval()


def sample_structures() -> dict:
    """A molecule, a periodic slab with an adsorbate (OC20 tags 0/1/2) and a bulk crystal."""
    from ase.build import add_adsorbate, bulk, fcc111, molecule

    ethanol = rattled(molecule("CH3CH2OH"), 1)
    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0, periodic=True)
    add_adsorbate(slab, "O", 1.4, "fcc")
    slab = rattled(slab, 2, 0.03)
    # OC20 tags: adsorbate 2 (ase tags it 0), top layer 1 (ase tag 1), the rest 0
    ase_tags = slab.get_tags()
    slab.set_tags(np.where(ase_tags == 0, 2, np.where(ase_tags == 1, 1, 0)))
    return {"molecule": ethanol, "slab": slab, "bulk": rattled(bulk("NaCl", "rocksalt", a=5.64), 3, 0.05)}


def batch_of(*atoms_list):
    return batch_from_atoms(list(atoms_list), dtype=torch.float64)


def random_rotation(seed):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
