"""The public API: ``import fastcsi`` gives what a user needs, typed, and writes nothing unasked."""
import json
import subprocess
import sys

import pytest

import fastcsi
from fastcsi.data.demo import demo_downstream, demo_upstreams


def test_import_is_light_and_names_the_api():
    code = "import sys, fastcsi; assert 'torch' not in sys.modules; print(sorted(fastcsi.__all__))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    for name in ("open_dataset", "select", "Ranking", "FeatureStats", "csi", "load_backbone", "pretrain",
                 "finetune", "FastCSICalculator", "FastCSIError"):
        assert name in out
    with pytest.raises(AttributeError):
        fastcsi.chunk_moments  # internals are not part of the top level


@pytest.fixture(scope="module")
def small():
    return fastcsi.SelectSettings(samples=8, seeds=(0, 1), threads=1)


def test_select_returns_a_ranking_and_writes_nothing_unasked(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ups = demo_upstreams()
    ranking = fastcsi.select(demo_downstream(), ups, small)
    assert isinstance(ranking, fastcsi.Ranking) and len(ranking) == len(ups)
    assert [e.rank for e in ranking] == list(range(1, len(ups) + 1))
    assert [e.csi for e in ranking] == sorted(e.csi for e in ranking)
    assert ranking.closest is ranking.entries[0] and ranking.closest.n_atoms > 0
    assert ranking.outdir is None and list(tmp_path.iterdir()) == []

    out = tmp_path / "run"
    saved = fastcsi.select(demo_downstream(), ups, small, outdir=out)
    assert (out / "csi.json").is_file()
    assert [e.upstream for e in saved] == [e.upstream for e in ranking]
    assert [e.csi for e in saved] == pytest.approx([e.csi for e in ranking], rel=1e-12)
    again = fastcsi.Ranking.load(out)
    assert again.entries == saved.entries and again.to_dict()["ranking"] == json.loads(
        (out / "csi.json").read_text())["ranking"]


def test_pretrain_and_finetune_from_python(tmp_path):
    data = demo_downstream()
    common = {"model": "gemnet-oc-tiny", "batch_size": 4, "max_threads": 1, "progress": False, "log": lambda *a: None}
    summary = fastcsi.pretrain(demo_upstreams()[0], 8, epochs=1, rundir=tmp_path / "pre", **common)
    assert summary["steps"] == 2 and (tmp_path / "pre" / "backbone.pt").is_file()
    result = fastcsi.finetune(tmp_path / "pre", data, split="8,4,8", epochs=1, rundir=tmp_path / "ft", **common)
    assert set(result["test_mae"]) == {"energy", "forces"}
    with pytest.raises(fastcsi.FastCSIError, match="unexpected keyword"):
        fastcsi.pretrain(data, 8, rundir=tmp_path / "x", no_such_option=1)
