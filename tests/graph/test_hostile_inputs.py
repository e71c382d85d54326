"""Hostile geometries (tests/graph/hostile_geometries.py) on the normal build: through the
dispatcher, every CPU backend matches the reference or raises one FastCSIError; through the CLI
(``data info``, ``select`` in float32 and float64, ``predict``), every command exits 0 or 2, with one
``fastcsi: error:`` line when it is 2. The sanitizer build runs the same families longer
(tools/sanitize_fuzz.py, a CI step of its own).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from fastcsi._native import has as native_has
from fastcsi.cli.app import cli
from hostile_geometries import check_against_reference, cutoffs, hostile_batches, representatives

BACKENDS = ("cpu",) if native_has("radius_batch") else ()


@pytest.mark.skipif(not BACKENDS, reason="fastcsi._C not built")
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(hostile_batches(max_size=3), cutoffs)
def test_hostile_batches_match_the_reference_or_are_one_error(structures, cutoff):
    for dtype in (torch.float64, torch.float32):
        check_against_reference(structures, cutoff, dtype, BACKENDS)


@pytest.mark.skipif(not BACKENDS, reason="fastcsi._C not built")
def test_the_check_fails_a_backend_whose_outcome_differs_from_the_reference(monkeypatch):
    """The property compares outcomes, not only edges: a backend that refuses what the reference
    computes (or the reverse) fails it; only the reference's smaller edge budget excuses a difference."""
    from fastcsi.errors import FastCSIError
    from fastcsi.graph import radius_cpu, radius_ref

    slab = [representatives()["slab"]]

    def raising(message):
        def backend(*args, **kwargs):
            raise FastCSIError(f"radius_graph: structure 0 of the batch {message}")
        return backend

    assert check_against_reference(slab, 6.0, torch.float64) == {"ref": "ok", "cpu": "ok"}
    with monkeypatch.context() as patch:
        patch.setattr(radius_cpu, "radius_graph_cpu", raising("is refused for no reason"))
        with pytest.raises(AssertionError, match="cpu error but ref ok"):
            check_against_reference(slab, 6.0, torch.float64)
        # the kernel's edge budget is the larger one: its budget error where the reference computes is a bug
        patch.setattr(radius_cpu, "radius_graph_cpu", raising("takes the batch past the memory budget"))
        with pytest.raises(AssertionError, match="cpu budget error but ref ok"):
            check_against_reference(slab, 6.0, torch.float64)
    with monkeypatch.context() as patch:
        patch.setattr(radius_ref, "radius_graph_ref", raising("is refused for no reason"))
        with pytest.raises(AssertionError, match="cpu ok but ref error"):
            check_against_reference(slab, 6.0, torch.float32)
        patch.setattr(radius_ref, "radius_graph_ref", raising("takes the batch past the reference's edge budget"))
        assert check_against_reference(slab, 6.0, torch.float32) == {"ref": "budget error", "cpu": "ok"}


# families the library must refuse (exit 2) and those it computes (exit 0, or 2 where the backbone
# itself returns non-finite features, which select refuses by name)
REFUSED = ["issue-26 span", "offset 1e10", "thin cell 1e-4", "singular"]
COMPUTED = ["skewed left-handed", "cell below cutoff", "one atom", "one atom periodic", "slab", "thin cell 0.05",
            "scaled 1e-200", "60 coincident"]
SELECT = ["--backbone", "gemnet-oc-random", "--samples", "all", "--seeds", "0", "--quiet", "--no-cache",
          "--threads", "1"]


def _file_name(family: str) -> str:
    return family.replace(" ", "_") + ".extxyz"


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    from ase.io import write

    root = tmp_path_factory.mktemp("hostile")
    for family, atoms in representatives().items():
        write(root / _file_name(family), [atoms, atoms])
    return root


def _run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    shown = " ".join(str(a) for a in args)
    assert result.exit_code in (0, 2), f"{shown}\nexit {result.exit_code}\n{result.output[-3000:]}\n{result.exception!r}"
    assert "Traceback" not in result.output, f"{shown}\n{result.output[-3000:]}"
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastcsi: error: "), f"{shown}\n{result.stderr}"
    return result


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_issue_26_reproduction_exits_2_with_one_line(hostile_files, dtype, tmp_path):
    """The reproduction exactly as filed: the default backbone, two 60-atom structures."""
    data = hostile_files / _file_name("issue-26 span")
    result = _run(["select", "--dtype", dtype, "--downstream", data, "--upstream", data, "--samples", "2",
                   "--seeds", "0", "-o", tmp_path / "out", "--quiet", "--no-cache"])
    assert result.exit_code == 2
    assert "atoms span 2.6e+10 Å along x" in result.stderr and "wrong unit" in result.stderr
    assert str(data) in result.stderr  # the line names the file the structure came from


def test_data_info_reads_every_hostile_file(hostile_files):
    for family in representatives():
        _run(["data", "info", hostile_files / _file_name(family)])


@pytest.mark.parametrize("family", REFUSED)
def test_refused_geometry_is_one_line_exit_2(hostile_files, family, tmp_path):
    data = hostile_files / _file_name(family)
    result = _run(["select", "--dtype", "float64", "--downstream", data, "--upstream", data, "-o", tmp_path / "o",
                   *SELECT])
    assert result.exit_code == 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_computed_geometries_through_select(hostile_files, dtype, tmp_path):
    """Every accepted family as an upstream of one select run (each one its own dataset)."""
    upstreams = [arg for family in COMPUTED[:5] for arg in ("--upstream", hostile_files / _file_name(family))]
    result = _run(["select", "--dtype", dtype, "--downstream", hostile_files / _file_name("slab"), *upstreams,
                   "-o", tmp_path / "o", *SELECT])
    assert result.exit_code == 0, result.stderr
    for family in COMPUTED[5:]:  # cells far below the cutoff, atoms at one point: 0, or NaN features refused
        data = hostile_files / _file_name(family)
        _run(["select", "--dtype", dtype, "--downstream", data, "--upstream", data, "-o", tmp_path / family, *SELECT])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    root = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        atoms = Atoms("H4", positions=rng.uniform(0, 3, (4, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(0, 0.1, (4, 3)))
        frames.append(atoms)
    write(root / "train.extxyz", frames)
    result = _run(["finetune", "--pretrained", "none", "--data", root / "train.extxyz", "--split", "3,1,2",
                   "--epochs", "1", "-o", root / "ft", "--model", "gemnet-oc-tiny", "--batch-size", "2",
                   "--threads", "1", "--quiet"])
    assert result.exit_code == 0
    return root / "ft"


@pytest.mark.parametrize("family", ["issue-26 span", "thin cell 1e-4", "skewed left-handed", "60 coincident",
                                    "one atom periodic"])
def test_predict_on_hostile_geometry_exits_0_or_2(hostile_files, tiny_model, family, tmp_path):
    _run(["predict", "--model", tiny_model, "--data", hostile_files / _file_name(family), "-o",
          tmp_path / "pred.extxyz", "--quiet"])
