"""Feature statistics and the Chemical Similarity Index. Pure numerics: imports nothing of
fastcsi.data, fastcsi.graph or fastcsi.model, so it also serves any FID-style use."""
from fastcsi.stats.covariance import chunk_moments, merge_moments
from fastcsi.stats.csi import CSIResult, csi
from fastcsi.stats.feature_stats import FeatureStats, check_comparable, load_stats
from fastcsi.stats.frechet import frechet_distance, frechet_terms, trace_sqrt_product

__all__ = [
    "CSIResult",
    "FeatureStats",
    "check_comparable",
    "chunk_moments",
    "csi",
    "frechet_distance",
    "frechet_terms",
    "load_stats",
    "merge_moments",
    "trace_sqrt_product",
]
