"""Data layer: the :class:`Structure` record, readers for the paper's formats, sampling, batching."""
from fastcsi.data.base import ConcatDataset, Dataset
from fastcsi.data.detect import FORMATS, detect_format, open_dataset
from fastcsi.data.sampling import Budget, mixture_indices, sample_indices, temperature_mix
from fastcsi.data.structure import Structure

# Batching needs torch; reading, counting and converting files do not (``fastcsi data info`` starts
# in a fraction of torch's import time), so these load on first use.
_TORCH_PARTS = {"Batch": "batch", "batch_from_atoms": "batch", "collate": "batch", "structure_from_atoms": "batch",
                "atom_chunks": "loader", "iter_batches": "loader", "plan_batches": "loader"}


def __getattr__(name):
    if name in _TORCH_PARTS:
        import importlib

        return getattr(importlib.import_module(f"fastcsi.data.{_TORCH_PARTS[name]}"), name)
    raise AttributeError(f"module 'fastcsi.data' has no attribute {name!r}")


__all__ = [
    "Batch", "Budget", "atom_chunks", "ConcatDataset", "Dataset", "FORMATS", "Structure", "batch_from_atoms", "collate",
    "detect_format", "iter_batches", "mixture_indices", "open_dataset", "plan_batches", "sample_indices",
    "structure_from_atoms", "temperature_mix",
]
