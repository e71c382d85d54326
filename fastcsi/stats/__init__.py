"""Feature statistics and the Chemical Similarity Index. Pure numerics: imports nothing of
fastcsi.data, fastcsi.graph or fastcsi.model, so it also serves any FID-style use."""
from fastcsi.stats.csi import CSIResult, csi
from fastcsi.stats.feature_file import from_feature_file
from fastcsi.stats.feature_stats import FeatureStats, check_comparable, load_stats
from fastcsi.stats.frechet import frechet_distance, frechet_terms, trace_sqrt_product
from fastcsi.stats.mixture import (
    MixtureMoments,
    MixtureResult,
    cluster_components,
    merge_components,
    mixture_csi,
    mixture_stats,
    optimize_mixture,
)

__all__ = [
    "CSIResult",
    "FeatureStats",
    "MixtureMoments",
    "MixtureResult",
    "check_comparable",
    "cluster_components",
    "csi",
    "frechet_distance",
    "frechet_terms",
    "from_feature_file",
    "load_stats",
    "merge_components",
    "mixture_csi",
    "mixture_stats",
    "optimize_mixture",
    "trace_sqrt_product",
]
