"""A user's fairchem eSEN or UMA checkpoint as a feature extractor (``--backbone fairchem:FILE[:TASK]``).

fairchem-core 2.x (extra ``fairchem``) builds both families from one backbone class: eSEN is
``eSCNMDBackbone`` (or the MoE class with no experts), UMA is ``eSCNMDMoeBackbone``. EquiformerV2 is
not in fairchem-core 2.x any more (its checkpoints need fairchem 1.x), so it is not offered here.

Reading the file: fairchem saves an ``MLIPInferenceCheckpoint`` dataclass with ``torch.save`` and
reads it back with a full unpickle. Here it goes through fastcsi's allow-list unpickler
(:func:`fastcsi.safe_pickle.load_torch_foreign`), so nothing the file names is ever run: the
dataclass comes back as an inert record holding the plain config dict and the state dicts. Only the
backbone is built, from an allow-listed class of fairchem with the checkpoint's keyword arguments
(never hydra's ``_target_``), and given the EMA weights, which fairchem's own predictor uses.

Features: the l = 0, m = 0 coefficient of the backbone's final node embedding (after its last
layer and final norm), ``sphere_channels`` wide; the l > 0 coefficients rotate with the structure
and are left out. The heads are never run.

Graphs: fairchem's backbone takes a precomputed graph when ``otf_graph`` is off, in the same
convention as fastcsi's radius graph (edge_index row 0 = neighbour j, row 1 = centre i, vector =
pos[j] + shift @ cell - pos[i]), so the whole batch gets one call of fastcsi's radius graph with the
checkpoint's cutoff, then fairchem's ``max_neighbors`` rule (see ``_graph``). Every structure gets
charge 0 and spin 0 (fairchem's own defaults when ``atoms.info`` gives none), and the dataset
embedding of TASK (UMA: omat, omol, oc20, odac, omc; one of the checkpoint's own).
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch

from fastcsi.errors import FastCSIError
from fastcsi.extractors import ExtractorBase, import_optional, state_fingerprint, timed_forward

# the backbone classes this adapter builds, by the names fairchem's configs use for them
BACKBONE_CLASSES = {
    "escnmd_backbone": ("fairchem.core.models.uma.escn_md", "eSCNMDBackbone"),
    "fairchem.core.models.uma.escn_md.eSCNMDBackbone": ("fairchem.core.models.uma.escn_md", "eSCNMDBackbone"),
    "escnmd_moe_backbone": ("fairchem.core.models.uma.escn_moe", "eSCNMDMoeBackbone"),
    "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone": ("fairchem.core.models.uma.escn_moe",
                                                           "eSCNMDMoeBackbone"),
}


class _FairchemInput(dict):
    """The batch dict fairchem's backbone reads: it calls ``get(key, default=...)`` as on its AtomicData."""

    def get(self, key, default=None):
        return super().get(key, default)


def _unwrapped(value):
    """The content of an OmegaConf container or value node as the allow-list reader records it
    (``DictConfig`` / ``ListConfig`` keep it in ``_content``, nodes in ``_val``); anything else as is.
    fairchem's trainers may save ``model_config`` as a DictConfig rather than a dict."""
    from fastcsi.safe_pickle import Record, record_fields

    if isinstance(value, Record) and value.module.startswith("omegaconf."):
        fields = record_fields(value)
        if value.name in ("DictConfig", "ListConfig"):
            return fields.get("_content")
        if "_val" in fields:
            return fields["_val"]
    return value


def _plain(value, where: str):
    """``value`` if it is plain config data (dicts, lists, text, numbers), else one refusal line."""
    value = _unwrapped(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise FastCSIError(f"{where}: the backbone config holds a {type(value).__name__}, not plain settings; "
                       "not a fairchem inference checkpoint this adapter reads")


def read_checkpoint(path: Path) -> tuple[dict, dict, str | None]:
    """(backbone config, backbone state dict, model_id) of a fairchem inference checkpoint, read
    without running anything the file names."""
    from fastcsi.safe_pickle import load_torch_foreign, record_fields

    fields = record_fields(load_torch_foreign(path, "fairchem checkpoint"))
    model_config = _unwrapped(fields.get("model_config"))
    if not isinstance(model_config, dict) or not isinstance(_unwrapped(model_config.get("backbone")), dict):
        raise FastCSIError(f"{path}: not a fairchem inference checkpoint (no model_config with a backbone)")
    config = _plain(model_config["backbone"], str(path))
    model_id = _unwrapped(model_config.get("model_id"))
    model_id = model_id if isinstance(model_id, str) and model_id.strip() else None

    # fairchem predicts with the EMA weights (an AveragedModel's: "module." + the model's keys)
    ema = fields.get("ema_state_dict")
    if isinstance(ema, dict) and any(str(k).startswith("module.backbone.") for k in ema):
        state, prefix = ema, "module.backbone."
    else:
        state, prefix = fields.get("model_state_dict"), "backbone."
    if not isinstance(state, dict):
        raise FastCSIError(f"{path}: not a fairchem inference checkpoint (no model_state_dict)")
    backbone_state = {k[len(prefix):]: v for k, v in state.items()
                      if isinstance(k, str) and k.startswith(prefix) and torch.is_tensor(v)}
    if not backbone_state:
        raise FastCSIError(f"{path}: the fairchem checkpoint holds no backbone weights")
    return config, backbone_state, model_id


def build_backbone(path: Path, config: dict, state: dict, model_id: str | None):
    """fairchem's backbone class named by ``config["model"]`` (allow-listed), built from the
    checkpoint's keyword arguments and loaded strictly with its weights."""
    import importlib

    from fairchem.core.models.uma.compat import UMA_1P1_MODEL_ID, get_uma_version

    name = config.get("model")
    if name not in BACKBONE_CLASSES:
        raise FastCSIError(f"{path}: backbone {name!r} is not one this adapter builds (eSEN / UMA: "
                           f"{', '.join(sorted(k for k in BACKBONE_CLASSES if '.' not in k))})")
    version = get_uma_version({"backbone": config, "model_id": model_id})
    if version == "unidentified":
        raise FastCSIError(f"{path}: a UMA checkpoint with no model_id (UMA 1.0); the installed fairchem-core "
                           "no longer builds it")
    if version == "1.1":  # fairchem back-fills the id of UMA 1.1, which shipped without one
        model_id = UMA_1P1_MODEL_ID
    module, cls_name = BACKBONE_CLASSES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    kwargs = {k: v for k, v in config.items() if k != "model"}
    # fastcsi hands the backbone its graph; the module must not build one (nor checkpoint activations)
    kwargs["otf_graph"] = False
    kwargs["activation_checkpointing"] = False
    # fairchem logs deprecation notes for its own config keys (dataset_list) at WARNING on the root
    # logger: meant for its trainers, not for a user reading features
    disabled_before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise FastCSIError(f"{path}: the installed fairchem-core cannot build this backbone ({exc})") from None
    finally:
        logging.disable(disabled_before)
    backbone.model_id = model_id
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ from the config's
        first = str(exc).strip().splitlines()[-1].strip()[:160]
        raise FastCSIError(f"{path}: the backbone weights do not match its config ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        shown = (result.missing_keys or result.unexpected_keys)[:3]
        raise FastCSIError(f"{path}: the backbone weights do not match its config "
                           f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected, "
                           f"e.g. {', '.join(shown)})")
    return backbone


class FairchemExtractor(ExtractorBase):
    """fairchem's eSEN / UMA backbone, fed fastcsi's batched radius graphs."""

    def __init__(self, backbone, path: Path, task: str | None, device, dtype, name: str):
        self.name = name
        self.layer = "final"
        self.kind = "node"
        self.pretrained = True
        self.device = torch.device(device)
        self.dtype = dtype
        self.cutoff = float(backbone.cutoff)
        self.max_neighbors = int(backbone.max_neighbors)
        self.strict_neighbors = bool(getattr(backbone, "enforce_max_neighbors_strictly", False))
        # fairchem embeds atomic numbers 0 .. max_num_elements - 1 (0 is no element)
        self.elements = frozenset(range(1, int(backbone.max_num_elements)))
        self.dim = int(backbone.sphere_channels)
        self.task = task
        kind = type(backbone).__name__
        self.description = f"fairchem {kind} from {path.name}" + (f" (task {task})" if task else "")
        digest = hashlib.sha256(f"fairchem|{kind}|{task}|{self.max_neighbors}|final|node|".encode())
        state_fingerprint(digest, backbone)
        self.fingerprint = digest.hexdigest()[:32]
        self.model = self._frozen(backbone, self.device, dtype)

    def _system_fields(self, batch) -> dict:
        n = int(batch.natoms.shape[0])
        zeros = torch.zeros(n, dtype=torch.long, device=self.device)
        return {"charge": zeros, "spin": zeros.clone(), "dataset": [self.task] * n}

    def _graph(self, batch) -> _FairchemInput:
        import dataclasses

        from fastcsi.graph import radius_graph, select_neighbors

        graph = radius_graph(batch, self.cutoff)
        # fairchem ranks neighbours by SQUARED distance, its 0.01 degeneracy tolerance in Å^2: the
        # same tie rule applied to squared distances keeps exactly its edges (the backbone recomputes
        # every vector from the shifts, so the squared values go nowhere else)
        squared = dataclasses.replace(graph, distances=graph.distances.square())
        graph = select_neighbors(squared, max_neighbors=self.max_neighbors, strict=self.strict_neighbors)
        structure_of_edge = batch.batch[graph.edge_index[1]]
        return _FairchemInput(
            pos=batch.pos, atomic_numbers=batch.atomic_numbers.long(), batch=batch.batch, natoms=batch.natoms,
            cell=batch.cell, pbc=batch.pbc, edge_index=graph.edge_index, cell_offsets=graph.cell_offsets,
            nedges=torch.bincount(structure_of_edge, minlength=int(batch.natoms.shape[0])),
            **self._system_fields(batch))

    def _run(self, data) -> torch.Tensor:
        return self.model(data)["node_embedding"][:, 0, :]

    def features(self, batch, profiler=None) -> torch.Tensor:
        return timed_forward(profiler, lambda: self._graph(batch), self._run)

    def features_per_structure(self, atoms_list) -> list[torch.Tensor]:
        """fairchem's own path, for checks and the speed comparison: ``AtomicData.from_ase`` and the
        backbone building its own graph, one structure per forward pass."""
        from fairchem.core.datasets.atomic_data import AtomicData, atomicdata_list_to_batch

        out = []
        saved = (self.model.otf_graph, self.model.always_use_pbc)
        self.model.otf_graph, self.model.always_use_pbc = True, False
        try:
            with torch.inference_mode():
                for atoms in atoms_list:
                    data = AtomicData.from_ase(atoms, task_name=self.task, r_edges=False, target_dtype=self.dtype)
                    data = atomicdata_list_to_batch([data]).to(self.device)
                    data.pos = data.pos.to(self.dtype)
                    data.cell = data.cell.to(self.dtype)
                    out.append(self._run(data))
        finally:
            self.model.otf_graph, self.model.always_use_pbc = saved
        return out


def _file_and_task(model_part: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:TASK`` (a task is split off only when FILE alone is not an existing file)."""
    path = Path(model_part).expanduser()
    if path.is_file() or ":" not in model_part:
        return path, None
    head, _, task = model_part.rpartition(":")
    return Path(head).expanduser(), task.strip() or None


def _choose_task(path: Path, backbone, task: str | None) -> str | None:
    if not getattr(backbone, "use_dataset_embedding", False):
        if task is not None:
            raise FastCSIError(f"--backbone fairchem:{path}:{task}: this checkpoint has no dataset embedding; "
                               "give the file alone")
        return None
    tasks = sorted(backbone.dataset_mapping)
    if task is None:
        if len(tasks) == 1:
            return tasks[0]
        raise FastCSIError(f"--backbone fairchem:{path}: this model embeds a task; give one as "
                           f"fairchem:FILE:TASK with TASK one of {', '.join(tasks)}")
    if task not in tasks:
        raise FastCSIError(f"--backbone fairchem:{path}:{task}: unknown task {task!r}; this checkpoint has "
                           f"{', '.join(tasks)}")
    return task


def load(backbone, model_part, *, layer, kind, device, dtype):
    if layer != "final" or kind != "node":
        raise FastCSIError(f"--layer {layer!r} / --kind {kind!r}: fairchem gives the invariant node embedding "
                           "of its final layer only (layer final, kind node)")
    path, task = _file_and_task(model_part)
    if not path.is_file():
        # fairchem would fetch a named model from its hub; fastcsi reads only files already on disk
        raise FastCSIError(f"--backbone fairchem:{model_part}: {path} is not a file (give the path of a fairchem "
                           "checkpoint on disk; fastcsi does not download models)")
    import_optional("fairchem.core", backbone)
    config, state, model_id = read_checkpoint(path)
    module = build_backbone(path, config, state, model_id)
    task = _choose_task(path, module, task)
    name = f"{backbone.name}:{path.name}" + (f":{task}" if task else "")
    return FairchemExtractor(module, path, task, device, dtype, name)
