"""A trained model, ready to predict: what ``fastcsi finetune`` / ``fastcsi pretrain`` wrote, read back.

``load_model(source, device="auto", dtype="float32")`` accepts

* a fine-tuning run directory or its ``final.pt`` (``fastcsi.train.finetune.save_model``): weights
  with their heads, normaliser (per-element reference energies, scales), target, reduction, force
  mode, graph settings (inside the hyperparameters) and the elements of the training data;
* a pretraining run directory (``pretrain.json`` + the EMA weights of ``last.pt``: energy and
  force heads trained on the upstream data, the pretraining normaliser).

Everything else is refused with one :class:`FastCSIError` line: a directory without a finished
model, a head-less ``backbone.pt``, a training checkpoint (``best.pt``/``last.pt`` alone), a
checkpoint of another code base or architecture (no normaliser fastcsi could trust).

Physical outputs: energy in eV (float64 even for a float32 network: the reference energies of a
molecule are ~1e3-1e4 eV), forces in eV/Å, stress in eV/Å^3 (ASE's sign: (1/V) dE/d(strain)),
graph-level targets in their native unit. Forces of a model without a direct force head (gradient
forces, or a fine-tune on energy alone) and stress are derivatives of the energy taken here, one
backward pass for both: positions and cell are deformed by a symmetric strain (r' = r (I + e),
cell' = cell (I + e)) before the graph is built, so the graph's edge vectors carry both.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from fastcsi.errors import FastCSIError

ARCHITECTURE = "gemnet-oc"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise FastCSIError(f"dtype {dtype!r}: choose float32 or float64")


def element_names(numbers) -> str:
    from fastcsi.data.base import chemical_symbols

    symbols = chemical_symbols()
    return ", ".join(f"{symbols[z] if 0 < z < len(symbols) else '?'} (Z={z})" for z in sorted(int(n) for n in numbers))


class TrainedModel:
    """A GemNet-OC with its normaliser, in eval mode on one device and dtype.

    ``properties``: what it predicts, ``("energy", "forces", "stress")`` for an energy model with
    gradient (or derived) forces, ``("energy", "forces")`` with a direct force head, ``(target,)``
    for a graph-level target. ``trained_targets``: what its training fitted. ``elements``: atomic
    numbers of its training data (other elements are refused: their reference energy was never fitted).
    """

    def __init__(self, network, elements, trained_targets, direct_forces: bool, source: dict,
                 device="auto", dtype="float32"):
        from fastcsi.train.pretrain import resolve_device

        self.device = torch.device(resolve_device(device))
        self.dtype = resolve_dtype(dtype)
        # the backbone only: the reference energies stay float64 (a float32 -4209 eV loses its meV)
        network.backbone.to(self.dtype)
        self.network = network.to(self.device).eval()
        for p in self.network.parameters():
            p.requires_grad_(False)  # inference: autograd only towards positions and strain
        self.elements = frozenset(int(z) for z in elements) if elements else None
        self.trained_targets = tuple(trained_targets)
        self.target = network.target
        self.direct_forces = bool(direct_forces)
        self.source = dict(source)
        if self.target == "energy":
            self.properties = ("energy", "forces") if self.direct_forces else ("energy", "forces", "stress")
        else:
            self.properties = (self.target,)

    @property
    def hparams(self) -> dict:
        return self.network.backbone.hparams

    def describe(self) -> dict:
        """Plain-value summary for the records of predict / evaluate."""
        return {"source": self.source, "properties": list(self.properties),
                "trained_targets": list(self.trained_targets),
                "elements": sorted(self.elements) if self.elements else None,
                "forces": "direct" if self.direct_forces else "-dE/dx", "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "hparams": self.hparams}

    # ------------------------------------------------------------------ checks
    def check_properties(self, properties) -> tuple:
        properties = tuple(properties)
        missing = [p for p in properties if p not in self.properties]
        if missing:
            why = " (stress needs forces = -dE/dx, not a direct force head)" if missing[0] == "stress" else ""
            raise FastCSIError(f"the model has no head for {missing[0]!r}: it predicts "
                               f"{', '.join(self.properties)}{why}")
        return properties

    def check_structure(self, structure, where: str):
        structure.validate(where=where)
        if self.elements is not None:
            unseen = set(int(z) for z in np.unique(structure.atomic_numbers)) - self.elements
            if unseen:
                raise FastCSIError(f"{where}: element {element_names(unseen)} was not in the model's training data "
                                   f"({element_names(self.elements)})")
        if int(structure.atomic_numbers.max()) > self.network.backbone.num_elements:
            raise FastCSIError(f"{where}: the model embeds atomic numbers 1..{self.network.backbone.num_elements} only")

    # ------------------------------------------------------------------ prediction
    def predict(self, structures, properties=None, where=None) -> list[dict]:
        """One dict per structure: ``energy`` (float, eV), ``forces`` ((n, 3) eV/Å), ``stress``
        ((3, 3) eV/Å^3, fully periodic structures only) or the graph-level target, float64 numpy.
        ``where(i)`` names structure ``i`` in error messages."""
        structures = list(structures)
        properties = self.check_properties(properties or self.properties)
        for i, s in enumerate(structures):
            self.check_structure(s, where(i) if where else f"structure {i}")
        if not structures:
            return []
        from fastcsi.data import collate

        batch = collate(structures, dtype=self.dtype, device=self.device)
        volume = torch.linalg.det(batch.cell.to(torch.float64)).abs()
        periodic = batch.pbc.all(dim=1) & (volume > 1e-8)
        want_stress = "stress" in properties and bool(periodic.any())
        want_forces = "forces" in properties
        out = self._forward(batch, want_forces, volume if want_stress else None)
        results = [{} for _ in structures]
        for name in properties:
            if name == "forces":
                parts = out["forces"].split(batch.natoms.tolist())
                for r, f in zip(results, parts):
                    r["forces"] = f.detach().to(torch.float64).cpu().numpy()
            elif name == "stress":
                stress = out["stress"] if want_stress else None
                for k, r in enumerate(results):
                    r["stress"] = stress[k].detach().cpu().numpy() if want_stress and bool(periodic[k]) else None
            else:
                values = out[name].detach().to(torch.float64).cpu().numpy()
                for r, v in zip(results, values):
                    r[name] = float(v)
        return results

    def _forward(self, batch, want_forces: bool, volume=None) -> dict:
        """Network outputs, plus -dE/dx forces (no direct head) and, given the cell ``volume``
        of each structure, the stress."""
        want_stress = volume is not None
        derive = (want_forces and not self.direct_forces) or want_stress
        if not derive:
            with torch.no_grad():
                return self.network(batch)
        with torch.enable_grad():
            pos = batch.pos.detach().requires_grad_(True)
            inputs, deformed = [pos], {"pos": pos}
            if want_stress:
                strain = torch.zeros((batch.num_structures, 3, 3), dtype=pos.dtype, device=pos.device,
                                     requires_grad=True)
                deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + 0.5 * (strain + strain.transpose(1, 2))
                deformed["pos"] = torch.bmm(pos.unsqueeze(1), deform.index_select(0, batch.batch)).squeeze(1)
                deformed["cell"] = torch.bmm(batch.cell, deform)
                inputs.append(strain)
            out = dict(self.network(dataclasses.replace(batch, **deformed)))
            grads = torch.autograd.grad(out["energy"].sum(), inputs, allow_unused=True)
        if not self.direct_forces:
            out["forces"] = -grads[0] if grads[0] is not None else torch.zeros_like(pos)
        if want_stress:
            dE = grads[1] if grads[1] is not None else torch.zeros_like(strain)
            out["stress"] = dE.to(torch.float64) / volume.clamp(min=1e-12)[:, None, None]  # molecules: unused
        return out


# ---------------------------------------------------------------------------------------- loading
def load_model(source, device="auto", dtype="float32") -> TrainedModel:
    """A :class:`TrainedModel` from a run directory or ``final.pt`` (see the module docstring)."""
    path = Path(source)
    record = _read_record(path)
    if record.get("architecture") != ARCHITECTURE:
        raise FastCSIError(f"{path}: a model of architecture {record.get('architecture')!r}; fastcsi runs "
                           f"{ARCHITECTURE} models only")
    return from_record(record, device, dtype)


def from_record(record: dict, device="auto", dtype="float32") -> TrainedModel:
    """Build the network of a model record (the payload of ``final.pt``)."""
    from fastcsi.model import GemNetOC
    from fastcsi.model.gemnet_oc.layers import skip_weight_init
    from fastcsi.train.normalization import NormalizedModel, Normalizer

    where = record.get("source", {}).get("path", "model")
    hparams = dict(record["hparams"])
    direct = bool(hparams.get("regress_forces")) and bool(hparams.get("direct_forces"))
    # Without a direct head we take forces (and stress) as derivatives ourselves, so the network is
    # built energy-only: the same parameters, and no detached positions inside its forward.
    build = hparams if direct else {**hparams, "regress_forces": False}
    try:
        with skip_weight_init():  # every weight is loaded below
            gemnet = GemNetOC(**build)
        gemnet.load_state_dict(record["weights"], strict=True)
        if record.get("ema_shadow"):
            # through the parameters, as training's EMA does: tied weights (two state_dict names,
            # one tensor) get the average once, whichever name the state_dict lists last
            with torch.no_grad():
                for name, p in gemnet.named_parameters():
                    p.copy_(record["ema_shadow"][name])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise FastCSIError(f"{where}: weights do not fit the stored GemNet-OC hyperparameters ({first})") from None
    network = NormalizedModel(gemnet, Normalizer.from_dict(record["normalizer"]),
                              gradient_forces=bool(record.get("gradient_forces")),
                              target=record.get("target", "energy"), reduction=record.get("reduction", "sum"))
    return TrainedModel(network, record.get("elements"), record.get("targets", ()), direct,
                        record.get("source", {}), device=device, dtype=dtype)


def _read_record(path: Path) -> dict:
    from fastcsi.model.gemnet_oc import FORMAT as BACKBONE_FORMAT
    from fastcsi.train import checkpoint as ckpt
    from fastcsi.train.finetune import MODEL_KIND

    if not path.exists():
        raise FastCSIError(f"{path}: model not found (give a fine-tuning run directory or its {ckpt.FINAL})")
    if path.is_dir():
        if (path / ckpt.FINAL).is_file():
            return _read_record(path / ckpt.FINAL)
        if (path / "pretrain.json").is_file():
            return _pretrain_record(path)
        if (path / "results.json").is_file():
            raise FastCSIError(f"{path}: a fine-tuning run from before fastcsi wrote {ckpt.FINAL} (results.json "
                               "only); fine-tune again to get a model that loads")
        if (path / ckpt.LAST).is_file():
            raise FastCSIError(f"{path}: the run has not finished (no {ckpt.FINAL} yet); complete it with --resume")
        raise FastCSIError(f"{path}: run directory without a model ({ckpt.FINAL} of fastcsi finetune, or "
                           f"pretrain.json + {ckpt.LAST} of fastcsi pretrain)")
    payload = ckpt.load(path)
    kind = payload.get("kind")
    if kind == MODEL_KIND:
        return {**payload, "source": {**payload.get("extra", {}), "path": str(path.resolve())}}
    if payload.get("format") == BACKBONE_FORMAT:
        raise FastCSIError(f"{path}: a GemNet-OC backbone without trained heads or normaliser; fine-tune it "
                           f"(fastcsi finetune --pretrained {path}) or give its pretraining run directory")
    if kind in ("fastcsi-best", "fastcsi-train-state"):
        raise FastCSIError(f"{path}: a training checkpoint; give its run directory or the run's {ckpt.FINAL}")
    raise FastCSIError(f"{path}: not a fastcsi model (found {kind or 'no kind'!r}); checkpoints of other code "
                       f"bases carry no normaliser fastcsi can read: fine-tune one with fastcsi finetune --pretrained")


def _pretrain_record(rundir: Path) -> dict:
    """The model of a finished pretraining run: ``pretrain.json`` (hyperparameters, normaliser) and
    the EMA weights in ``last.pt`` (the weights ``backbone.pt`` releases, here with their heads)."""
    from fastcsi.train import checkpoint as ckpt

    info = json.loads((rundir / "pretrain.json").read_text())
    if info.get("status") != "done":
        raise FastCSIError(f"{rundir}: the pretraining run has not finished (status {info.get('status')!r}); "
                           "complete it with --resume")
    state = ckpt.load(rundir / ckpt.LAST, kind="fastcsi-train-state")
    ema = state.get("ema", {})
    prefix = "backbone."
    strip = lambda d: {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}  # noqa: E731
    hparams = info["model"]["hparams"]
    normalizer = info["normalizer"]
    return {
        "architecture": ARCHITECTURE,
        "hparams": hparams,
        "weights": strip(state["model"]),
        "ema_shadow": strip(ema["shadow"]) if float(ema.get("decay", 0.0)) > 0 else None,
        "normalizer": normalizer,
        "gradient_forces": bool(hparams.get("regress_forces")) and not bool(hparams.get("direct_forces")),
        "target": "energy",
        "reduction": "sum",
        "targets": ["energy", "forces"],
        # the per-element reference is fitted on every element of the pretraining sample
        "elements": sorted(int(z) for z in normalizer.get("linear_reference", {})),
        "source": {"kind": "fastcsi-pretrain", "path": str(rundir.resolve()),
                   "data": [d["path"] for d in info.get("data", [])]},
    }
