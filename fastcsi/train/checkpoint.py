"""Training checkpoints: everything a resumed run needs to continue bit-for-bit where an
interrupted one stopped (weights, optimizer moments, EMA shadow, step / epoch / position in the
epoch, RNG states, normaliser, settings). Written atomically (temp file + rename)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from fastcsi.errors import FastCSIError
from fastcsi.utils import atomic_path, versions

LAST = "last.pt"
FINAL = "final.pt"
BEST = "best.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, payload: dict):
    payload = dict(payload)
    payload.setdefault("versions", versions())
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FastCSIError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise FastCSIError(f"{path}: not a readable fastcsi checkpoint ({type(exc).__name__}: {exc})") from None
