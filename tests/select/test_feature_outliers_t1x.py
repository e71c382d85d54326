"""The real case: SevenNet-0 on the Transition-1x sample, whose interpolated path frames include
atom contacts of 0.35-0.8 Å (../shared/README.md) where the model's features explode."""
import pytest


def test_sevennet_features_explode_on_the_t1x_sample_and_the_check_lists_the_structures(shared_data,
                                                                                        one_torch_thread):
    pytest.importorskip("sevenn")
    from fastcsi.data import open_dataset
    from fastcsi.pipeline.backbone import load_extractor
    from fastcsi.pipeline.compute import dataset_stats
    from fastcsi.pipeline.settings import SampleSpec

    dataset = open_dataset(shared_data / "generated" / "t1x" / "transition1x_sample.h5")
    extractor = load_extractor("sevennet-0", device="cpu")
    stats, _ = dataset_stats(dataset, "t1x", extractor, SampleSpec("all", None, None), batch_size=16, progress=False)
    check = stats.metadata["feature_outliers"]
    assert check["n_atoms"] == stats.count and check["listing_complete"]
    assert 0 < check["n_outlier_structures"] < len(dataset) / 4  # a few structures, not the dataset
    assert check["max_norm"] > 1e3 * check["median_norm"] and check["dominates_trace"]
    assert sum(s["outlier_atoms"] for s in check["structures"]) == check["n_outlier_atoms"]
    for entry in check["structures"]:
        assert dataset[entry["index"]].id == entry["id"]
