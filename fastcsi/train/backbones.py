"""Adapter between the training code and the model layer (``fastcsi.model``): build or load a
GemNet-OC for a task, give it fresh output heads, save the released backbone, time graph building.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from fastcsi.errors import FastCSIError

BACKBONE_FILE = "backbone.pt"
HEADS = ("out_energy", "out_forces")


def task_overrides(targets, forces: str) -> dict:
    """Model hyperparameters a task needs: force regression on/off, direct or gradient forces."""
    if "forces" not in targets:
        return {"regress_forces": False}
    if forces == "gradient":
        return {"regress_forces": True, "direct_forces": False}
    if forces == "direct":
        return {"regress_forces": True, "direct_forces": True}
    return {"regress_forces": True}


def uses_gradient_forces(model) -> bool:
    hp = getattr(model, "hparams", {})
    return bool(hp.get("regress_forces", False)) and not bool(hp.get("direct_forces", True))


def build(name: str, seed: int, overrides: dict | None = None):
    from fastcsi.model import build_model

    torch.manual_seed(seed)
    return build_model(name, **(overrides or {}))


def resolve_pretrained(spec) -> Path | None:
    """``none`` -> None; a pretrain run directory -> its released backbone; a file -> itself."""
    if spec is None or str(spec).lower() == "none":
        return None
    path = Path(spec)
    if path.is_dir():
        candidate = path / BACKBONE_FILE
        if not candidate.is_file():
            raise FastCSIError(f"{path}: run directory has no {BACKBONE_FILE} (did the pretraining run finish?)")
        return candidate
    if not path.is_file():
        raise FastCSIError(f"{path}: pretrained checkpoint not found")
    return path


def load_pretrained(path: Path, seed: int, overrides: dict, base: str | None = None, weights: str = "raw"):
    """Load a backbone (ours or JMP / fairchem; ``weights`` raw or ema, as ``load_backbone``) and
    give it freshly initialised output heads.

    Fresh heads are seeded copies from a new model with the same hyperparameters, so the head
    initialisation is identical to a from-scratch model's with the same seed (a fair comparison).
    """
    from fastcsi.model import GemNetOC, load_backbone

    model = load_backbone(path, base=base, weights=weights, **overrides)
    torch.manual_seed(seed)
    fresh = GemNetOC(**model.hparams)
    for name in HEADS:
        head, new = getattr(model, name, None), getattr(fresh, name, None)
        if head is not None and new is not None:
            head.load_state_dict(new.state_dict())
    return model


def save_backbone(model, path, extra: dict) -> Path:
    """Write the backbone without its output heads (fine-tuning starts from fresh heads, and
    ``load_backbone`` accepts a head-less file), in the model layer's checkpoint format."""
    from fastcsi.model import save_checkpoint

    stripped = copy.deepcopy(model).cpu()
    for name in HEADS:
        if getattr(stripped, name, None) is not None:
            setattr(stripped, name, None)
    return save_checkpoint(stripped, path, extra=extra)


def graph_timing(model, profiler):
    """Time GemNet-OC's graph construction inside the block as the profiler stage ``graph`` (the
    model's ``graph_timer`` hook), so the profile shows graph building apart from the arithmetic."""
    return model.timing_graphs(lambda: profiler.stage("graph"))
