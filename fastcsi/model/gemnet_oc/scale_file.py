"""JMP's ``scale_file``: fitted ScaleFactor values, a ``.pt`` or ``.json`` mapping of module paths
(relative to the backbone; a leading ``backbone.`` is accepted) to numbers; ``comment`` is ignored.

Its own module because both the model (``GemNetOC.apply_scale_file``) and the checkpoint reader
use it, and the checkpoint reader builds models.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fastcsi.errors import FastCSIError
from fastcsi.utils import load_torch_file


def load_scale_file(scale_file) -> dict:
    """``{"backbone.<module>.scale_factor": tensor}`` from a scale file."""
    path = Path(scale_file)
    if not path.is_file():
        raise FastCSIError(f"{path}: scale-factor file not found")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        values = load_torch_file(path, "checkpoint")
    if not isinstance(values, dict):
        raise FastCSIError(f"{path}: a scale-factor file must map module names to values")
    values.pop("comment", None)
    out = {}
    for name, value in values.items():
        name = name[len("backbone."):] if name.startswith("backbone.") else name
        out[f"backbone.{name}.scale_factor"] = torch.as_tensor(float(value))
    return out
