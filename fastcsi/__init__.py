"""fastcsi: data-efficient pretraining for atomic property prediction.

Pipeline: rank upstream datasets by the Chemical Similarity Index (CSI, a Fréchet distance between
per-atom GemNet-OC feature distributions) against a downstream set, pretrain on the closest, fine-tune.

The handful of things a user needs (each imported on first use, so ``import fastcsi`` stays light)::

    fastcsi.open_dataset(path)                    # any supported file or directory -> Dataset
    fastcsi.select(downstream, upstreams)         # -> Ranking, closest first (files only with outdir=)
    fastcsi.FeatureStats, fastcsi.csi             # streaming statistics and their Fréchet distance
    fastcsi.load_backbone(path)                   # JMP / fairchem / fastcsi GemNet-OC checkpoints
    fastcsi.pretrain(data, samples, epochs=...)   # budgeted pretraining
    fastcsi.finetune(pretrained, data, ...)       # fine-tuning, test MAE
    fastcsi.FastCSICalculator(model=run_dir)      # a trained model as an ASE calculator
"""
__version__ = "0.1.0"

from fastcsi.errors import FastCSIError

_API = {  # name -> the module that defines it
    "open_dataset": "fastcsi.data",
    "select": "fastcsi.pipeline.select",
    "Ranking": "fastcsi.pipeline",
    "SelectSettings": "fastcsi.pipeline",
    "FeatureStats": "fastcsi.stats",
    "csi": "fastcsi.stats",
    "load_backbone": "fastcsi.model",
    "pretrain": "fastcsi.train.pretrain",
    "finetune": "fastcsi.train.finetune",
    "FastCSICalculator": "fastcsi.calculator",
}

__all__ = ["FastCSIError", "__version__", *sorted(_API)]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fastcsi' has no attribute {name!r}")
