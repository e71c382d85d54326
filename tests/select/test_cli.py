"""`fastcsi select` / `fastcsi stats compute` from the command line: outputs, and every bad input
gives one line on stderr, exit status 2 and no half-written output."""
import json

import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli import cli


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_select_and_stats_compute(tiny_data, tmp_path):
    npz = tmp_path / "organic.npz"
    r = _invoke("stats", "compute", tiny_data["organic"], "-o", npz, "--samples", "4", "--seed", "1", "--quiet")
    assert r.exit_code == 0, r.output
    assert npz.is_file() and "4 structures" in r.stdout

    out = tmp_path / "out"
    r = _invoke("select", "--downstream", tiny_data["down"], "--upstream", tiny_data["metal"], "--upstream", npz,
                "--samples", "4", "--seeds", "1", "-o", out, "--quiet", "--trace")
    assert r.exit_code == 0, r.output
    assert (out / "trace" / "trace.json").is_file()  # the torch.profiler chrome trace
    ranking = json.loads((out / "csi.json").read_text())["ranking"]
    assert [row["upstream"] for row in ranking] == [str(npz), str(tiny_data["metal"])]
    assert "CSI ranking (closest first)" in r.stdout and "organic.npz" in r.stdout
    assert "fewer than 10x" in r.stderr  # the adequacy warning for these tiny samples


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--seeds", "0,x"], ["--seeds"]),
        (["--seeds", "0,0"], ["distinct"]),
        (["--samples", "1"], ["--samples"]),
        (["--samples", "lots"], ["--samples"]),
        (["--agg", "median"], ["--agg"]),
        (["--upstream", "/nonexistent/up.extxyz"], ["/nonexistent/up.extxyz"]),
    ],
)
def test_bad_options(tiny_data, tmp_path, extra, needles):
    out = tmp_path / "out"
    args = ["select", "--downstream", tiny_data["down"], "--upstream", tiny_data["organic"], "-o", out, "--quiet"]
    _assert_user_error(_invoke(*args, *extra), *needles)
    assert not (out / "csi.json").exists()


def test_empty_datasets(tiny_data, tmp_path):
    empty_file = tmp_path / "empty.extxyz"
    empty_file.write_text("")
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    for empty in (empty_file, empty_dir):
        out = tmp_path / f"out_{empty.name}"
        r = _invoke("select", "--downstream", tiny_data["down"], "--upstream", empty, "-o", out, "--quiet")
        _assert_user_error(r, str(empty))
        assert not out.exists()


def test_elements_the_backbone_cannot_embed(tiny_data, tmp_path):
    from fastcsi.model import build_model, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "light_elements.pt"
    save_checkpoint(build_model("gemnet-oc-tiny", num_elements=10), ckpt)  # H..Ne only: no Cu/Pt
    out = tmp_path / "out"
    r = _invoke("select", "--downstream", tiny_data["down"], "--upstream", tiny_data["metal"],
                "--checkpoint", ckpt, "--samples", "all", "--seeds", "0", "-o", out, "--quiet")
    _assert_user_error(r, str(tiny_data["metal"]), "1..10")
    assert not (out / "csi.json").exists()


def test_stats_from_another_checkpoint_is_refused(tiny_data, tmp_path):
    from fastcsi.model import build_model, save_checkpoint

    torch.manual_seed(7)
    ckpt = tmp_path / "other.pt"
    save_checkpoint(build_model("gemnet-oc-tiny"), ckpt)
    npz = tmp_path / "up_other.npz"
    r = _invoke("stats", "compute", tiny_data["organic"], "-o", npz, "--checkpoint", ckpt, "--samples", "3", "--quiet")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    r = _invoke("select", "--downstream", tiny_data["down"], "--upstream", npz, "--samples", "3", "--seeds", "0",
                "-o", out, "--quiet")
    _assert_user_error(r, str(npz), "extractor")
    assert not (out / "csi.json").exists()


def test_stats_compute_rejects_bad_values(tiny_data, tmp_path):
    _assert_user_error(_invoke("stats", "compute", tiny_data["down"], "-o", tmp_path / "x.txt"), ".npz")
    _assert_user_error(_invoke("stats", "compute", tiny_data["down"], "-o", tmp_path / "x.npz", "--samples", "0"),
                       "--samples")
    _assert_user_error(_invoke("stats", "compute", tiny_data["down"], "-o", tmp_path / "x.npz", "--seed", "-1"),
                       "--seed")
    assert not (tmp_path / "x.npz").exists()


def test_select_without_datasets_runs_the_demo(tmp_path):
    from fastcsi.data.demo import demo_downstream, demo_upstreams

    out = tmp_path / "demo"
    r = _invoke("select", "--samples", "3", "--seeds", "0", "-o", out, "--quiet", "--no-per-element")
    assert r.exit_code == 0, r.output
    result = json.loads((out / "csi.json").read_text())
    assert result["downstream"]["path"] == str(demo_downstream())
    assert sorted(row["upstream"] for row in result["ranking"]) == sorted(str(p) for p in demo_upstreams())
    assert result["settings"]["threads"] == 1  # the demo's thread budget
    assert not (out / "csi_per_element.png").exists()


def test_upstream_without_downstream_is_an_error(tiny_data):
    _assert_user_error(_invoke("select", "--upstream", tiny_data["organic"]), "--downstream")
