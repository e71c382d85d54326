"""FeatureStats.all_reduce across 2 gloo processes equals the single-process stats."""
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastcsi.stats import FeatureStats


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((900, 6)) + 100.0
    labels = rng.choice([1, 6, 8], size=900)
    labels[:50] = 7  # element 7 only on rank 0: group labels differ between ranks
    return x, labels


def _worker(rank, world, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, labels = _data()
        part = slice(0, 300) if rank == 0 else slice(300, 900)  # unequal shards
        stats = FeatureStats(6, track_groups=True).update(x[part], groups=labels[part])
        stats.all_reduce()
        if rank == 1:
            np.savez(
                out_path,
                count=stats.count,
                mean=stats.mean,
                scatter=stats.scatter,
                labels=np.array(sorted(stats.groups)),
                group_scatters=np.stack([stats.groups[k].scatter for k in sorted(stats.groups)]),
            )
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_gloo_processes_equals_single_process(tmp_path):
    out_path = tmp_path / "rank1.npz"
    # fork, not spawn: re-importing torch in each child costs ~10 s on a loaded 2-core machine, and
    # nothing here has touched CUDA, so forking is safe.
    mp.start_processes(_worker, args=(2, _free_port(), str(out_path)), nprocs=2, join=True, start_method="fork")
    x, labels = _data()
    single = FeatureStats(6, track_groups=True).update(x, groups=labels)
    got = np.load(out_path)
    assert int(got["count"]) == single.count == 900
    assert np.abs(got["mean"] - single.mean).max() <= 1e-12 * 100
    assert np.abs(got["scatter"] - single.scatter).max() <= 1e-12 * np.abs(single.scatter).max()
    assert got["labels"].tolist() == sorted(single.groups) == [1, 6, 7, 8]
    for index, label in enumerate(got["labels"].tolist()):
        expected = single.groups[label].scatter
        assert np.abs(got["group_scatters"][index] - expected).max() <= 1e-12 * np.abs(expected).max()


if not dist.is_available():  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="torch.distributed is not built into this torch")
