"""fastcsi predict / evaluate through the CLI on the shared rMD17 file, evaluate against finetune's own
test MAE, and user mistakes (one line on stderr, exit status 2)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli.app import cli


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_predict_and_evaluate_on_the_shared_rmd17_file(ethanol_run, rmd17, tmp_path):
    from ase.io import read

    from fastcsi.data import open_dataset
    from fastcsi.inference import load_model

    rundir, _ = ethanol_run
    out = tmp_path / "predicted.extxyz"
    result = run(["predict", "--model", rundir, "--data", rmd17, "-o", out, "--batch-size", 64, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "wrote 1000 structures with fastcsi_energy, fastcsi_forces" in result.output
    source = open_dataset(rmd17)
    model = load_model(rundir, device="cpu")
    frames = read(out, index=":")
    assert len(frames) == 1000
    for i in (0, 999):
        expected = model.predict([source[i]])[0]
        assert frames[i].get_potential_energy() == source[i].energy  # the labels stay, under their own names
        assert np.array_equal(frames[i].get_forces(), source[i].forces)
        # float32 network: a batch of 64 and a batch of 1 differ in summation order only
        assert frames[i].info["fastcsi_energy"] == pytest.approx(expected["energy"], rel=1e-9)
        assert np.allclose(frames[i].arrays["fastcsi_forces"], expected["forces"], atol=1e-6)
    record = json.loads((tmp_path / "predicted.extxyz.json").read_text())
    assert record["written"] == 1000 and record["keys"]["energy"] == "fastcsi_energy" and "versions" in record

    # evaluate on the same file: its MAE is the one the predictions file shows
    ev = run(["evaluate", "--model", rundir, "--data", rmd17, "-o", tmp_path / "eval", "--batch-size", 64, "--quiet"])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    errors = np.array([f.info["fastcsi_energy"] - f.get_potential_energy() for f in frames])
    assert metrics["metrics"]["energy"]["mae"] == pytest.approx(np.abs(errors).mean() * 1000, rel=1e-6)
    assert metrics["metrics"]["energy"]["unit"] == "meV" and metrics["metrics"]["forces"]["unit"] == "meV/Å"
    assert metrics["metrics"]["forces"]["count"] == 1000 * 9 * 3
    assert set(metrics["forces_per_element"]) == {"H", "C", "O"}
    for png in ("parity_energy.png", "parity_forces.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_on_the_test_file_reproduces_finetune_test_mae(ethanol_run, split_files, tmp_path):
    rundir, results = ethanol_run
    ev = run(["evaluate", "--model", rundir, "--data", split_files["test"], "-o", tmp_path / "ev", "--quiet"])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    for target in ("energy", "forces"):
        assert metrics[target]["mae"] == pytest.approx(results["test_mae"][target], rel=1e-4), target
    rmse, mae = metrics["forces"]["rmse"], metrics["forces"]["mae"]
    assert rmse >= mae > 0


def test_predict_an_ase_db_with_the_energy_only_model(energy_only_run, split_files, tmp_path):
    import ase.db

    rundir, _ = energy_only_run
    out = tmp_path / "pred.db"
    result = run(["predict", "--model", rundir, "--data", split_files["test"], "-o", out, "--target", "energy",
                  "--quiet"])
    assert result.exit_code == 0, result.output
    db = ase.db.connect(out)
    rows = list(db.select())
    assert len(rows) == 6 and all("fastcsi_energy" in r.key_value_pairs for r in rows)
    assert "fastcsi_forces" not in rows[0].data and rows[0].forces.shape == (9, 3)  # the label, kept
    assert db.metadata["kind"] == "fastcsi-predict"


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, ethanol_run, rmd17, shared_data):
    from ase.io import read, write

    from fastcsi.model import build_model, save_checkpoint
    from fastcsi.train import checkpoint as ckpt

    root = tmp_path_factory.mktemp("bad")
    (root / "empty_run").mkdir()
    (root / "unfinished").mkdir()
    (root / "unfinished" / "last.pt").write_bytes(b"")
    (root / "old_run").mkdir()
    (root / "old_run" / "results.json").write_text("{}")
    record = ckpt.load(ethanol_run[0] / ckpt.FINAL)
    ckpt.save(root / "other_arch.pt", {**record, "architecture": "mace"})
    torch.save({"w": torch.zeros(3)}, root / "foreign.pt")
    save_checkpoint(build_model("gemnet-oc-tiny"), root / "backbone.pt")
    frame = read(rmd17, index=0)
    frame.positions[2] = np.nan
    write(root / "nan.extxyz", frame)
    unlabelled = read(rmd17, index=0)
    unlabelled.calc = None
    write(root / "unlabelled.extxyz", unlabelled)
    return {"root": root, "run": ethanol_run[0], "rmd17": rmd17,
            "md22": shared_data / "md22" / "md22_Ac-Ala3-NHMe_5frames.xyz"}


@pytest.mark.parametrize("args, message", [
    (["predict", "--model", "{root}/empty_run", "--data", "{rmd17}", "-o", "{root}/o.extxyz"],
     "run directory without a model"),
    (["predict", "--model", "{root}/unfinished", "--data", "{rmd17}", "-o", "{root}/o.extxyz"], "has not finished"),
    (["predict", "--model", "{root}/old_run", "--data", "{rmd17}", "-o", "{root}/o.extxyz"],
     "before fastcsi wrote final.pt"),
    (["predict", "--model", "{root}/other_arch.pt", "--data", "{rmd17}", "-o", "{root}/o.extxyz"],
     "architecture 'mace'"),
    (["evaluate", "--model", "{root}/foreign.pt", "--data", "{rmd17}", "-o", "{root}/ev"], "not a fastcsi model"),
    (["predict", "--model", "{root}/backbone.pt", "--data", "{rmd17}", "-o", "{root}/o.extxyz"],
     "without trained heads"),
    (["predict", "--model", "{root}/missing", "--data", "{rmd17}", "-o", "{root}/o.extxyz"], "model not found"),
    (["predict", "--model", "{run}", "--data", "{md22}", "-o", "{root}/o.extxyz"],
     "element N (Z=7) was not in the model's training data"),
    (["predict", "--model", "{run}", "--data", "{root}/nan.extxyz", "-o", "{root}/o.extxyz"], "NaN"),
    (["predict", "--model", "{run}", "--data", "{rmd17}", "-o", "{root}/o.extxyz", "--target", "homo"],
     "no head for 'homo'"),
    (["evaluate", "--model", "{run}", "--data", "{rmd17}", "-o", "{root}/ev", "--target", "gap"], "no head for 'gap'"),
    (["evaluate", "--model", "{run}", "--data", "{root}/unlabelled.extxyz", "-o", "{root}/ev"],
     "structure 0 has no 'energy' label"),
    (["predict", "--model", "{run}", "--data", "{rmd17}", "-o", "{root}/o.csv"], "must end in .extxyz, .xyz or .db"),
    (["predict", "--model", "{run}", "--data", "{rmd17}", "-o", "{root}/o.extxyz", "--batch-size", "0"],
     "at least 1"),
])
def test_user_mistakes_are_one_line_exit_2(bad_inputs, args, message):
    args = [a.format(**bad_inputs) for a in args]
    result = run(args + ["--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error:"), result.output
    assert message in lines[0]
    assert not (bad_inputs["root"] / "o.extxyz").exists()


def test_a_graph_level_target_model_predicts_and_evaluates_it(shared_data, tmp_path):
    """QM9 U0 (Ha, native), summed over atoms (the qm9 recipe): evaluate on the run's own test
    structures gives its test MAE; the calculator refuses a model without an energy."""
    from ase.io import read, write

    from fastcsi.calculator import FastCSICalculator
    from fastcsi.data import open_dataset
    from fastcsi.errors import FastCSIError
    from fastcsi.train.splits import split_indices

    qm9 = shared_data / "qm9" / "qm9_reduced_100.extxyz"
    rundir = tmp_path / "u0"
    ft = run(["finetune", "--pretrained", "none", "--data", qm9, "--target", "U0", "--recipe", "qm9", "--split",
              "24,8,8", "--model", "gemnet-oc-tiny", "--epochs", 1, "--batch-size", 8, "--threads", 1, "--quiet",
              "-o", rundir])
    assert ft.exit_code == 0, ft.output
    results = json.loads((rundir / "results.json").read_text())
    test_idx = split_indices(100, "24,8,8", seed=results["split"]["seed"])["test"]
    frames = read(qm9, index=":")
    write(tmp_path / "test.extxyz", [frames[i] for i in test_idx])
    ev = run(["evaluate", "--model", rundir, "--data", tmp_path / "test.extxyz", "-o", tmp_path / "ev", "--quiet"])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"U0"} and metrics["U0"]["unit"] == "native"
    assert metrics["U0"]["mae"] == pytest.approx(results["test_mae"]["U0"], rel=1e-4)
    pred = run(["predict", "--model", rundir, "--data", tmp_path / "test.extxyz", "-o", tmp_path / "p.extxyz",
                "--quiet"])
    assert pred.exit_code == 0, pred.output
    written = open_dataset(tmp_path / "p.extxyz")
    assert "fastcsi_U0" in written[0].targets and written[0].targets["U0"] == frames[test_idx[0]].info["U0"]
    with pytest.raises(FastCSIError, match="not an energy"):
        FastCSICalculator(model=rundir)


def test_evaluate_and_predict_read_files_in_other_units(ethanol_run, split_files, tmp_path):
    # The test file again, in kcal/mol and kcal/mol/Å: --energy-unit converts it back to the same metrics.
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    from fastcsi.data.units import KCAL_MOL_EV

    rundir, _ = ethanol_run
    frames = read(split_files["test"], index=":")
    for atoms in frames:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy / KCAL_MOL_EV, forces=forces / KCAL_MOL_EV)
    kcal = tmp_path / "test_kcal.extxyz"
    write(kcal, frames)
    plain = run(["evaluate", "--model", rundir, "--data", split_files["test"], "-o", tmp_path / "plain", "--quiet"])
    given = run(["evaluate", "--model", rundir, "--data", kcal, "-o", tmp_path / "kcal", "--quiet",
                 "--energy-unit", "kcal/mol"])
    assert plain.exit_code == 0 and given.exit_code == 0, given.output
    a = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    b = json.loads((tmp_path / "kcal" / "metrics.json").read_text())
    for target in ("energy", "forces"):
        assert b["metrics"][target]["mae"] == pytest.approx(a["metrics"][target]["mae"], rel=1e-6)
    assert b["data"]["options"] == {"energy_unit": "kcal/mol"} and "kcal/mol" in b["data"]["units_note"]
    predicted = run(["predict", "--model", rundir, "--data", kcal, "-o", tmp_path / "p.extxyz", "--quiet",
                     "--energy-unit", "kcal/mol", "--force-unit", "kcal/mol/Å"])
    assert predicted.exit_code == 0, predicted.output
    record = json.loads((tmp_path / "p.extxyz.json").read_text())
    assert record["data"]["options"] == {"energy_unit": "kcal/mol", "force_unit": "kcal/mol/Å"}
