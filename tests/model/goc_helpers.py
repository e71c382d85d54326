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


def batch_of(*atoms_list):
    return batch_from_atoms(list(atoms_list), dtype=torch.float64)


def random_rotation(seed):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
