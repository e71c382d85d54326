"""fastcsi: data-efficient pretraining for atomic property prediction.

Pipeline: rank upstream datasets by the Chemical Similarity Index (CSI, a Fréchet distance between
per-atom GemNet-OC feature distributions) against a downstream set, pretrain on the closest, fine-tune.
"""
__version__ = "0.1.0"

from fastcsi.errors import FastCSIError

__all__ = ["FastCSIError", "__version__"]
