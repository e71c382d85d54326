"""GemNet-OC laid out as JMP's fine-tuning model: ``embedding`` (nn.Embedding indexed with Z-1),
``backbone`` (bases, interaction blocks, output blocks, final MLPs), ``out_energy`` and, for direct
forces, ``out_forces``; a JMP state_dict loads key for key.

Graphs (JMP's conventions): one atom-atom radius graph (cutoff_aint, inclusive, periodic images of
an atom are its neighbours), from which the main, atom-edge and quadruplet graphs keep each target's
k nearest (k = max_neighbors, _aeaint, _qint: 30/20/8 by default) within their cutoffs; the
quadruplet graph then keeps an edge when either end has a tag in ``qint_tags`` (molecules and bulk
carry tag 2 everywhere, so they keep every edge). The main graph is symmetrised (source < target
edges plus their reverses), so an atom's in-degree can exceed max_neighbors.

Numerics (tests/model/test_parity.py against JMP's own model; relative to the largest reference
magnitude of each tensor):

    dtype     tolerance tested   observed (features / energy / direct forces / gradient forces)
    float64   1e-5               ~1e-13 / 1e-13 / 2e-13 / 3e-12   (summation order only)
    float32   1e-3               4e-6 / 4e-6 / 9e-6

Kernel paths: the radius graph, index sets, interaction and activation ops run their "auto"
backends; ``fastcsi.backend.override(radius=..., interaction=..., fused=...)`` switches them for
everything inside the block. Timing: ``graph_timer`` (None, or a callable returning a context
manager, e.g. ``lambda: profiler.stage("graph")``) is entered around graph construction in
``forward`` and in feature extraction, so a profile can show graph building apart from the network.

Degenerate inputs: a structure without neighbours (one atom, or atoms beyond the cutoff) gets the
energy of its isolated atoms and zero force; an empty batch gives empty outputs; NaN/inf positions
and atomic numbers outside 1..num_elements raise FastCSIError.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn

from fastcsi.errors import FastCSIError
from fastcsi.graph import radius_graph, select_neighbors
from fastcsi.graph import gemnet_indices as gi
from fastcsi.model.features import check_elements
from fastcsi.model.gemnet_oc.bases import Bases
from fastcsi.model.gemnet_oc.blocks import InteractionBlock
from fastcsi.model.gemnet_oc.configs import normalize_hparams
from fastcsi.model.gemnet_oc.layers import FinalMLP, OutputBlock, head_mlp, scatter_sum


def _edge_dict(graph, atom_batch, num_structures):
    edge_index = graph.edge_index
    edge_batch = atom_batch[edge_index[1]] if edge_index.shape[1] else edge_index.new_zeros(0)
    return {
        "edge_index": edge_index,
        "cell_offset": graph.cell_offsets,
        "distance": graph.distances,
        # unit vector from source to target (the radius graph's vectors point target -> source)
        "vector": -graph.vectors / graph.distances[:, None],
        "edge_batch": edge_batch,
        "num_neighbors": torch.bincount(edge_batch, minlength=num_structures),
    }


def build_graphs(batch, hp: dict) -> dict:
    """All graphs and index sets one forward pass needs (see the module docstring)."""
    num_atoms, num_structures = batch.num_atoms, batch.num_structures
    if not hp["use_pbc"]:
        batch = dataclasses.replace(batch, pbc=torch.zeros_like(batch.pbc))
    a2a_raw = radius_graph(batch, hp["cutoff_aint"], max_neighbors=hp["max_neighbors_aint"], strict=True)

    def sub(cutoff, k):
        # as JMP: a graph is sub-selected only in what differs from the atom-atom graph
        cut = None if math.isclose(cutoff, hp["cutoff_aint"]) else cutoff
        kk = None if k == hp["max_neighbors_aint"] else k
        if cut is None and kk is None:
            return a2a_raw
        return select_neighbors(a2a_raw, cutoff=cut, max_neighbors=kk, strict=True)

    as_dict = lambda g: _edge_dict(g, batch.batch, num_structures)  # noqa: E731
    a2a = as_dict(a2a_raw)
    main = as_dict(sub(hp["cutoff"], hp["max_neighbors"]))
    main, id_swap = gi.symmetrize_edges(main, num_atoms)
    g = {"main": main, "a2a": a2a, "id_swap": id_swap, "num_atoms": num_atoms}
    g["trip_e2e"] = gi.triplets(main, num_atoms)
    if hp["quad_interaction"]:
        qint = as_dict(sub(hp["cutoff_qint"], hp["max_neighbors_qint"]))
        g["qint"] = gi.tag_filter_edges(qint, batch.tags, hp["qint_tags"])
        g["quad"] = gi.quadruplets(main, g["qint"], num_atoms)
    else:
        g["qint"], g["quad"] = None, None
    g["a2ee2a"] = g["trip_a2e"] = g["trip_e2a"] = None
    if hp["atom_edge_interaction"] or hp["edge_atom_interaction"]:
        a2ee2a = as_dict(sub(hp["cutoff_aeaint"], hp["max_neighbors_aeaint"]))
        a2ee2a["target_neighbor_idx"] = gi.inner_index(a2ee2a["edge_index"][1], num_atoms)
        g["a2ee2a"] = a2ee2a
        if hp["atom_edge_interaction"]:
            g["trip_a2e"] = gi.mixed_triplets(a2ee2a, main, num_atoms, return_agg_idx=True)
        if hp["edge_atom_interaction"]:
            g["trip_e2a"] = gi.mixed_triplets(main, a2ee2a, num_atoms, return_agg_idx=True)
    if hp["atom_interaction"]:
        a2a["target_neighbor_idx"] = gi.inner_index(a2a["edge_index"][1], num_atoms)
    return g


class GemNetOCBackbone(nn.Module):
    def __init__(self, hp: dict):
        super().__init__()
        self.hp = hp
        cutoffs = {"main": hp["cutoff"], "aeaint": hp["cutoff_aeaint"], "qint": hp["cutoff_qint"], "aint": hp["cutoff_aint"]}
        self.bases = Bases(hp, cutoffs)
        self.int_blocks = nn.ModuleList([InteractionBlock(hp) for _ in range(hp["num_blocks"])])
        self.out_blocks = nn.ModuleList([
            OutputBlock(hp["emb_size_atom"], hp["emb_size_edge"], hp["emb_size_rbf"], hp["num_atom"],
                        hp["num_output_afteratom"], hp["activation"], hp["direct_forces"],
                        hp["edge_dropout"], hp["dropout"])
            for _ in range(hp["num_blocks"] + 1)
        ])
        self.out_mlp_E = FinalMLP(hp["emb_size_atom"], hp["num_blocks"], hp["num_global_out_layers"], hp["activation"])
        if hp["direct_forces"]:
            self.out_mlp_F = FinalMLP(hp["emb_size_edge"], hp["num_blocks"], hp["num_global_out_layers"],
                                      hp["activation"], hp["dropout"])

    def forward(self, h, g, stop_after_block: int | None = None, want_edges: bool = True, want_final: bool = True):
        """Run the backbone. Returns a dict with per-block atom outputs ``xs_E`` (list), edge outputs
        ``xs_F`` (list, direct forces only) and, when ``want_final``, ``energy`` (N, emb_size_atom) and
        ``forces`` (E, emb_size_edge) from the final MLPs. ``stop_after_block=k`` stops after output
        block k (0 = before any interaction), skips the final MLPs and computes only block k's outputs
        (the other list entries are None)."""
        idx_t = g["main"]["edge_index"][1]
        bases = self.bases(h, g)
        m = bases["m"]
        direct = self.hp["direct_forces"] and want_edges

        def outputs(block, h, m):
            x_E = block.forward_energy(h, m, bases["output"], idx_t)
            x_F = block.forward_forces(m, bases["output"]) if direct else None
            return x_E, x_F

        last = self.hp["num_blocks"] if stop_after_block is None else stop_after_block
        # a single block's features need only that block's output head
        needed = range(last + 1) if stop_after_block is None else [last]
        xs_E, xs_F = [None] * (last + 1), [None] * (last + 1)
        if 0 in needed:
            xs_E[0], xs_F[0] = outputs(self.out_blocks[0], h, m)
        for i in range(last):
            h, m = self.int_blocks[i](h, m, bases, g)
            if i + 1 in needed:
                xs_E[i + 1], xs_F[i + 1] = outputs(self.out_blocks[i + 1], h, m)
        out = {"xs_E": xs_E, "xs_F": xs_F, "h": h, "m": m}
        if want_final and stop_after_block is None:
            out["energy"] = self.out_mlp_E(torch.cat(xs_E, dim=-1))
            out["forces"] = self.out_mlp_F(torch.cat(xs_F, dim=-1)) if direct else None
        return out


class GemNetOC(nn.Module):
    """GemNet-OC energy (and forces) model: ``model(batch) -> {"energy": (B,), "forces": (N, 3)}``.

    Energies in eV (sum of per-atom contributions; the mean with ``extensive=False``), forces in
    eV/Å: direct (edge outputs times unit vectors summed on targets) or, with
    ``direct_forces=False``, -dE/dpos by autograd (also under ``torch.inference_mode``).
    Dtype: the model's (``model.double()`` for float64); batches are cast to it.
    Hyperparameters: JMP's BackboneConfig names + graph settings (see ``configs.py``).
    """

    def __init__(self, **hparams):
        super().__init__()
        hp = normalize_hparams(hparams)
        self.hparams = hp
        # The orthogonal initialisation (QR, reductions) gives bitwise different weights with
        # different intra-op thread counts; one thread makes a seed reproduce the same weights
        # (and extractor fingerprint) on every machine configuration.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.embedding = nn.Embedding(hp["num_elements"], hp["emb_size_atom"])
            nn.init.uniform_(self.embedding.weight, -math.sqrt(3), math.sqrt(3))
            self.backbone = GemNetOCBackbone(hp)
            width = hp["head_num_mlps"]
            self.out_energy = head_mlp([hp["emb_size_atom"]] * width + [hp["num_targets"]], hp["activation"], bias=False)
            self.out_forces = (
                head_mlp([hp["emb_size_edge"]] * width + [hp["num_targets"]], hp["activation"], bias=True)
                if hp["regress_forces"] and hp["direct_forces"] else None
            )
        finally:
            torch.set_num_threads(threads)
        self.graph_timer = None  # see the module docstring
        if hp["scale_file"]:
            self.apply_scale_file(hp["scale_file"])

    def apply_scale_file(self, scale_file) -> None:
        """Set scale factors from a fitted file (JMP's ``scale_file``: module path -> value)."""
        from fastcsi.model.gemnet_oc.scale_file import load_scale_file

        buffers = dict(self.named_buffers())
        values = load_scale_file(scale_file)
        unknown = sorted(k for k in values if k not in buffers)
        if unknown:
            raise FastCSIError(f"{scale_file}: scale factor(s) not in this model: {', '.join(unknown)}")
        for key, value in values.items():
            buffers[key].fill_(float(value))

    @property
    def num_elements(self) -> int:
        return int(self.hparams["num_elements"])

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def prepare(self, batch):
        """Validate ``batch`` and cast its floating tensors to the model's dtype and device."""
        device = self.embedding.weight.device
        if batch.num_atoms and not torch.isfinite(batch.pos).all():
            bad = int(batch.batch[~torch.isfinite(batch.pos).all(1)][0])
            raise FastCSIError(f"GemNet-OC: structure {bad} of the batch has NaN or inf positions")
        check_elements(self, batch.atomic_numbers)
        return dataclasses.replace(
            batch,
            pos=batch.pos.to(device=device, dtype=self.dtype),
            cell=batch.cell.to(device=device, dtype=self.dtype),
            atomic_numbers=batch.atomic_numbers.to(device),
            batch=batch.batch.to(device),
            natoms=batch.natoms.to(device),
            pbc=batch.pbc.to(device),
            tags=batch.tags.to(device),
        )

    @contextlib.contextmanager
    def timing_graphs(self, timer):
        """Use ``timer`` as ``graph_timer`` inside the block (the previous one comes back after)."""
        previous, self.graph_timer = self.graph_timer, timer
        try:
            yield self
        finally:
            self.graph_timer = previous

    def graphs(self, batch) -> dict:
        """``build_graphs`` of a prepared ``batch``, inside ``graph_timer`` when one is set."""
        if self.graph_timer is None:
            return build_graphs(batch, self.hparams)
        with self.graph_timer():
            return build_graphs(batch, self.hparams)

    def embed(self, batch):
        return self.embedding(batch.atomic_numbers.long() - 1)

    def forward(self, batch) -> dict:
        hp = self.hparams
        batch = self.prepare(batch)
        gradient_forces = hp["regress_forces"] and not hp["direct_forces"]
        # gradient forces need autograd even under no_grad / inference_mode (as JMP does)
        with torch.inference_mode(False) if gradient_forces else contextlib.nullcontext(), \
                torch.enable_grad() if gradient_forces else contextlib.nullcontext():
            pos = batch.pos
            if gradient_forces:
                # clones are normal tensors even when the batch was made under inference_mode
                pos = pos.detach().clone().requires_grad_(True)
                batch = dataclasses.replace(
                    batch, pos=pos, cell=batch.cell.clone(), batch=batch.batch.clone(),
                    atomic_numbers=batch.atomic_numbers.clone(), natoms=batch.natoms.clone(),
                    pbc=batch.pbc.clone(), tags=batch.tags.clone(),
                )
            g = self.graphs(batch)
            out = self.backbone(self.embed(batch), g, want_edges=hp["regress_forces"])
            per_atom = self.out_energy(out["energy"])  # (N, T)
            energy = scatter_sum(per_atom, batch.batch, batch.num_structures)
            if not hp["extensive"]:  # fairchem's intensive targets: mean over atoms
                energy = energy / batch.natoms.clamp(min=1).to(energy.dtype)[:, None]
            energy = energy[:, 0] if hp["num_targets"] == 1 else energy
            result = {"energy": energy}
            if hp["regress_forces"]:
                if hp["direct_forces"]:
                    f_edge = self.out_forces(out["forces"]) * g["main"]["vector"]
                    result["forces"] = scatter_sum(f_edge, g["main"]["edge_index"][1], batch.num_atoms)
                else:
                    (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training,
                                                  allow_unused=True)
                    result["forces"] = -grad if grad is not None else torch.zeros_like(pos)
        return result
