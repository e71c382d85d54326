"""Two gloo ranks on CPU give the single-process result; only rank 0 writes anything."""
import json
import os
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from fastcsi.pipeline import SelectSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings():
    # float64 so that the different batch composition of the shards changes nothing visible.
    return SelectSettings(samples=6, seeds=(0, 1), batch_size=3, dtype="float64", device="cpu")


def _worker(rank, world_size, port, paths, outroot):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    from fastcsi.pipeline.select import run_select

    result = run_select(paths["down"], [paths["organic"]], _settings(),
                        outdir=os.path.join(outroot, f"rank{rank}"), progress=False)
    with open(os.path.join(outroot, f"result{rank}.json"), "w") as fh:
        json.dump({"ranking": result["ranking"], "world_size": result["settings"]["world_size"]}, fh, default=str)


def test_two_gloo_ranks_match_single_process(tiny_data, extractor, tmp_path):
    from fastcsi.pipeline.select import run_select

    paths = {k: str(v) for k, v in tiny_data.items()}
    mp.spawn(_worker, args=(2, _free_port(), paths, str(tmp_path)), nprocs=2, join=True)
    single = run_select(paths["down"], [paths["organic"]], _settings(), outdir=tmp_path / "single",
                        extractor=extractor, progress=False)

    # The merged statistics equal the single-process ones (same cache keys, so same file names).
    from fastcsi.stats import FeatureStats

    names = sorted(p.name for p in (tmp_path / "single" / "cache").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "rank0" / "cache").iterdir()) and len(names) == 4
    for name in names:
        a, b = (FeatureStats.load(tmp_path / d / "cache" / name) for d in ("rank0", "single"))
        assert a.count == b.count and a.metadata["n_atoms"] == b.metadata["n_atoms"]
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.covariance(), b.covariance(), rtol=1e-9, atol=1e-12)
        assert sorted(a.groups) == sorted(b.groups)
        # the exploding-feature check merges its histograms over the ranks exactly too
        norms_a, norms_b = a.metadata["feature_outliers"], b.metadata["feature_outliers"]
        assert norms_a["n_atoms"] == norms_b["n_atoms"] == a.count
        assert norms_a["median_norm"] == norms_b["median_norm"]
        assert norms_a["max_norm"] == pytest.approx(norms_b["max_norm"], rel=1e-12)

    assert (tmp_path / "rank0" / "csi.json").is_file() and (tmp_path / "rank0" / "cache").is_dir()
    assert not (tmp_path / "rank1").exists()  # other ranks write nothing
    for rank in (0, 1):
        dist = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert dist["world_size"] == 2
        assert [r["upstream"] for r in dist["ranking"]] == [r["upstream"] for r in single["ranking"]]
        for a, b in zip(dist["ranking"], single["ranking"]):
            assert a["n_atoms"] == b["n_atoms"] and a["n_structures"] == b["n_structures"]
            for pa, pb in zip(a["per_seed"], b["per_seed"]):
                assert pa["n_samples"] == pb["n_samples"]
                # ~30 atoms for 32 dimensions: rank-deficient covariances turn 1e-16 eigenvalue
                # roundoff into 1e-8 in the matrix square root, so the CSI agrees to ~1e-7 only.
                assert pa["csi"] == pytest.approx(pb["csi"], rel=1e-6)
            for symbol, e in b["per_element"].items():
                assert a["per_element"][symbol]["csi"] == pytest.approx(e["csi"], rel=1e-6)
