"""Data layer: the :class:`Structure` record, readers for the paper's formats, sampling, batching."""
from fastcsi.data.batch import Batch, batch_from_atoms, collate, structure_from_atoms
from fastcsi.data.structure import Structure

__all__ = ["Batch", "Structure", "batch_from_atoms", "collate", "structure_from_atoms"]
