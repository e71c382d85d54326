"""Test helpers: a tiny pair-potential model (stands in for GemNet-OC where only the loop matters,
so loop tests take seconds) and synthetic labelled molecules (Lennard-Jones + per-element offsets)."""
from __future__ import annotations

import numpy as np
import torch

from fastcsi.data import Structure

OFFSETS = {1: -13.6, 6: -1030.0, 8: -2040.0}


def lj_structures(n: int, seed: int = 0, min_atoms: int = 3, max_atoms: int = 7) -> list[Structure]:
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(min_atoms, max_atoms + 1))
        numbers = rng.choice([1, 6, 8], size=k)
        # atoms on a jittered line/zigzag keep pair distances sane (no overlaps)
        pos = np.stack([np.arange(k) * 1.3, (np.arange(k) % 2) * 0.8, np.zeros(k)], 1)
        pos = pos + rng.normal(scale=0.08, size=pos.shape)
        atoms = Atoms(numbers=numbers, positions=pos)
        atoms.calc = LennardJones(sigma=1.1, epsilon=0.2, rc=4.0)
        energy = atoms.get_potential_energy() + sum(OFFSETS[int(z)] for z in numbers)
        forces = atoms.get_forces()
        out.append(Structure(numbers, pos, energy=energy, forces=forces, class_key=str(k), id=str(i),
                             targets={"gap": float(0.5 * k + rng.normal(scale=0.1))}))
    return out


class PairModel(torch.nn.Module):
    """E = sum_{i<j} MLP(rbf(d_ij)) * <e_zi, e_zj>; forces direct (pair-wise vector sum) or -dE/dx.
    Has dropout so that resume tests exercise the RNG state."""

    def __init__(self, gradient_forces: bool = False, hidden: int = 16, n_rbf: int = 8, cutoff: float = 5.0,
                 dropout: float = 0.1):
        super().__init__()
        self.gradient_forces = gradient_forces
        self.embedding = torch.nn.Embedding(10, hidden)
        self.register_buffer("centers", torch.linspace(0.5, cutoff, n_rbf))
        self.radial = torch.nn.Sequential(torch.nn.Linear(n_rbf, hidden), torch.nn.SiLU(),
                                          torch.nn.Dropout(dropout), torch.nn.Linear(hidden, hidden))
        self.force_head = torch.nn.Linear(hidden, 1)
        self.hparams = {"name": "pair-toy", "gradient_forces": gradient_forces}

    def forward(self, batch):
        pos = batch.pos
        if self.gradient_forces:
            pos = pos.detach().requires_grad_(True)
        same = batch.batch[:, None] == batch.batch[None, :]
        same.fill_diagonal_(False)
        i, j = same.nonzero(as_tuple=True)
        vec = pos[j] - pos[i]
        dist = vec.norm(dim=-1)
        rbf = torch.exp(-((dist[:, None] - self.centers) ** 2))
        h = self.radial(rbf) * self.embedding(batch.atomic_numbers[i]) * self.embedding(batch.atomic_numbers[j])
        pair_energy = 0.5 * h.sum(-1)
        atom_energy = torch.zeros(pos.shape[0], dtype=pos.dtype, device=pos.device).index_add(0, i, pair_energy)
        energy = torch.zeros(batch.num_structures, dtype=pos.dtype, device=pos.device).index_add(0, batch.batch,
                                                                                                   atom_energy)
        if self.gradient_forces:
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
            forces = -grad
        else:
            scale = self.force_head(h)
            forces = torch.zeros_like(pos).index_add(0, i, scale * vec / dist[:, None])
        return {"energy": energy, "forces": forces}
