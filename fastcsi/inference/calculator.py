"""``FastCSICalculator``: a trained fastcsi model as an ASE calculator (MD, relaxations, screening).

    from fastcsi.calculator import FastCSICalculator
    atoms.calc = FastCSICalculator(model="runs/ft", device="auto", dtype="float64")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()  # eV, eV/Å, eV/Å^3

Energy and forces come from one forward (and, without a direct force head, one backward) pass;
stress (fully periodic structures, models whose forces are -dE/dx) from the same backward pass when
asked for. ``calculate_many`` predicts a list of structures in batches. Bad input raises
:class:`FastCSIError`; a property the model or structure cannot give raises ``NotAvailableError``,
which is also ASE's ``PropertyNotImplementedError``.

``threads``: torch's intra-op CPU threads while the calculator predicts (restored afterwards).
``"auto"`` (default) gives a small model one thread on CPU: with torch's default, an MD run on a
busy machine ran 5-700x slower (threads spinning against the other processes; see
:mod:`fastcsi.threads`). An integer is used as given. A script that owns its process can also set
``OMP_WAIT_POLICY=PASSIVE`` before it imports torch (as the ``fastcsi`` command does): libgomp reads
it once, so a calculator cannot set it for a process that already loaded torch.
"""
from __future__ import annotations

from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from fastcsi.errors import FastCSIError
from fastcsi.inference.model import TrainedModel, load_model
from fastcsi.threads import thread_policy


class NotAvailableError(FastCSIError, PropertyNotImplementedError):
    """A property this model or this structure has no value for (e.g. stress of a molecule)."""


def structure_of(atoms, index: int = 0):
    """Geometry only (labels of a previous calculation are not needed to predict)."""
    from fastcsi.data import Structure

    return Structure(atoms.get_atomic_numbers(), atoms.get_positions(), cell=atoms.get_cell().array,
                     pbc=atoms.get_pbc(), tags=atoms.get_tags() if atoms.has("tags") else None, id=str(index))


class FastCSICalculator(Calculator):
    """ASE calculator of a fine-tuning (or pretraining) run directory, its ``final.pt``, or a
    loaded :class:`~fastcsi.inference.TrainedModel`. ``dtype``: float32 (as trained; fast) or
    float64 (MD energy conservation, finite-difference checks); ``threads``: ``"auto"`` or a count
    (see the module docstring)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model, device="auto", dtype="float32", batch_size: int = 32, threads="auto", **kwargs):
        from fastcsi.pipeline.settings import parse_threads

        super().__init__(**kwargs)
        self.threads = parse_threads(threads)  # checked before the model loads
        self.model = model if isinstance(model, TrainedModel) else load_model(model, device=device, dtype=dtype)
        if self.model.target != "energy":
            raise FastCSIError(f"{self.model.source.get('path', 'the model')} predicts {self.model.target!r}, not an "
                               "energy: an ASE calculator needs an energy model (use fastcsi predict for others)")
        if batch_size < 1:
            raise FastCSIError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.implemented_properties = ["energy", "free_energy", *(p for p in self.model.properties if p != "energy")]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self._predict([self.atoms], properties, single=True)[0]

    def calculate_many(self, atoms_list, properties=("energy", "forces")) -> list[dict]:
        """Results (the keys of ``calc.results``) for each of ``atoms_list``, ``batch_size`` at a time."""
        atoms_list = list(atoms_list)
        out = []
        for start in range(0, len(atoms_list), self.batch_size):
            out += self._predict(atoms_list[start:start + self.batch_size], properties, offset=start)
        return out

    def _predict(self, atoms_list, properties, single: bool = False, offset: int = 0) -> list[dict]:
        want_stress = "stress" in properties
        if want_stress and "stress" not in self.model.properties:
            raise NotAvailableError("stress needs forces = -dE/dx; this model has a direct force head")
        for i, atoms in enumerate(atoms_list):
            if want_stress and not (atoms.pbc.all() and atoms.cell.rank == 3):
                raise NotAvailableError(f"{'atoms' if single else f'structure {offset + i}'}: stress is defined for "
                                        "fully periodic structures (pbc on all three cell vectors) only")
        structures = [structure_of(a, offset + i) for i, a in enumerate(atoms_list)]
        wanted = ("energy", "forces", "stress") if want_stress else ("energy", "forces")
        where = (lambda i: "atoms") if single else (lambda i: f"structure {offset + i}")
        results = []
        with thread_policy(self.model.network, self.model.device, self.threads):
            predictions = self.model.predict(structures, wanted, where=where)
        for r in predictions:
            entry = {"energy": r["energy"], "free_energy": r["energy"], "forces": r["forces"]}
            if want_stress:
                entry["stress"] = full_3x3_to_voigt_6_stress(r["stress"])
            results.append(entry)
        return results
