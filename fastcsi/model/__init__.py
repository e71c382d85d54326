"""The GemNet-OC backbone of fastcsi (faithful to JMP) and per-atom feature extraction.

Public API: ``GemNetOC``, ``build_model``, ``CONFIGS``, ``extract_features``, ``feature_dim``,
``extractor_fingerprint``, ``load_backbone``, ``save_checkpoint``, ``check_elements``.
"""
from fastcsi.errors import FastCSIError
from fastcsi.model.features import check_elements, extract_features, extractor_fingerprint, feature_dim
from fastcsi.model.gemnet_oc import CONFIGS, GemNetOC, load_backbone, save_checkpoint
from fastcsi.model.gemnet_oc.configs import config as _config


def build_model(name: str = "gemnet-oc-s", **overrides) -> GemNetOC:
    """A freshly initialised GemNet-OC of a named configuration ("gemnet-oc-s" = JMP-S,
    "gemnet-oc-l" = JMP-L, "gemnet-oc-tiny" = small and fast), with ``overrides`` applied.
    Scale factors start unfitted (identity), as JMP's without a scale file."""
    if name not in CONFIGS:
        raise FastCSIError(f"unknown model {name!r}; choose one of {', '.join(CONFIGS)}")
    return GemNetOC(**{**_config(name), **overrides})


__all__ = [
    "CONFIGS",
    "GemNetOC",
    "build_model",
    "check_elements",
    "extract_features",
    "extractor_fingerprint",
    "feature_dim",
    "load_backbone",
    "save_checkpoint",
]
