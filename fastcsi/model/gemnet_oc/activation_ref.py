"""The reference of GemNet-OC's activation op, scale * SiLU(x): torch's own SiLU (the oracle the
native kernel is tested against). O(n) time; no extra memory with ``inplace=True``."""
from __future__ import annotations

import torch


def silu_ref(x: torch.Tensor, scale: float = 1.0, inplace: bool = False) -> torch.Tensor:
    y = torch.nn.functional.silu(x, inplace=inplace)
    return y if scale == 1.0 else y.mul_(scale)
