"""Graph construction: radius graphs with periodic boundaries (and, in ``gemnet_indices``, the
GemNet-OC triplet/quadruplet index sets built on them)."""
from fastcsi.graph.radius import RadiusGraph, radius_graph, select_neighbors

__all__ = ["RadiusGraph", "radius_graph", "select_neighbors"]
