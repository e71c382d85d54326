"""CHGNet as a feature extractor (``--backbone chgnet[:VERSION]``, extra ``chgnet``).

The weights (CHGNet 0.3.0 by default: trained on MPtrj, inorganic; BSD licence) ship inside the
``chgnet`` wheel. Features are the 64 per-atom outputs of the last atom convolution, the layer
after CHGNet's own ``atom_fea`` (which is layer n-1), before the readout norm; they are invariant.

CHGNet's graph is more than a radius graph (undirected bonds with their directed pairs, a bond
graph of angles within 3 Å), built per structure by its converter from a pymatgen Structure, so
that part stays CHGNet's own. What changes is the forward pass: all the structures of a batch go
through one, under inference_mode. pymatgen structures are always periodic: a molecule goes into a
box, and a slab's open axis gets a cell vector, long enough that no image comes within the cutoff.
CHGNet computes in float32 only.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import warnings

import numpy as np
import torch

from fastcsi.errors import FastCSIError
from fastcsi.extractors import ExtractorBase, import_optional, state_fingerprint, timed_forward

DEFAULT_VERSION = "0.3.0"
VERSIONS = ("0.3.0", "0.2.0", "r2scan")


def periodic_structure(numbers, positions, cell, pbc, cutoff: float):
    """A pymatgen Structure whose periodic images are those of (cell, pbc): every open axis gets a
    cell vector longer than the structure's extent plus ``cutoff``."""
    from pymatgen.core import Lattice, Structure

    positions = np.asarray(positions, dtype=np.float64)
    cell = np.array(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    pad = float(np.ptp(positions, axis=0).max()) + cutoff + 1.0 if len(positions) else cutoff + 1.0
    if not pbc.any():
        cell = np.eye(3) * pad
        positions = positions - positions.min(axis=0)
    elif not pbc.all():
        if pbc.sum() != 2:
            raise FastCSIError("chgnet: structures periodic along one axis only are not supported")
        open_axis = int(np.flatnonzero(~pbc)[0])
        a, b = (cell[k] for k in range(3) if k != open_axis)
        normal = np.cross(a, b)
        normal /= np.linalg.norm(normal)
        along = positions @ normal
        cell[open_axis] = normal * (np.ptp(along) + cutoff + 1.0)
        if np.linalg.det(cell) < 0:  # keep a right-handed lattice
            cell[open_axis] = -cell[open_axis]
    return Structure(Lattice(cell), numbers, positions, coords_are_cartesian=True)


class CHGNetExtractor(ExtractorBase):
    def __init__(self, model, version: str, device, dtype):
        if dtype != torch.float32:
            raise FastCSIError("--dtype: chgnet computes in float32 only")
        self.name = "chgnet" if version == DEFAULT_VERSION else f"chgnet:{version}"
        self.layer = "final"
        self.kind = "node"
        self.pretrained = True
        self.device = torch.device(device)
        self.dtype = dtype
        self.cutoff = float(model.graph_converter.atom_graph_cutoff)
        self.elements = frozenset(range(1, model.atom_embedding.embedding.num_embeddings + 1))
        self.dim = int(model.atom_embedding.embedding.embedding_dim)  # the convolutions keep the atom width
        self.description = f"CHGNet {version} (from the chgnet wheel, trained on MPtrj)"
        digest = hashlib.sha256(f"{self.name}|final|node|".encode())
        state_fingerprint(digest, model)
        self.fingerprint = digest.hexdigest()[:32]
        self.model = self._frozen(model, self.device, dtype)

    def _graphs(self, structures):
        return [self.model.graph_converter(s) for s in structures]

    def _structures(self, batch):
        ptr = batch.ptr.tolist()
        z = batch.atomic_numbers.cpu().numpy()
        pos = batch.pos.detach().cpu().numpy()
        cell = batch.cell.detach().cpu().numpy()
        pbc = batch.pbc.cpu().numpy()
        return [periodic_structure(z[a:b], pos[a:b], cell[k], pbc[k], self.cutoff)
                for k, (a, b) in enumerate(zip(ptr[:-1], ptr[1:]))]

    def _last_conv(self, graphs) -> torch.Tensor:
        from chgnet.model.model import BatchedGraph

        captured = {}
        hook = self.model.atom_conv_layers[-1].register_forward_hook(
            lambda module, args, output: captured.__setitem__("x", output))
        try:
            batched = BatchedGraph.from_graphs(graphs, bond_basis_expansion=self.model.bond_basis_expansion,
                                               angle_basis_expansion=self.model.angle_basis_expansion)
            self.model._compute(batched)
        finally:
            hook.remove()
        return captured["x"]

    def features(self, batch, profiler=None) -> torch.Tensor:
        def build():
            try:
                return [g.to(self.device) for g in self._graphs(self._structures(batch))]
            except ValueError as exc:  # CHGNet's converter refuses isolated atoms
                raise FastCSIError(f"chgnet: {exc}") from None

        return timed_forward(profiler, build, self._last_conv)

    def features_per_structure(self, atoms_list) -> list[torch.Tensor]:
        """CHGNet's own path: its converter and one forward pass per structure."""
        out = []
        with torch.inference_mode():
            for atoms in atoms_list:
                structure = periodic_structure(atoms.numbers, atoms.positions, np.asarray(atoms.cell), atoms.pbc,
                                               self.cutoff)
                out.append(self._last_conv([self.model.graph_converter(structure).to(self.device)]))
        return out


def load(backbone, model_part, *, layer, kind, device, dtype):
    version = model_part or DEFAULT_VERSION
    if version not in VERSIONS:
        raise FastCSIError(f"--backbone chgnet:{version}: the chgnet wheel ships {', '.join(VERSIONS)}")
    if layer != "final" or kind != "node":
        raise FastCSIError(f"--layer {layer!r} / --kind {kind!r}: chgnet gives the node features of its last "
                           "convolution only (layer final, kind node)")
    import_optional("chgnet", backbone)
    from chgnet.model.model import CHGNet

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # the file ships inside the chgnet wheel (CHGNet.load never downloads)
        model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    return CHGNetExtractor(model, version, device, dtype)
