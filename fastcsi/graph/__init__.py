"""Graph construction: radius graphs with periodic boundaries (``radius``), their nearest-neighbour
sub-selection (``nearest``) and, in ``gemnet_indices``, the GemNet-OC triplet/quadruplet index sets
built on them."""
from fastcsi.graph.edge_sets import symmetrize_edges
from fastcsi.graph.gemnet_indices import mixed_triplets, quadruplets, triplets
from fastcsi.graph.nearest import select_neighbors
from fastcsi.graph.periodic import RadiusGraph
from fastcsi.graph.radius import radius_graph

__all__ = ["RadiusGraph", "radius_graph", "select_neighbors",
           "mixed_triplets", "quadruplets", "symmetrize_edges", "triplets"]
