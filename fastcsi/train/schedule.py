"""Learning-rate schedule: linear warm-up then cosine decay, as a pure function of the step.

A pure function (no scheduler object with hidden state) makes resume exact by construction: the
checkpoint stores the step, and the learning rate of every later step follows from it.
"""
from __future__ import annotations

import math


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, start_factor: float,
                         min_factor: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warm-up: start_factor -> 1 linearly over ``warmup_steps``; then cosine from 1 down to
    ``min_factor`` at ``total_steps``; flat at ``min_factor`` after that.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
