"""Graph construction: radius graphs with periodic boundaries (and, in ``gemnet_indices``, the
GemNet-OC triplet/quadruplet index sets built on them)."""
from fastcsi.graph.radius import RadiusGraph, radius_graph, select_neighbors
from fastcsi.graph.gemnet_indices import mixed_triplets, quadruplets, symmetrize_edges, triplets

__all__ = ["RadiusGraph", "radius_graph", "select_neighbors",
           "mixed_triplets", "quadruplets", "symmetrize_edges", "triplets"]
