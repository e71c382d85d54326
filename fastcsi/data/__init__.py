"""Data layer: the :class:`Structure` record, readers for the paper's formats, sampling, batching."""
from fastcsi.data.base import ConcatDataset, Dataset
from fastcsi.data.batch import Batch, batch_from_atoms, collate, structure_from_atoms
from fastcsi.data.detect import FORMATS, detect_format, open_dataset
from fastcsi.data.loader import atom_chunks, iter_batches, plan_batches
from fastcsi.data.sampling import Budget, mixture_indices, sample_indices, temperature_mix
from fastcsi.data.structure import Structure

__all__ = [
    "Batch", "Budget", "atom_chunks", "ConcatDataset", "Dataset", "FORMATS", "Structure", "batch_from_atoms", "collate",
    "detect_format", "iter_batches", "mixture_indices", "open_dataset", "plan_batches", "sample_indices",
    "structure_from_atoms", "temperature_mix",
]
