import csv
import json

import numpy as np
import pytest
import torch

from fastcsi.data import Structure, collate
from fastcsi.pipeline.compute import aggregate, is_stats_file
from fastcsi.pipeline.report import display_names, format_table, mean_std, plot_per_element, plot_ranking, write_csv, write_json


def _batch():
    rng = np.random.default_rng(0)
    structures = [
        Structure(atomic_numbers=[6, 1, 1], positions=rng.normal(size=(3, 3))),
        Structure(atomic_numbers=[8], positions=rng.normal(size=(1, 3))),
        Structure(atomic_numbers=[7, 1], positions=rng.normal(size=(2, 3))),
    ]
    return collate(structures, dtype=torch.float64)


@pytest.mark.parametrize("agg", ["flat", "mean", "sum", "max"])
def test_aggregate_matches_per_structure_loop(agg):
    batch = _batch()
    features = torch.randn(batch.num_atoms, 4, dtype=torch.float64)
    x, groups = aggregate(features, batch, agg)
    if agg == "flat":
        assert x is features and torch.equal(groups, batch.atomic_numbers)
        return
    assert groups is None and x.shape == (3, 4)
    for i, (start, stop) in enumerate(zip(batch.ptr[:-1], batch.ptr[1:])):
        chunk = features[start:stop]
        expected = {"mean": chunk.mean(0), "sum": chunk.sum(0), "max": chunk.max(0).values}[agg]
        torch.testing.assert_close(x[i], expected, rtol=1e-12, atol=1e-12)


def _result():
    def row(name, csi, std, rank):
        return {
            "rank": rank,
            "upstream": f"/data/{name}.extxyz",
            "csi": csi,
            "csi_std": std,
            "csi_rel_std": std / csi,
            "mean_term": csi / 3,
            "trace_term": 2 * csi / 3,
            "n_structures": 10,
            "n_atoms": 120,
            "per_seed": [{"seed": 0, "csi": csi - std}, {"seed": 1, "csi": csi + std}],
            "per_element": {"H": {"Z": 1, "csi": csi / 2, "csi_std": 0.0}, "C": {"Z": 6, "csi": csi, "csi_std": 0.0}},
        }

    return {
        "downstream": {"path": "/data/down.extxyz", "n_structures": 10, "n_atoms": 90},
        "ranking": [row("organic", 1.5, 0.1, 1), row("slabs", 9.25, 0.5, 2)],
        "settings": {"seeds": [0, 1], "backbone": "test", "layer": "final", "kind": "node", "agg": "flat"},
        "versions": {"fastcsi": "0"},
    }


def test_reports_are_written(tmp_path):
    result = _result()
    write_json(result, tmp_path / "csi.json")
    write_csv(result, tmp_path / "csi.csv")
    plot_ranking(result, tmp_path / "csi.png")
    plot_per_element(result, tmp_path / "csi_per_element.png")
    assert json.loads((tmp_path / "csi.json").read_text())["ranking"][0]["csi"] == 1.5
    lines = [l for l in (tmp_path / "csi.csv").read_text().splitlines() if not l.startswith("#")]
    rows = list(csv.DictReader(lines))
    assert [r["upstream"] for r in rows] == ["/data/organic.extxyz", "/data/slabs.extxyz"]
    assert float(rows[1]["csi"]) == 9.25 and rows[1]["n_atoms"] == "120" and rows[0]["n_seeds"] == "2"
    for png in ("csi.png", "csi_per_element.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing but the outputs: no temp files left behind by the atomic writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csi.csv", "csi.json", "csi.png", "csi_per_element.png"]
    table = format_table(result)
    assert table.index("organic.extxyz") < table.index("slabs.extxyz")
    assert "9.25" in table and "down.extxyz" in table


def test_mean_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    m, s = mean_std([1.0, 3.0])
    assert m == 2.0 and s == pytest.approx(np.sqrt(2.0))


def test_dataset_npz_is_not_a_stats_file(shared_data, tmp_path):
    assert not is_stats_file(shared_data / "md17" / "md17_ethanol_2000.npz")
    from fastcsi.stats import FeatureStats

    FeatureStats(2).update(np.random.default_rng(0).normal(size=(5, 2))).save(tmp_path / "s.npz")
    assert is_stats_file(tmp_path / "s.npz")
    np.savez(tmp_path / "other.npz", count=np.array(3), mean=np.zeros(2), scatter=np.eye(2))
    assert not is_stats_file(tmp_path / "other.npz")


def test_display_names_tell_paths_apart():
    assert display_names(["/d/oc20/data.0000.lmdb", "/d/oc22/data.0000.lmdb", "/x/ani.h5"]) == [
        "oc20/data.0000.lmdb", "oc22/data.0000.lmdb", "x/ani.h5"
    ]
    assert display_names(["/a/one.xyz", "/b/two.xyz"]) == ["one.xyz", "two.xyz"]
