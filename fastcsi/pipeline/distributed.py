"""Scale-out of feature statistics over torch.distributed ranks.

``torchrun --nproc_per_node=K -m fastcsi select ...`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR;
each rank then takes every K-th sampled index of every dataset, accumulates its own
:class:`FeatureStats`, and ``FeatureStats.all_reduce()`` merges them exactly (Chan et al.), so the
merged statistics equal the single-process ones up to float64 roundoff. Rank 0 alone writes files.
"""
from fastcsi.distributed import DistContext, init_distributed

__all__ = ["DistContext", "init_distributed"]
