"""Layer-wise learning-rate scales for fine-tuning (JMP's "LLRD").

JMP fine-tunes its pretrained GemNet-OC with one AdamW whose parameter groups run at a fraction of the
base learning rate: the embedding at 0.3, and each interaction block, together with the output
block that reads it, at a U-shaped profile over depth (JMP-L, 6 blocks: 0.55, 0.40, 0.30, 0.40,
0.55, 0.625). Everything else (radial/angular bases, the fresh output heads) runs at the base rate.
Each group's cosine floor is raised to ``min_lr_factor / scale`` (clamped to [0.01, 0.99]) so that
every group ends at the same absolute learning rate as the unscaled run, as JMP does.

For a backbone with another number of blocks the JMP-L profile is resampled linearly over relative
depth (block i of B sits at i / (B - 1)); with 6 blocks it is JMP's table exactly.

Spec strings (CLI ``--layer-lr``): ``jmp`` (the above), ``none`` (every parameter at the base rate),
or explicit ``embedding=0.3,blocks_0=0.5,...`` (names as below; unnamed groups keep 1.0).
"""
from __future__ import annotations

import fnmatch

import numpy as np

from fastcsi.errors import FastCSIError

JMP_EMBEDDING_SCALE = 0.3
JMP_L_BLOCK_SCALES = (0.55, 0.40, 0.30, 0.40, 0.55, 0.625)


def jmp_scales(num_blocks: int) -> dict:
    """JMP's embedding and per-block scales, resampled to ``num_blocks`` blocks."""
    if num_blocks < 1:
        raise ValueError("num_blocks must be >= 1")
    reference_depth = np.linspace(0.0, 1.0, len(JMP_L_BLOCK_SCALES))
    depth = np.linspace(0.0, 1.0, num_blocks) if num_blocks > 1 else np.zeros(1)
    blocks = np.interp(depth, reference_depth, JMP_L_BLOCK_SCALES)
    return {"embedding": JMP_EMBEDDING_SCALE, **{f"blocks_{i}": float(s) for i, s in enumerate(blocks)}}


def group_patterns(num_blocks: int) -> dict:
    """Parameter-name patterns (relative to the GemNet-OC module) of each named group."""
    patterns = {"embedding": ["embedding.*"], "bases": ["backbone.bases.*"]}
    for i in range(num_blocks):
        patterns[f"blocks_{i}"] = [f"backbone.int_blocks.{i}.*", f"backbone.out_blocks.{i + 1}.*"]
        if i == 0:
            patterns[f"blocks_{i}"].append("backbone.out_blocks.0.*")
    return patterns


def is_off(spec) -> bool:
    """No layer-wise scaling. ("auto" is resolved by fine-tuning: jmp on a pretrained backbone;
    anywhere else it means none.)"""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "off", "auto"))


def parse_spec(spec, num_blocks: int) -> dict:
    """``jmp`` | ``none`` | ``name=scale,...`` | a dict -> {group name: scale}."""
    if is_off(spec):
        return {}
    if isinstance(spec, dict):
        scales = {str(k): float(v) for k, v in spec.items()}
    elif spec.strip().lower() == "jmp":
        return jmp_scales(num_blocks)
    else:
        scales = {}
        for item in spec.split(","):
            name, _, value = (part.strip() for part in item.partition("="))
            try:
                scale = float(value)
            except ValueError:
                scale = None
            if not name or scale is None:
                raise FastCSIError(f"layer learning-rate spec {spec!r}: expected jmp, none or NAME=SCALE,...")
            scales[name] = scale
    known = group_patterns(num_blocks)
    for name, scale in scales.items():
        if name not in known:
            raise FastCSIError(f"layer learning-rate group {name!r} does not exist in a {num_blocks}-block "
                               f"backbone; choose from {', '.join(known)}")
        if not scale > 0:
            raise FastCSIError(f"layer learning-rate scale of {name!r} must be > 0, got {scale}")
    return scales


def parameter_scales(gemnet, scales: dict, prefix: str = "") -> dict:
    """{full parameter name: scale} for every parameter of ``gemnet`` (1.0 where no group applies).

    ``prefix`` is the module's name inside the model being optimised (e.g. ``backbone.`` when it is
    wrapped), so the names returned are the optimiser-side ones."""
    patterns = group_patterns(int(gemnet.hparams["num_blocks"]))
    out = {}
    for name, _ in gemnet.named_parameters():
        scale = 1.0
        for group, scale_value in scales.items():
            if any(fnmatch.fnmatchcase(name, p) for p in patterns[group]):
                scale = scale_value
                break
        out[prefix + name] = scale
    return out


def floor_factor(min_lr_factor: float, scale: float) -> float:
    """The group's cosine floor, so that scale x floor equals the unscaled run's final factor."""
    if scale == 1.0:
        return min_lr_factor
    return float(min(0.99, max(0.01, min_lr_factor / scale)))
