"""The feature extractor behind a CSI run: which backbone, which layer, which device.

Backbones are named ``NAME[:MODEL]`` (see :mod:`fastcsi.extractors`). Without a backbone option the
default is SevenNet-0, a pretrained model whose weights ship inside the ``sevenn`` wheel, so a CSI
run needs no network (``$FASTCSI_BACKBONE`` names another default). ``--checkpoint FILE`` alone
keeps meaning ``gemnet-oc:FILE``, the paper's JMP GemNet-OC checkpoints among them. A randomly
initialised GemNet-OC stays available as ``gemnet-oc-random`` for tests and speed work; CSI from it
is flagged as coming from untrained weights.
"""
from __future__ import annotations

import torch

from fastcsi.errors import FastCSIError
from fastcsi.extractors import FeatureExtractor, build_extractor, default_backbone
from fastcsi.threads import apply_threads

UNTRAINED_WARNING = ("the features come from untrained (randomly initialised) weights: CSI values rank "
                     "chemistry only roughly; use a pretrained --backbone (the default sevennet-0) for real decisions")


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise FastCSIError(f"--device {device!r}: not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FastCSIError(f"--device {device!r}: CUDA is not available on this machine")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    return dev


def apply_thread_policy(extractor, threads: int | None) -> int:
    """Set torch's intra-op CPU threads for feature extraction and return the previous count.

    ``threads=None`` (auto): one thread for a small backbone on CPU, otherwise torch's own default
    (the one policy of every command: :mod:`fastcsi.threads`)."""
    return apply_threads(extractor.model, extractor.device, threads)


def backbone_spec(backbone: str | None = None, checkpoint=None) -> str:
    """The one backbone spec of a run from ``--backbone`` and ``--checkpoint`` (see the module docstring)."""
    if checkpoint is not None:
        if backbone is None:
            return f"gemnet-oc:{checkpoint}"
        if str(backbone).strip().lower() != "gemnet-oc":
            raise FastCSIError(f"--checkpoint {checkpoint}: a GemNet-OC file, which --backbone {backbone} does not "
                               "take; give a model file as --backbone NAME:FILE")
        return f"gemnet-oc:{checkpoint}"
    return backbone if backbone is not None else default_backbone()


def load_extractor(
    backbone: str | None = None,
    checkpoint=None,
    layer: str = "final",
    kind: str = "node",
    device="cpu",
    dtype: str = "float32",
    base: str | None = None,
    weights: str = "raw",
) -> FeatureExtractor:
    """The frozen extractor of ``backbone`` (``NAME[:MODEL]``; None: ``--checkpoint`` as GemNet-OC
    file, else the default). ``base`` / ``weights`` choose the architecture and weight set of a
    GemNet-OC checkpoint file."""
    return build_extractor(backbone_spec(backbone, checkpoint), layer=layer, kind=kind, device=device, dtype=dtype,
                           base=base, weights=weights)
