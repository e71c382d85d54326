"""SevenNet-0 as a feature extractor (``--backbone sevennet-0``, the offline pretrained default).

The weights (SevenNet-0, 11 Jul 2024: trained on MPtrj, i.e. inorganic crystals; MIT licence) ship
inside the ``sevenn`` wheel, so nothing is downloaded: when the file is not there, one line says so.

Features are invariant (l = 0) node features: ``layer="final"`` the 128 scalars after the last
interaction block (its gate), ``layer="all"`` the scalars after every interaction block,
concatenated (5 x 128). Equivariant (l > 0) channels are left out: they rotate with the structure.

SevenNet builds one neighbour list per structure in Python (matscipy/ase). Here the whole batch
goes through one call of fastcsi's radius graph and one forward pass, with SevenNet's own modules up
to the requested block (the energy head and forces are never computed). Edge conventions: SevenNet's
``edge_index`` is (centre i, neighbour j) with ``edge_vec = pos[j] - pos[i] + shift @ cell``, which
is our graph's (target, source) pair and ``vectors``.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from fastcsi.errors import FastCSIError
from fastcsi.extractors import ExtractorBase, import_optional, state_fingerprint, timed_forward

LAYERS = ("final", "all")
WHEEL_MODEL = "SEVENNET_0_11Jul2024"  # the sevenn._const name of the SevenNet-0 checkpoint in the wheel


def _wheel_checkpoint(backbone) -> Path:
    import_optional("sevenn", backbone)
    import sevenn._const as const

    path = Path(getattr(const, WHEEL_MODEL))
    if not path.is_file():
        # sevenn would download it; fastcsi never reaches the network at run time.
        raise FastCSIError(f"--backbone {backbone.name}: {path} is not in the installed sevenn wheel; reinstall "
                           "sevenn (fastcsi does not download weights)")
    return path


def _build_model(path: Path):
    from sevenn.util import load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # accelerator hints and version notes meant for training users
        checkpoint = load_checkpoint(str(path))
        model = checkpoint.build_model()
    return model, checkpoint.config


class SevenNetExtractor(ExtractorBase):
    """SevenNet's embedding and interaction blocks, fed fastcsi's batched radius graphs."""

    def __init__(self, model, config, path: Path, layer: str, device, dtype, name: str):
        if layer not in LAYERS:
            raise FastCSIError(f"--layer {layer!r}: SevenNet features are 'final' (last interaction) or 'all' "
                               "(every interaction's scalars)")
        self.name = name
        self.layer = layer
        self.kind = "node"
        self.pretrained = True
        self.device = torch.device(device)
        self.dtype = dtype
        self.cutoff = float(config["cutoff"])
        self.elements = frozenset(int(z) for z in model.type_map)
        self.description = f"{name} ({path.name} from the sevenn wheel, trained on MPtrj)"
        n_blocks = int(config["num_convolution_layer"])
        names = list(model._modules)
        self._gates = [f"{k}_equivariant_gate" for k in range(n_blocks)]
        if any(g not in names for g in self._gates):
            raise FastCSIError(f"{path}: not a SevenNet layout this adapter knows (no {self._gates[-1]})")
        # every module up to the last interaction's gate: the readout, energy and forces are never run
        self._modules_run = names[: names.index(self._gates[-1]) + 1]
        self._scalar_dims = {g: self._scalars_of(model._modules[g]) for g in self._gates}
        wanted = self._gates if layer == "all" else self._gates[-1:]
        self.dim = sum(self._scalar_dims[g] for g in wanted)
        self._wanted = wanted
        digest = hashlib.sha256(f"{name}|{layer}|node|".encode())
        state_fingerprint(digest, model)
        self.fingerprint = digest.hexdigest()[:32]
        self.model = self._frozen(model, self.device, dtype)
        self._type_map = self.model.z_to_onehot_tensor.to(self.device)

    @staticmethod
    def _scalars_of(gate) -> int:
        """How many leading channels of the gate's output are l = 0 (e3nn orders irreps by l here)."""
        irreps = gate.gate.irreps_out
        count = 0
        for mul, ir in irreps:
            if ir.l != 0:
                break
            count += mul
        return count

    def _graph(self, batch) -> dict:
        from fastcsi.graph import radius_graph

        graph = radius_graph(batch, self.cutoff)
        import sevenn._keys as KEY

        return {
            KEY.ATOMIC_NUMBERS: batch.atomic_numbers,
            KEY.POS: batch.pos,
            KEY.EDGE_IDX: torch.stack([graph.edge_index[1], graph.edge_index[0]]),
            KEY.EDGE_VEC: graph.vectors,
            KEY.BATCH: batch.batch,
            KEY.NUM_ATOMS: batch.natoms,
        }

    def _run(self, data: dict) -> torch.Tensor:
        return run_blocks(self.model, data, self._modules_run, self._wanted, self._scalar_dims, self._type_map)

    def features(self, batch, profiler=None) -> torch.Tensor:
        return timed_forward(profiler, lambda: self._graph(batch), self._run)

    def features_per_structure(self, atoms_list) -> list[torch.Tensor]:
        """SevenNet's own path, for checks and the speed comparison: its per-structure neighbour list
        (``unlabeled_atoms_to_graph``) and one forward pass per structure."""
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        out = []
        with torch.inference_mode():
            for atoms in atoms_list:
                data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff))
                data = data.to(self.device)
                for key in ("pos", "edge_vec"):
                    data[key] = data[key].to(self.dtype)
                out.append(self._run(data))
        return out


def run_blocks(model, data, modules_run, wanted, scalar_dims, type_map) -> torch.Tensor:
    """SevenNet's modules in order up to the last of ``modules_run``, keeping the scalar channels
    after each gate in ``wanted`` (concatenated). ``type_map`` is the model's atomic number -> type
    index table, already on the data's device (a plain tensor, not a buffer: copied once, not per batch)."""
    import sevenn._keys as KEY

    data[KEY.NODE_FEATURE] = type_map[data[KEY.ATOMIC_NUMBERS]]
    kept = []
    dtype = data[KEY.EDGE_VEC].dtype
    for name in modules_run:
        module = model._modules[name]
        data = module(data)
        if name == "onehot_idx_to_onehot":  # SevenNet makes its one-hot float32 whatever the model's dtype
            for key in {module.key_output, module.key_additional_output} - {None}:
                data[key] = data[key].to(dtype)
        if name in wanted:
            kept.append(data[KEY.NODE_FEATURE][:, : scalar_dims[name]])
    return kept[0] if len(kept) == 1 else torch.cat(kept, dim=1)


def load(backbone, model_part, *, layer, kind, device, dtype):
    if kind != "node":
        raise FastCSIError(f"--kind {kind!r}: {backbone.name} gives node features only")
    with warnings.catch_warnings():
        # e3nn and sevenn script their modules on import and build (torch.jit deprecation notes)
        warnings.simplefilter("ignore", DeprecationWarning)
        path = _wheel_checkpoint(backbone)
        model, config = _build_model(path)
    return SevenNetExtractor(model, config, path, layer, device, dtype, backbone.name)
