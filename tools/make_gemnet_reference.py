#!/usr/bin/env python
"""Build the GemNet-OC parity fixture by running facebookresearch/JMP's own model.

Runs OUTSIDE the project, in a throwaway environment that can import JMP (see
tests/model/fixtures/README.md for how that environment is built).  It never imports
fastcsi and nothing here is JMP code: it builds JMP's real fine-tuning module
(`jmp.tasks.finetune.md22.MD22Model`, an energy + direct-forces model) with a small
GemNet-OC config, float64, seeded random weights and non-trivial scale factors, runs it
on three fixed structures (molecule, slab + adsorbate, bulk) and on the batch of all
three, and writes:

  <out>/jmp_state_dict.pt      exactly the Lightning module's state_dict() (JMP key layout)
  <out>/reference_cases.pt     inputs, outputs, intermediate features, graph sizes per case
  <out>/meta.json              config, seeds, JMP commit, versions, tensor documentation

torch_scatter / torch_sparse (compiled extensions JMP imports) are replaced by small
pure-torch stand-ins defined below, and the non-periodic `radius_graph` that PyG now
delegates to pyg-lib is replaced by an all-pairs search; JMP's numerics are untouched.

Usage (inside the reference venv):
  python tools/make_gemnet_reference.py --jmp-src /tmp/gemnet_ref/jmp \
      --out tests/model/fixtures/ [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

FIXTURE_VERSION = 1
CUTOFF = 12.0  # JMP's graph cutoff for MD22/SPICE/MatBench fine-tuning (Cutoffs.from_constant(12.0))
MAX_NEIGHBORS = 30  # MaxNeighbors.from_goc_base_proportions(30) -> main 30, aeaint 20, qint 8, aint 1000
MIN_MARGIN = 1e-3  # Å: required gap at every neighbour-count cut and at the cutoff sphere
FD_STEP = 1e-5  # Å; central differences converge as step**2 (1e-4 gives ~1e-6, 1e-5 ~1e-8)
CELL_GRID = 2.0**-10  # cell entries are multiples of this so JMP's float32 cell math is exact


# --------------------------------------------------------------------------------------
# Stand-ins for compiled dependencies (registered in sys.modules before JMP is imported)
# --------------------------------------------------------------------------------------
def _scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    dim = dim % src.dim()
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() > 0 else 0
    if index.dim() == 1 and src.dim() > 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)
    index = index.expand_as(src)
    shape = list(src.shape)
    shape[dim] = dim_size
    result = src.new_zeros(shape) if out is None else out
    if reduce in ("sum", "add"):
        return result.scatter_add(dim, index, src)
    if reduce == "mean":
        total = result.scatter_add(dim, index, src)
        count = torch.zeros_like(total).scatter_add(dim, index, torch.ones_like(src))
        return total / count.clamp(min=1)
    red = {"max": "amax", "min": "amin"}[reduce]
    return result.scatter_reduce(dim, index, src, reduce=red, include_self=False)


def _segment_coo(src, index, out=None, dim_size=None, reduce="sum"):
    return _scatter(src, index, dim=index.dim() - 1, out=out, dim_size=dim_size, reduce=reduce)


def _segment_csr(src, indptr, out=None, reduce="sum"):
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts)
    segment = src[int(indptr[0]) : int(indptr[-1])]
    return _scatter(segment, index, dim=0, dim_size=counts.numel(), reduce=reduce)


class _SparseStorage:
    def __init__(self, row, col, value, sizes):
        self._row, self._col, self._value, self._sizes = row, col, value, sizes

    def row(self):
        return self._row

    def col(self):
        return self._col

    def value(self):
        return self._value

    def rowptr(self):
        ptr = self._row.new_zeros(self._sizes[0] + 1)
        ptr[1:] = torch.cumsum(torch.bincount(self._row, minlength=self._sizes[0]), 0)
        return ptr


class _SparseTensor:
    """COO matrix sorted by (row, col); duplicates keep input order (stable sort).

    Covers what GemNet-OC's index builders use: construction, `adj[index_tensor]` (row
    selection, rows renumbered in selection order), storage.value()/row(), coo(),
    sparse_sizes(), set_value_(..., layout="coo").
    """

    def __init__(self, row=None, col=None, value=None, sparse_sizes=None, is_sorted=False, **_):
        sizes = (int(sparse_sizes[0]), int(sparse_sizes[1]))
        if not is_sorted and row.numel() > 0:
            key = row * sizes[1] + col
            if bool((key[1:] < key[:-1]).any()):
                perm = torch.sort(key, stable=True).indices
                row, col = row[perm], col[perm]
                value = None if value is None else value[perm]
        self.storage = _SparseStorage(row, col, value, sizes)

    def sparse_sizes(self):
        return self.storage._sizes

    def coo(self):
        return self.storage.row(), self.storage.col(), self.storage.value()

    def set_value_(self, value, layout=None):
        if layout not in (None, "coo"):
            raise NotImplementedError(layout)
        self.storage._value = value
        return self

    def __getitem__(self, idx):
        if not (torch.is_tensor(idx) and not idx.is_floating_point() and idx.dim() == 1):
            raise NotImplementedError("stand-in SparseTensor supports row selection by index only")
        idx = idx.long()
        rowptr = self.storage.rowptr()
        counts = (rowptr[1:] - rowptr[:-1])[idx]
        new_row = torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), counts)
        first = torch.cumsum(counts, 0) - counts
        within = torch.arange(new_row.numel(), device=idx.device) - torch.repeat_interleave(first, counts)
        gather = torch.repeat_interleave(rowptr[:-1][idx], counts) + within
        value = self.storage.value()
        out = _SparseTensor.__new__(_SparseTensor)
        out.storage = _SparseStorage(
            new_row,
            self.storage.col()[gather],
            None if value is None else value[gather],
            (idx.numel(), self.storage._sizes[1]),
        )
        return out


def _radius_graph_all_pairs(x, r, batch=None, loop=False, max_num_neighbors=32, flow="source_to_target", **_):
    """Non-periodic radius graph: edges (source j, target i), sorted by target then source."""
    if batch is None:
        batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    with torch.no_grad():
        dist = torch.cdist(x, x)
        same_graph = batch[:, None] == batch[None, :]
        adj = (dist <= r) & same_graph
        if not loop:
            adj.fill_diagonal_(False)
    if int(adj.sum(1).max()) > max_num_neighbors:
        raise RuntimeError("radius_graph stand-in: neighbour truncation would be needed; not emulated")
    target, source = adj.nonzero(as_tuple=True)  # row-major: sorted by target, then source
    if flow != "source_to_target":
        raise NotImplementedError(flow)
    return torch.stack([source, target])


def install_stand_ins():
    # PyG must be imported first so it does not pick the stand-ins up as real extensions.
    import torch_geometric  # noqa: F401
    import torch_geometric.data  # noqa: F401
    import torch_geometric.nn  # noqa: F401

    scatter_mod = types.ModuleType("torch_scatter")
    scatter_mod.scatter = _scatter
    scatter_mod.segment_coo = _segment_coo
    scatter_mod.segment_csr = _segment_csr
    sparse_mod = types.ModuleType("torch_sparse")
    sparse_mod.SparseTensor = _SparseTensor
    sys.modules["torch_scatter"] = scatter_mod
    sys.modules["torch_sparse"] = sparse_mod


# --------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------
ETHANOL = (
    [6, 6, 8, 1, 1, 1, 1, 1, 1],
    [
        [1.1879, -0.3829, 0.0000],
        [0.0000, 0.5526, 0.0000],
        [-1.1867, -0.2472, 0.0000],
        [-1.9237, 0.3850, 0.0000],
        [2.1364, 0.1628, 0.0000],
        [1.1505, -1.0290, 0.8786],
        [1.1505, -1.0290, -0.8786],
        [0.0396, 1.2030, 0.8775],
        [0.0396, 1.2030, -0.8775],
    ],
)


def on_cell_grid(cell):
    return np.round(np.asarray(cell, dtype=np.float64) / CELL_GRID) * CELL_GRID


def build_structures(rattle_seed: int, rattle_std: float):
    """Return name -> dict(numbers, pos, cell, pbc, tags), positions rattled with one seed."""
    from ase.build import add_adsorbate, fcc111, molecule

    rng = np.random.default_rng(rattle_seed)
    out = {}

    numbers, pos = ETHANOL
    pos = np.asarray(pos) + rng.normal(0.0, rattle_std, (len(numbers), 3))
    # JMP's molecule tasks (rMD17, MD22, SPICE) tag every atom 2 and build a non-periodic graph.
    out["molecule"] = dict(
        numbers=np.asarray(numbers), pos=pos, cell=np.zeros((3, 3)), pbc=np.zeros(3, bool),
        tags=np.full(len(numbers), 2),
    )

    slab = fcc111("Cu", size=(2, 2, 3), a=3.61, vacuum=7.0, orthogonal=False)
    layer_z = np.unique(np.round(slab.positions[:, 2], 3))
    add_adsorbate(slab, molecule("CO"), height=1.85, position="ontop", mol_index=1)  # C down, O up
    # A perfect hexagonal 2x2 cell puts six self-images at one distance, and the max-neighbour
    # cuts then split exact ties; an in-plane strain breaks the six-fold tie into +-pairs
    # that the margin search below can keep away from the cuts.
    strain = np.eye(3)
    strain[0, 0], strain[1, 1], strain[0, 1] = 1.02, 0.985, 0.03
    slab.set_cell(slab.cell.array @ strain, scale_atoms=True)
    z = np.round(slab.positions[:, 2], 3)
    n_metal = 12
    # OC20 convention: 0 sub-surface, 1 surface layer, 2 adsorbate.
    tags = np.where(z[:n_metal] >= layer_z.max(), 1, 0).tolist() + [2] * (len(slab) - n_metal)
    cell = on_cell_grid(slab.cell.array)
    pos = slab.positions + rng.normal(0.0, rattle_std, (len(slab), 3))
    out["slab"] = dict(
        numbers=slab.numbers.copy(), pos=pos, cell=cell, pbc=np.ones(3, bool), tags=np.asarray(tags),
    )

    # Rock-salt NaCl conventional cell with a small shear; MatBench/QMOF tag every atom 2.
    a = 5.640625
    # The shear makes |a1|, |a2|, |a3| differ so self-image +-pairs sit at distinct distances.
    cell = on_cell_grid([[a, 0.0, 0.0], [0.5, a, 0.0], [0.25, -0.375, a]])
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.concatenate([fcc, fcc + [0.5, 0.0, 0.0]]) % 1.0
    numbers = np.array([11] * 4 + [17] * 4)
    pos = frac @ cell + rng.normal(0.0, rattle_std, (8, 3))
    out["bulk"] = dict(numbers=numbers, pos=pos, cell=cell, pbc=np.ones(3, bool), tags=np.full(8, 2))
    return out


def neighbour_margins(structure, cutoff=CUTOFF, counts=(8, 20, 30)):
    """Smallest gap (Å) between the k-th and (k+1)-th neighbour distance and to the cutoff sphere.

    Graph parity needs every cut (max-neighbour truncation, cutoff) to be far from a tie.
    """
    pos, cell, pbc = structure["pos"], structure["cell"], structure["pbc"]
    if pbc.any():
        inv_heights = np.linalg.norm(np.linalg.inv(cell), axis=0)
        reps = [int(math.ceil((cutoff + 1.0) * h)) if p else 0 for h, p in zip(inv_heights, pbc)]
        grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reps], indexing="ij"), -1).reshape(-1, 3)
        shifts = grid @ cell
    else:
        shifts = np.zeros((1, 3))
    boundary_gap, count_gap = np.inf, np.inf
    for i in range(len(pos)):
        d = np.linalg.norm(pos[None, None, :] + shifts[:, None, :] - pos[i][None, None, :], axis=-1).ravel()
        d = np.sort(d[d > 1e-4])
        boundary_gap = min(boundary_gap, np.min(np.abs(d - cutoff)))
        within = d[d <= cutoff]
        for k in counts:
            if len(within) > k:
                count_gap = min(count_gap, within[k] - within[k - 1])
    return float(boundary_gap), float(count_gap)


# --------------------------------------------------------------------------------------
# The JMP model
# --------------------------------------------------------------------------------------
SMALL_BACKBONE = dict(
    num_radial=16,
    num_blocks=2,
    emb_size_atom=16,
    emb_size_edge=16,
    emb_size_trip_in=8,
    emb_size_trip_out=8,
    emb_size_quad_in=4,
    emb_size_quad_out=4,
    emb_size_aint_in=8,
    emb_size_aint_out=8,
    emb_size_rbf=8,
    emb_size_cbf=8,
    emb_size_sbf=8,
)


def build_model(weight_seed: int, scale_seed: int):
    from jmp.models.gemnet.config import BackboneConfig
    from jmp.modules.scaling.scale_factor import ScaleFactor
    from jmp.tasks.config import AdamWConfig
    from jmp.tasks.finetune import md22
    from jmp.tasks.finetune.base import FinetuneConfigBase, PrimaryMetricConfig

    FinetuneConfigBase.set_seed(weight_seed)
    config = md22.MD22Config.draft()
    config.molecule = "DHA"  # only names the task; data never comes from it
    backbone = BackboneConfig.large()  # JMP-L settings (all interactions, legendre_outer sbf, ...)
    for key, value in SMALL_BACKBONE.items():
        setattr(backbone, key, value)
    backbone.scale_basis = False
    config.backbone = backbone
    config.embedding.embedding_size = backbone.emb_size_atom
    config.optimizer = AdamWConfig(lr=5.0e-6, amsgrad=False, betas=(0.9, 0.95), weight_decay=0.1)
    config.primary_metric = PrimaryMetricConfig(name="force_mae", mode="min")
    config.batch_size = 1
    config = config.finalize()

    torch.manual_seed(weight_seed)
    model = md22.MD22Model(config).double().eval()

    with torch.no_grad():
        gen = torch.Generator().manual_seed(weight_seed + 1)
        for name, param in model.named_parameters():
            # JMP zero-initialises biases; random ones make bias handling testable.
            if name.endswith("bias") or bool((param == param.flatten()[0]).all()):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
        gen = torch.Generator().manual_seed(scale_seed)
        scale_values = {}
        for name, module in model.named_modules():
            if isinstance(module, ScaleFactor):
                value = 0.5 + 1.5 * torch.rand((), generator=gen, dtype=torch.float64)
                module.scale_factor.fill_(value)
                scale_values[name] = float(value)
    return model, config, scale_values


def make_data(structure, *, requires_grad: bool):
    from torch_geometric.data import Data

    pos = torch.tensor(structure["pos"], dtype=torch.float64)
    pos.requires_grad_(requires_grad)
    n = len(structure["numbers"])
    return Data(
        pos=pos,
        atomic_numbers=torch.tensor(structure["numbers"], dtype=torch.long),
        natoms=n,
        tags=torch.tensor(structure["tags"], dtype=torch.long),
        fixed=torch.zeros(n, dtype=torch.bool),
        # JMP keeps cells in float32 (radius_graph_pbc builds float32 offsets); exact on our grid.
        cell=torch.tensor(structure["cell"], dtype=torch.float32).unsqueeze(0),
        pbc=torch.tensor(structure["pbc"], dtype=torch.bool).unsqueeze(0),
    )


def with_graphs(model, data, periodic: bool):
    from jmp.utils.goc_graph import Cutoffs, MaxNeighbors

    return model.generate_graphs(
        data,
        cutoffs=Cutoffs.from_constant(CUTOFF),
        max_neighbors=MaxNeighbors.from_goc_base_proportions(MAX_NEIGHBORS),
        pbc=periodic,
    )


def run_case(model, structures: list[dict], keep_edges: bool):
    """JMP forward on the batch of `structures` (graphs built per structure, then collated)."""
    from torch_geometric.data import Batch

    datas = [make_data(s, requires_grad=True) for s in structures]
    leaves = [d.pos for d in datas]
    datas = [with_graphs(model, d, bool(s["pbc"].any())) for d, s in zip(datas, structures)]
    batch = Batch.from_data_list(datas)

    captured: dict[str, list] = {"h": [], "x_E": [], "x_F": []}
    hooks = [model.embedding.register_forward_hook(lambda m, i, o: captured.__setitem__("h0", o))]
    for block in model.backbone.int_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: captured["h"].append(o[0])))

    def keep_out_block(module, inputs, output):  # must return None: a returned value replaces the output
        captured["x_E"].append(output[0])
        captured["x_F"].append(output[1])

    for block in model.backbone.out_blocks:
        hooks.append(block.register_forward_hook(keep_out_block))
    hooks.append(model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("backbone", o)))
    try:
        preds = model(batch)
    finally:
        for hook in hooks:
            hook.remove()

    energy = preds["y"]
    grads = torch.autograd.grad(energy.sum(), leaves)
    gradient_forces = -torch.cat(grads)
    bb = captured["backbone"]

    with torch.no_grad():
        graphs = model.backbone.get_graphs_and_indices(batch)
    (main, a2a, a2ee2a, qint, id_swap, trip_e2e, trip_a2e, trip_e2a, quad) = graphs
    natoms = torch.tensor([len(s["numbers"]) for s in structures])

    inputs = {
        "atomic_numbers": batch.atomic_numbers.clone(),
        "pos": batch.pos.detach().clone(),
        "cell": torch.stack([torch.tensor(s["cell"], dtype=torch.float64) for s in structures]),
        "pbc": torch.stack([torch.tensor(s["pbc"], dtype=torch.bool) for s in structures]),
        "tags": batch.tags.clone(),
        "natoms": natoms,
        "batch": batch.batch.clone(),
    }
    outputs = {
        "energy": energy.detach().clone(),
        "forces_direct": preds["force"].detach().clone(),
        "forces_gradient": gradient_forces.detach().clone(),
        "node_features": bb["energy"].detach().clone(),
        "atom_embedding": captured["h0"].detach().clone(),
        "block_h": torch.stack([h.detach() for h in captured["h"]]),
        "block_x_E": torch.stack([x.detach() for x in captured["x_E"]]),
    }
    sizes = {
        "num_edges_main": main["edge_index"].shape[1],
        "num_edges_a2a": a2a["edge_index"].shape[1],
        "num_edges_a2ee2a": a2ee2a["edge_index"].shape[1],
        "num_edges_qint": qint["edge_index"].shape[1],
        "num_triplets_e2e": trip_e2e["in"].numel(),
        "num_triplets_a2e": trip_a2e["in"].numel(),
        "num_triplets_e2a": trip_e2a["in"].numel(),
        "num_quad_triplets_in": quad["triplet_in"]["in"].numel(),
        "num_quad_triplets_out": quad["triplet_out"]["in"].numel(),
        "num_quadruplets": quad["out"].numel(),
    }
    graph = {k: torch.tensor(v, dtype=torch.long) for k, v in sizes.items()}
    graph["main_num_neighbors"] = main["num_neighbors"].clone()
    if keep_edges:
        graph.update(
            main_edge_index=main["edge_index"].clone(),
            main_cell_offset=main["cell_offset"].to(torch.float64).clone(),
            main_distance=main["distance"].detach().clone(),
            main_id_swap=id_swap.clone(),
            qint_edge_index=qint["edge_index"].clone(),
            qint_cell_offset=qint["cell_offset"].to(torch.float64).clone(),
            a2ee2a_edge_index=a2ee2a["edge_index"].clone(),
            a2ee2a_cell_offset=a2ee2a["cell_offset"].to(torch.float64).clone(),
        )
        outputs["edge_features"] = bb["forces"].detach().clone()
    return {"inputs": inputs, "outputs": outputs, "graph": graph}


def energy_of(model, structure, pos):
    from torch_geometric.data import Batch

    s = dict(structure, pos=pos)
    data = with_graphs(model, make_data(s, requires_grad=False), bool(s["pbc"].any()))
    with torch.no_grad():
        return float(model(Batch.from_data_list([data]))["y"][0])


def finite_difference_check(model, structure, forces, n_coords=6, step=FD_STEP, seed=0):
    """Largest |central difference - forces| over a few random coordinates (error ~ step**2)."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for flat in rng.choice(structure["pos"].size, size=n_coords, replace=False):
        i, k = divmod(int(flat), 3)
        plus, minus = structure["pos"].copy(), structure["pos"].copy()
        plus[i, k] += step
        minus[i, k] -= step
        fd = -(energy_of(model, structure, plus) - energy_of(model, structure, minus)) / (2 * step)
        worst = max(worst, abs(fd - float(forces[i, k])))
    return worst


def jmp_commit(jmp_src: Path) -> str:
    for candidate in (jmp_src / "COMMIT", jmp_src.parent / "COMMIT"):
        if candidate.exists():
            return candidate.read_text().strip()
    try:
        return subprocess.check_output(["git", "-C", str(jmp_src), "rev-parse", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def atomic_torch_save(obj, path: Path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jmp-src", type=Path, required=True, help="JMP checkout (the folder holding src/jmp)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weight-seed", type=int, default=1234)
    parser.add_argument("--scale-seed", type=int, default=99)
    parser.add_argument("--rattle-seed", type=int, default=126, help="first seed tried, bumped until the margins hold (126 is the first from 0 that does)")
    parser.add_argument("--rattle-std", type=float, default=0.05)
    parser.add_argument("--check", action="store_true", help="re-run for determinism and finite-difference forces")
    args = parser.parse_args(argv)

    src = args.jmp_src / "src" if (args.jmp_src / "src" / "jmp").is_dir() else args.jmp_src
    if not (src / "jmp").is_dir():
        parser.error(f"{args.jmp_src} does not contain src/jmp")
    torch.set_default_dtype(torch.float64)
    install_stand_ins()
    sys.path.insert(0, str(src))
    import jmp.utils.goc_graph as goc_graph

    goc_graph.radius_graph = _radius_graph_all_pairs

    rattle_seed = args.rattle_seed
    for _ in range(200):
        structures = build_structures(rattle_seed, args.rattle_std)
        margins = {name: neighbour_margins(s) for name, s in structures.items()}
        if all(min(m) > MIN_MARGIN for m in margins.values()):
            break
        rattle_seed += 1
    else:
        raise SystemExit("no rattle seed gives clear neighbour margins")

    model, config, scale_values = build_model(args.weight_seed, args.scale_seed)
    order = ["molecule", "slab", "bulk"]
    cases = {name: run_case(model, [structures[name]], keep_edges=True) for name in order}
    cases["batch"] = run_case(model, [structures[n] for n in order], keep_edges=False)

    checks = {}
    if args.check:
        again = {name: run_case(model, [structures[name]], keep_edges=True) for name in order}
        again["batch"] = run_case(model, [structures[n] for n in order], keep_edges=False)
        checks["rerun_bitwise_identical"] = all(
            torch.equal(cases[c][g][k], again[c][g][k]) for c in cases for g in ("outputs", "graph") for k in cases[c][g]
        )
        checks["finite_difference_step_angstrom"] = FD_STEP
        checks["finite_difference_max_abs_err"] = {
            name: finite_difference_check(model, structures[name], cases[name]["outputs"]["forces_gradient"])
            for name in order
        }
        offset = 0
        batch_err = {}
        for name in order:
            n = len(structures[name]["numbers"])
            for key in ("node_features", "forces_direct", "forces_gradient"):
                diff = (cases["batch"]["outputs"][key][offset : offset + n] - cases[name]["outputs"][key]).abs().max()
                batch_err[f"{name}.{key}"] = float(diff)
            offset += n
        checks["batch_vs_single_max_abs_err"] = batch_err
    for name, case in cases.items():
        for key, value in case["outputs"].items():
            if not torch.isfinite(value).all():
                raise SystemExit(f"non-finite {key} in case {name}")

    args.out.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(state_dict, args.out / "jmp_state_dict.pt")
    atomic_torch_save({"fixture_version": torch.tensor(FIXTURE_VERSION), "cases": cases}, args.out / "reference_cases.pt")

    import lightning
    import torch_geometric

    meta = {
        "fixture_version": FIXTURE_VERSION,
        "generator": "tools/make_gemnet_reference.py",
        "jmp": {"repo": "facebookresearch/JMP", "commit": jmp_commit(args.jmp_src),
                "module": "jmp.tasks.finetune.md22.MD22Model (EnergyForcesModelBase, direct forces)"},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                     "torch_geometric": torch_geometric.__version__, "lightning": lightning.__version__},
        "seeds": {"weight_seed": args.weight_seed, "scale_seed": args.scale_seed, "rattle_seed": rattle_seed,
                  "rattle_std_angstrom": args.rattle_std},
        "dtype": "float64 everywhere except JMP's float32 cell/offset math (exact: cells on a 2^-10 Å grid)",
        "units": {"pos": "Å", "cell": "Å (rows are lattice vectors)", "energy": "model units (random weights)",
                  "forces": "energy units / Å"},
        "backbone_config": json.loads(json.dumps(dict(config.backbone), default=str)),
        "embedding_config": {"num_elements": config.embedding.num_elements,
                             "embedding_size": config.embedding.embedding_size},
        "output_config": {"num_mlps": config.output.num_mlps, "activation": config.activation},
        "graph": {"cutoff_angstrom": {"main": CUTOFF, "aeaint": CUTOFF, "qint": CUTOFF, "aint": CUTOFF},
                  "max_neighbors": {"main": 30, "aeaint": 20, "qint": 8, "aint": 1000},
                  "qint_tags": list(config.backbone.qint_tags),
                  "pbc_graph": {"molecule": False, "slab": True, "bulk": True},
                  "neighbour_margins_angstrom": {n: {"to_cutoff": m[0], "at_max_neighbor_cuts": m[1]}
                                                 for n, m in margins.items()}},
        "scale_factors": scale_values,
        "checks": checks,
        "files": {
            "jmp_state_dict.pt": "dict[str, Tensor] == JMP fine-tuning checkpoint['state_dict'] (Lightning module keys)",
            "reference_cases.pt": "{'fixture_version': Tensor, 'cases': {case: {'inputs': {...}, 'outputs': {...}, 'graph': {...}}}}",
        },
        "cases": {"molecule": "ethanol, rattled, no cell, tags 2", "slab": "Cu(111) 2x2x3 + CO on top, tags 0/1/2, pbc TTT",
                  "bulk": "rock-salt NaCl conventional cell, sheared, rattled, tags 2, pbc TTT",
                  "batch": "molecule, slab, bulk collated in that order (graphs built per structure, as JMP's data pipeline does)"},
        "tensors": {
            "inputs.atomic_numbers": "(N,) int64 atomic numbers Z (JMP embeds row Z-1)",
            "inputs.pos": "(N, 3) float64 Å",
            "inputs.cell": "(B, 3, 3) float64 Å, zeros for the molecule",
            "inputs.pbc": "(B, 3) bool",
            "inputs.tags": "(N,) int64; quadruplet graph keeps edges touching tags in qint_tags",
            "inputs.natoms": "(B,) int64",
            "inputs.batch": "(N,) int64 structure index of each atom",
            "outputs.energy": "(B,) float64: sum over atoms of out_energy(node_features)",
            "outputs.forces_direct": "(N, 3) direct-forces head: sum over main edges s->t into t of out_forces(edge_features) * V_st",
            "outputs.forces_gradient": "(N, 3) -d energy / d pos for the same weights (graph built from pos inside autograd)",
            "outputs.node_features": "(N, emb_size_atom) backbone output 'energy' = out_mlp_E(cat(x_E of all out_blocks)): what out_energy consumes",
            "outputs.atom_embedding": "(N, emb_size_atom) embedding(Z-1), the h fed to the backbone",
            "outputs.block_h": "(num_blocks, N, emb_size_atom) atom embedding h after each interaction block",
            "outputs.block_x_E": "(num_blocks+1, N, emb_size_atom) atom output of each out_block (0 = before any interaction)",
            "outputs.edge_features": "(E_main, emb_size_edge) backbone output 'forces' = out_mlp_F(cat(x_F)), single-structure cases only",
            "graph.num_*": "int64 scalars: edges per graph type (main after symmetrisation, qint after tag mask), triplets, quadruplets",
            "graph.main_num_neighbors": "(B,) main edges per structure after symmetrisation",
            "graph.main_edge_index": "(2, E_main) [source s, target t] after JMP's symmetrize_edges (single-structure cases)",
            "graph.main_cell_offset": "(E_main, 3) integer image offsets (float64) such that vec s->t uses pos[s] + offset@cell",
            "graph.main_distance": "(E_main,) Å",
            "graph.main_id_swap": "(E_main,) index of the reverse edge",
            "graph.qint_edge_index / qint_cell_offset / a2ee2a_edge_index / a2ee2a_cell_offset": "unsymmetrised sub-graphs",
        },
        "state_dict_mapping": {
            "embedding.weight": "(num_elements, emb_size_atom) atom-type embedding, row Z-1",
            "backbone.*": "GemNetOCBackbone (bases.*, int_blocks.i.*, out_blocks.i.*, out_mlp_E.*, out_mlp_F.*)",
            "backbone.out_blocks.i.layers.* == backbone.out_blocks.i.seq_energy_pre.*": "same tensors under two names (module alias)",
            "*.scale_factor": "ScaleFactor buffers (0-dim); 0 would mean 'identity' in JMP, all set non-zero here",
            "backbone.bases.*.rbf.offset / temps": "Gaussian RBF buffers (not trainable here)",
            "out_energy.{0,2,4,6,8}.weight": "energy head: Linear layers (no bias) with ScaledSiLU between",
            "out_forces.{0,2,4,6}.weight/bias, out_forces.8.weight": "direct-forces head: last Linear has no bias (output dim 1)",
        },
    }
    atomic_write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n", args.out / "meta.json")
    sizes = {p.name: p.stat().st_size for p in args.out.iterdir() if p.is_file()}
    print(json.dumps({"sizes_bytes": sizes, "checks": checks, "rattle_seed": rattle_seed,
                      "graph": {c: {k: int(v) for k, v in cases[c]["graph"].items() if k.startswith("num_")} for c in cases}},
                     indent=1))


if __name__ == "__main__":
    main()
