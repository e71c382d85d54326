"""Training checkpoints: everything a resumed run needs to continue bit-for-bit where an
interrupted one stopped (weights, optimizer moments, EMA shadow, step / epoch / position in the
epoch, RNG states, normaliser, settings). Written atomically (temp file + rename).

Everything in a checkpoint is a tensor or a plain container (dict, list, tuple, str, number, bool,
None), so it loads with ``torch.load(weights_only=True)``: a crafted ``last.pt`` cannot run code
(RNG states are stored as tensors for that reason)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from fastcsi.errors import FastCSIError
from fastcsi.utils import atomic_path, load_torch_file, versions

LAST = "last.pt"
FINAL = "final.pt"
BEST = "best.pt"


def rng_state() -> dict:
    legacy = np.random.get_state(legacy=False)  # MT19937: key array + position (+ cached gaussian)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
                  "pos": int(legacy["state"]["pos"]), "has_gauss": int(legacy["has_gauss"]),
                  "gauss": float(legacy["gauss"])},
        "python": random.getstate(),  # (version, tuple of ints, float or None): plain values
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, payload: dict):
    payload = dict(payload)
    payload.setdefault("versions", versions())
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path, kind: str | None = None) -> dict:
    """Read a checkpoint written by :func:`save` (tensors and plain containers only).

    ``kind`` (e.g. ``"fastcsi-train-state"``) is checked against the payload's ``kind`` entry."""
    path = Path(path)
    payload = load_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or (kind is not None and payload.get("kind") != kind):
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise FastCSIError(f"{path}: not a fastcsi {kind or 'checkpoint'} (found {found!r})")
    return payload
