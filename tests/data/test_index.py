"""The persistent dataset index: built once per dataset file, reused by every later command (no
per-entry pass), rebuilt when the file changes, never trusted when damaged, built in parallel."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.data import open_dataset, sample_indices
from fastcsi.data.index import DatasetIndex, build_indices, cache_root, index_path
from fastcsi.data.lmdb_reader import _ENVIRONMENTS, LmdbDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from format_writers import write_lmdb  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FASTCSI_CACHE_DIR", str(root))
    return root


@pytest.fixture
def header_passes(monkeypatch):
    """Counts the entries every header pass of the LMDB reader reads."""
    counted = []
    original = LmdbDataset._scan_headers

    def counting(self, start=0, stop=None):
        keys, natoms = original(self, start, stop)
        counted.append(len(keys))
        return keys, natoms

    monkeypatch.setattr(LmdbDataset, "_scan_headers", counting)
    return counted


def _shards(root, sizes=(5, 7, 3)):
    root.mkdir()
    for k, n in enumerate(sizes):
        write_lmdb(root / f"data.{k:04d}.lmdb", n)
    return root


def test_second_open_reads_the_index_not_the_entries(tmp_path, cache, header_passes):
    shards = _shards(tmp_path / "shards")
    first = open_dataset(shards)
    drawn = sample_indices(first, 6, "balanced", seed=3)
    assert sum(header_passes) == 15  # every entry once
    header_passes.clear()
    again = open_dataset(shards)
    assert list(sample_indices(again, 6, "balanced", seed=3)) == list(drawn)
    assert list(again.class_keys()) == list(first.class_keys())
    assert list(again.n_atoms_per_structure()) == [4] * 15
    assert header_passes == []
    assert len(list((cache / "index").glob("*.npz"))) == 3  # one per shard, in the cache, none beside the data
    assert sorted(p.name for p in shards.iterdir() if not p.name.endswith("-lock")) == [
        "data.0000.lmdb", "data.0001.lmdb", "data.0002.lmdb"]


def test_codes_draw_the_same_as_the_keys_they_stand_for(tmp_path, cache):
    from fastcsi.data.sampling import sample_from_keys

    ds = open_dataset(_shards(tmp_path / "shards", (9, 4, 6)))
    table, codes = ds.class_codes()
    assert list(table[codes]) == list(ds.class_keys())
    for seed in range(5):
        assert list(sample_indices(ds, 7, "balanced", seed)) == list(sample_from_keys(ds.class_keys(), 7, "balanced", seed))


def test_a_changed_file_gets_a_new_index_and_a_damaged_index_is_rebuilt(tmp_path, cache, header_passes):
    path = write_lmdb(tmp_path / "one.lmdb", 4)
    open_dataset(path).class_keys()
    stored = index_path(open_dataset(path))
    stored.write_bytes(b"not an npz")
    header_passes.clear()
    assert list(open_dataset(path).class_keys()) == ["100", "101", "100", "101"]
    assert header_passes == [4]
    for env in _ENVIRONMENTS.values():  # let go of the file so that it can be rewritten in this process
        env.close()
    _ENVIRONMENTS.clear()
    os.replace(write_lmdb(tmp_path / "new.lmdb", 6), path)  # rewritten: new size/mtime, new fingerprint
    header_passes.clear()
    assert len(open_dataset(path).class_keys()) == 6 and header_passes == [6]


def test_an_index_of_another_length_is_not_trusted(tmp_path, cache):
    path = write_lmdb(tmp_path / "one.lmdb", 4)
    ds = open_dataset(path)
    DatasetIndex.from_keys(["a"] * 3, [1] * 3).save(index_path(ds), ds.fingerprint)
    assert DatasetIndex.load(index_path(ds), ds.fingerprint, 4) is None
    assert list(open_dataset(path).class_keys()) == ["100", "101", "100", "101"]


def test_cache_off_and_an_unwritable_cache_still_sample(tmp_path, monkeypatch, header_passes):
    path = write_lmdb(tmp_path / "one.lmdb", 4)
    monkeypatch.setenv("FASTCSI_CACHE_DIR", "off")
    assert cache_root() is None and index_path(open_dataset(path)) is None
    assert len(sample_indices(open_dataset(path), 2, "balanced")) == 2
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("FASTCSI_CACHE_DIR", str(blocked))
    with pytest.warns(UserWarning, match="dataset index not kept"):
        assert len(sample_indices(open_dataset(path), 2, "balanced")) == 2


def test_parallel_build_over_shards_and_entry_ranges_matches_the_serial_one(tmp_path, cache, header_passes):
    shards = _shards(tmp_path / "shards", (30, 11, 25))
    serial = open_dataset(shards)
    keys, natoms = serial.class_keys(), serial.n_atoms_per_structure()
    for p in (cache / "index").glob("*.npz"):
        p.unlink()
    header_passes.clear()
    report = build_indices(open_dataset(shards), workers=2, min_part=8)
    assert report["built"] == 3 and report["entries_built"] == 66
    again = open_dataset(shards)
    assert list(again.class_keys()) == list(keys) and list(again.n_atoms_per_structure()) == list(natoms)
    assert build_indices(again, workers=2)["built"] == 0


def test_metadata_npz_gives_atom_counts_without_a_pass(tmp_path, cache, header_passes):
    shards = _shards(tmp_path / "shards", (3, 2))
    np.savez(shards / "metadata.npz", natoms=np.array([4, 4, 4, 4, 4]))
    assert list(open_dataset(shards).n_atoms_per_structure()) == [4] * 5
    assert header_passes == []
    np.savez(shards / "metadata.npz", natoms=np.array([4, 4]))  # another dataset's: ignored
    assert list(open_dataset(shards).n_atoms_per_structure()) == [4] * 5 and sum(header_passes) == 5


def test_data_index_command_builds_ahead_and_data_sample_reuses_it(tmp_path, cache, header_passes):
    shards = _shards(tmp_path / "shards")
    result = CliRunner().invoke(cli, ["data", "index", str(shards), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "15 structures" in result.output and "3 of 3 files indexed" in result.output
    header_passes.clear()
    out = tmp_path / "idx.json"
    result = CliRunner().invoke(cli, ["data", "sample", str(shards), "-n", "4", "--strategy", "balanced",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert header_passes == [] and len(json.loads(out.read_text())["indices"]) == 4
    result = CliRunner().invoke(cli, ["data", "index", str(shards)])
    assert result.exit_code == 0 and "0 of 3 files indexed" in result.output


@pytest.mark.slow
def test_second_select_and_pretrain_do_no_per_entry_pass(tmp_path, cache, header_passes):
    up = _shards(tmp_path / "up", (6, 5))
    down = write_lmdb(tmp_path / "down.lmdb", 5)
    runner = CliRunner()

    def select(seed):
        result = runner.invoke(cli, ["select", "--downstream", str(down), "--upstream", str(up), "--samples", "4",
                                     "--seeds", str(seed), "-o", str(tmp_path / f"sel{seed}"), "--quiet",
                                     "--threads", "1"])
        assert result.exit_code == 0, result.output

    select(0)
    assert header_passes == [6, 5]  # the upstream's shards, once each (the downstream is drawn at random: no keys)
    header_passes.clear()
    select(1)  # another seed: a new draw, new stats, the same index
    assert header_passes == []
    result = runner.invoke(cli, ["pretrain", "--data", str(up), "--samples", "4", "--epochs", "1", "-o",
                                 str(tmp_path / "pt"), "--model", "gemnet-oc-tiny", "--batch-size", "2",
                                 "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert header_passes == []


def _index_rank(rank, world_size, port, path, cache):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), FASTCSI_CACHE_DIR=os.path.join(cache, f"rank{rank}"))
    import torch

    torch.set_num_threads(1)
    result = CliRunner().invoke(cli, ["data", "index", path])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_ranks_split_the_files_and_each_keeps_every_index(tmp_path, cache):
    import socket

    import torch.multiprocessing as mp

    shards = _shards(tmp_path / "shards", (4, 6, 5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # separate cache folders, as on two nodes: each rank must end with all three indices
    mp.spawn(_index_rank, args=(2, port, str(shards), str(tmp_path / "caches")), nprocs=2, join=True)
    expected = open_dataset(shards)
    for rank in (0, 1):
        os.environ["FASTCSI_CACHE_DIR"] = str(tmp_path / "caches" / f"rank{rank}")
        assert len(list((tmp_path / "caches" / f"rank{rank}" / "index").glob("*.npz"))) == 3
        again = open_dataset(shards)
        assert list(again.class_keys()) == list(expected.class_keys())


def _distinct_shards(root, sizes):
    """Shards whose entries differ from shard to shard (class keys and atom counts), so an index
    stored under another shard's name shows."""
    root.mkdir()
    for k, n in enumerate(sizes):
        entries = []
        for i in range(n):
            m = 2 + k + i % 2
            entries.append(([8.0] + [1.0] * (m - 1), np.arange(3 * m, dtype=float).reshape(m, 3), None,
                            1000 * (k + 1) + i % 3))
        write_lmdb(root / f"data.{k:04d}.lmdb", entries=entries)
    return root


@pytest.mark.slow
def test_ranks_with_different_caches_store_every_index_under_its_own_file(tmp_path, monkeypatch):
    import socket

    import torch.multiprocessing as mp

    from fastcsi.data.index import file_index, indexable_files

    # rank 0's cache is empty, rank 1's already holds the middle shard: the ranks lack different files
    shards = _distinct_shards(tmp_path / "shards", (4, 5, 5))
    caches = tmp_path / "caches"
    monkeypatch.setenv("FASTCSI_CACHE_DIR", str(caches / "rank1"))
    file_index(open_dataset(shards / "data.0001.lmdb"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_index_rank, args=(2, port, str(shards), str(caches)), nprocs=2, join=True)

    monkeypatch.setenv("FASTCSI_CACHE_DIR", "off")
    files = indexable_files(open_dataset(shards))
    fresh = [f._scan_headers() for f in files]
    assert len({tuple(keys) for keys, _ in fresh}) == 3  # the shards are told apart by their keys
    for rank in (0, 1):
        monkeypatch.setenv("FASTCSI_CACHE_DIR", str(caches / f"rank{rank}"))
        for f, (keys, natoms) in zip(files, fresh):
            stored = DatasetIndex.load(index_path(f), f.fingerprint, len(f))
            assert stored is not None, (rank, f.path)
            assert list(stored.class_keys()) == [str(k) for k in keys], (rank, f.path)
            assert list(stored.natoms) == list(natoms), (rank, f.path)
