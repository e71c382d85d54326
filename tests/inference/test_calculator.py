"""FastCSICalculator against the network it restores, against finite differences of its own energy
(forces, stress under strain), in NVE molecular dynamics, under rotations; energy-only fine-tunes."""
import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.io import read
from ase.md.verlet import VelocityVerlet

from fastcsi.calculator import FastCSICalculator, NotAvailableError
from fastcsi.errors import FastCSIError


@pytest.fixture(scope="module")
def calc64(ethanol_run):
    return FastCSICalculator(model=ethanol_run[0], device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def frames(rmd17):
    return read(rmd17, index="100:105")


def trained_network(rundir):
    """The NormalizedModel exactly as fine-tuning trained it (its own gradient forces), in float64."""
    from fastcsi.model import GemNetOC
    from fastcsi.train import NormalizedModel, Normalizer
    from fastcsi.train import checkpoint as ckpt

    record = ckpt.load(rundir / ckpt.FINAL, kind="fastcsi-model")
    gemnet = GemNetOC(**record["hparams"])
    gemnet.load_state_dict(record["weights"])
    assert gemnet.hparams["regress_forces"] and not gemnet.hparams["direct_forces"]
    return NormalizedModel(gemnet.double().eval(), Normalizer.from_dict(record["normalizer"]), gradient_forces=True)


def test_calculator_equals_the_trained_network(ethanol_run, calc64, frames):
    from fastcsi.data import batch_from_atoms

    reference = trained_network(ethanol_run[0])(batch_from_atoms(frames, dtype=torch.float64))
    energies = reference["energy"].detach().numpy()
    forces = reference["forces"].detach().numpy().reshape(len(frames), -1, 3)
    many = calc64.calculate_many(frames)
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = calc64
        assert atoms.get_potential_energy() == pytest.approx(energies[k], rel=1e-10, abs=0)
        assert atoms.get_potential_energy() == atoms.get_total_energy() - atoms.get_kinetic_energy()
        assert np.abs(atoms.get_forces() - forces[k]).max() <= 1e-10 * np.abs(forces[k]).max()
        assert many[k]["energy"] == pytest.approx(energies[k], rel=1e-10, abs=0)
        assert many[k]["free_energy"] == many[k]["energy"]
        assert np.abs(many[k]["forces"] - forces[k]).max() <= 1e-10 * np.abs(forces[k]).max()
    assert abs(energies[0] - frames[0].get_potential_energy()) < 5.0  # physical units: reference energies restored


def test_forces_are_finite_differences_of_the_energy(calc64, frames):
    atoms = frames[0].copy()
    atoms.calc = calc64
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    analytic = atoms.get_forces()
    assert np.abs(analytic).max() > 1e-3  # a test of something
    assert np.abs(numeric - analytic).max() < 1e-6


def test_rotating_the_input_rotates_the_forces(calc64, frames):
    from scipy.spatial.transform import Rotation

    atoms = frames[1].copy()
    atoms.calc = calc64
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    rotation = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T + np.array([3.0, -2.0, 1.0])
    rotated.calc = calc64
    assert rotated.get_potential_energy() == pytest.approx(energy, rel=1e-12, abs=1e-9)
    assert np.abs(rotated.get_forces() - forces @ rotation.T).max() < 1e-9


def test_nve_velocity_verlet_conserves_total_energy(calc64, frames):
    """300 steps of 0.5 fs of ethanol (150 fs) with float64 gradient forces: the total energy stays
    within 5e-5 eV (measured ~1e-5 eV) while ~0.05 eV move between kinetic and potential energy."""
    atoms = frames[0].copy()
    atoms.calc = calc64
    rng = np.random.default_rng(0)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300.0)
    atoms.set_momenta(momenta - momenta.mean(0))  # no drift of the centre of mass
    potential, total = [], []

    def record():
        potential.append(atoms.get_potential_energy())
        total.append(potential[-1] + atoms.get_kinetic_energy())

    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.attach(record, interval=1)
    dynamics.run(300)
    potential, total = np.array(potential), np.array(total)
    exchanged = np.abs(potential - potential[0]).max()
    drift = np.abs(total - total[0]).max()
    assert exchanged > 0.01
    assert drift < 5e-5 and drift < 2e-3 * exchanged


def test_energy_only_finetune_still_gives_forces(energy_only_run, frames):
    rundir, results = energy_only_run
    assert results["targets"] == ["energy"] and not results["model"]["hparams"]["regress_forces"]
    calc = FastCSICalculator(model=rundir, device="cpu", dtype="float64")
    assert {"energy", "forces", "stress"} <= set(calc.implemented_properties)
    atoms = frames[2].copy()
    atoms.calc = calc
    analytic = atoms.get_forces()
    assert np.abs(analytic).max() > 1e-4
    assert np.abs(calculate_numerical_forces(atoms, eps=1e-4) - analytic).max() < 1e-6


@pytest.fixture(scope="module")
def alloy_calc(shared_data, tmp_path_factory):
    """A fresh float64 gradient-force gemnet-oc-tiny (4 Å cutoff, every neighbour kept, so the energy
    is smooth under strain) with a normaliser fitted on the EMT alloys, saved as final.pt."""
    from fastcsi.data import open_dataset
    from fastcsi.model import build_model
    from fastcsi.train import NormalizedModel, Normalizer
    from fastcsi.train.finetune import save_model

    structures = list(open_dataset(shared_data / "generated" / "bulk" / "alloys.db"))
    torch.manual_seed(0)
    gemnet = build_model("gemnet-oc-tiny", cutoff=4.0, max_neighbors=200, regress_forces=True, direct_forces=False)
    model = NormalizedModel(gemnet, Normalizer.fit(structures), gradient_forces=True)
    path = tmp_path_factory.mktemp("alloys") / "final.pt"
    save_model(path, model, model.state_dict(), ("energy", "forces"),
               {int(z) for s in structures for z in s.atomic_numbers})
    return FastCSICalculator(model=path, device="cpu", dtype="float64"), structures


def test_stress_is_the_strain_derivative_of_the_energy(alloy_calc):
    calc, structures = alloy_calc
    atoms = structures[0].to_ase()
    atoms.calc = calc
    stress = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(stress).max() > 1e-4
    assert np.abs(numeric - stress).max() < 1e-7
    # forces of the periodic structure too (three atoms, images across the cell), and the batched
    # path gives the same stress
    numeric_forces = calculate_numerical_forces(atoms, eps=1e-4, iatoms=[0, 7, 15])
    assert np.abs(numeric_forces - atoms.get_forces()[[0, 7, 15]]).max() < 1e-6
    batched = calc.calculate_many([s.to_ase() for s in structures[:3]], properties=("energy", "forces", "stress"))
    assert np.abs(batched[0]["stress"] - stress).max() < 1e-12


def test_properties_a_structure_or_model_cannot_give(alloy_calc, calc64, frames, tmp_path):
    calc, structures = alloy_calc
    molecule = frames[0].copy()
    molecule.calc = calc64
    with pytest.raises(NotAvailableError, match="fully periodic"):
        molecule.get_stress()
    ethanol_on_alloys = frames[0].copy()
    ethanol_on_alloys.calc = calc
    with pytest.raises(FastCSIError, match=r"element H \(Z=1\).*not in the model's training data"):
        ethanol_on_alloys.get_potential_energy()
    broken = frames[0].copy()
    broken.positions[3] = np.nan
    broken.calc = calc64
    with pytest.raises(FastCSIError, match="NaN"):
        broken.get_forces()


def test_readme_nve_snippet_runs_without_deprecation_warnings(ethanol_run, rmd17, tmp_path):
    # The README's NVE example as a user copies it (model, data and trajectory paths swapped for the
    # test's, 2 steps): ASE must not warn about a deprecated call in it.
    import re
    import warnings
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "VelocityVerlet" in block)
    rundir, _ = ethanol_run
    for old, new in (('"runs/ft_ethanol"', repr(str(rundir))),
                     ('"../shared/data/rmd17/rmd17_ethanol_train_1.extxyz"', repr(str(rmd17))),
                     ('"runs/ethanol_nve.traj"', repr(str(tmp_path / "nve.traj"))), ("dyn.run(500)", "dyn.run(2)")):
        assert old in snippet, old
        snippet = snippet.replace(old, new)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        exec(compile(snippet, "README.md", "exec"), {})
    assert (tmp_path / "nve.traj").is_file()
