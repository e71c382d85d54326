"""Exponential moving average of the weights (JMP: decay 0.99), used for validation, test and the
released backbone. Shadow copies are float32 regardless of the training dtype.

With ``warmup`` the decay of update t is min(decay, (1 + t) / (10 + t)): early updates follow the
live weights instead of averaging in the random initialisation (with 0.99, the initial weights
still carry 55% of the average after 60 steps). After ~1000 steps it is plain EMA(decay), so
JMP-length runs are unchanged; short runs (tests, demos, small budgets) get a meaningful average.
"""
from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.shadow = {name: p.detach().clone().float() for name, p in model.named_parameters()}
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        decay = self.current_decay()
        self.updates += 1
        named = list(model.named_parameters())
        if named:
            # shadow += (1 - decay) (live - shadow): one fused pass over every tensor.
            torch._foreach_lerp_([self.shadow[n] for n, _ in named], [p.detach().float() for _, p in named],
                                 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Temporarily swap the EMA weights into ``model`` (restores the live weights after)."""
        if self.decay == 0.0:
            yield model
            return
        backup = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(backup[name])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module):
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict):
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", True))
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
