"""Small files of each format family, written the way their producers write them (the readers'
tests, and the fault and damage tests that must run without ../shared/data)."""
import pickle
import sys
import types

import h5py
import numpy as np
import torch

RNG = np.random.default_rng(0)


def _mol(n_frames, n_atoms):
    return RNG.normal(size=(n_frames, n_atoms, 3)) * 1.5


ANI1X_MOLECULES = (("C1H4", 3, [6, 1, 1, 1, 1]), ("H2O1", 2, [8, 1, 1]))


def write_ani1x(path, molecules=ANI1X_MOLECULES):
    with h5py.File(path, "w") as h5:
        for name, n_frames, z in molecules:
            g = h5.create_group(name)
            g["atomic_numbers"] = np.array(z, np.uint8)
            g["coordinates"] = _mol(n_frames, len(z)).astype(np.float32)
            g["wb97x_dz.energy"] = RNG.normal(size=n_frames) - 40
            g["wb97x_dz.forces"] = _mol(n_frames, len(z)).astype(np.float32)
    return path


def write_spice(path):
    with h5py.File(path, "w") as h5:
        g = h5.create_group("mol")
        g["atomic_numbers"] = np.array([8, 1, 1], np.int16)
        g.create_dataset("conformations", data=_mol(4, 3).astype(np.float32)).attrs["units"] = "bohr"
        g.create_dataset("dft_total_energy", data=RNG.normal(size=4)).attrs["units"] = "hartree"
        g.create_dataset("dft_total_gradient", data=_mol(4, 3).astype(np.float32)).attrs["units"] = "hartree/bohr"
        g2 = h5.create_group("mol_ev")  # units attributes must be honoured, not assumed
        g2["atomic_numbers"] = np.array([1, 1], np.int16)
        g2.create_dataset("conformations", data=np.array([[[0, 0, 0], [0, 0, 0.74]]], np.float32)).attrs["units"] = "angstrom"
        g2.create_dataset("dft_total_energy", data=np.array([-31.0])).attrs["units"] = "eV"
        g2.create_dataset("dft_total_gradient", data=np.ones((1, 2, 3), np.float32)).attrs["units"] = "eV/angstrom"
    return path


def write_t1x(path):
    with h5py.File(path, "w") as h5:
        for split in ("data",):
            g = h5.create_group(f"{split}/C1H4/rxn1")
            g["atomic_numbers"] = np.array([6, 1, 1, 1, 1])
            g["positions"] = _mol(5, 5).astype(np.float32)
            g["wB97x_6-31G(d).energy"] = RNG.normal(size=5)
            g["wB97x_6-31G(d).forces"] = _mol(5, 5).astype(np.float32)
            for sub in ("reactant", "product", "transition_state"):
                s = g.create_group(sub)
                s["atomic_numbers"] = np.array([6, 1, 1, 1, 1])
                s["positions"] = _mol(1, 5).astype(np.float32)
        h5["train"] = h5["data"]
    return path


def write_extxyz(path, frames=4):
    from ase import Atoms
    import ase.io

    images = []
    for k in range(frames):
        a = Atoms("CH4" if k % 2 else "H2O", positions=_mol(1, 5 if k % 2 else 3)[0])
        a.info["REF_energy"] = -10.0 - k
        a.arrays["REF_forces"] = _mol(1, len(a))[0]
        a.info["config_type"] = "even" if k % 2 == 0 else "odd"
        images.append(a)
    if path is not None:
        ase.io.write(path, images, format="extxyz")
    return images


# --- LMDB written like fairchem does: pickled torch_geometric Data (faked module) -------------------
def write_lmdb(path, n=3, pyg2=True, payload=None, entries=None, tensor_sid=False, natoms="int",
               protocol=pickle.DEFAULT_PROTOCOL):
    """``n`` 4-atom entries, or one per ``entries`` item ``(atomic numbers, positions, cell or None, sid)``.

    fairchem stores ``sid`` and ``natoms`` as plain ints; other producers use a one-element tensor
    (``tensor_sid``, ``natoms="tensor"``) or leave ``natoms`` out (``natoms="absent"``). ``protocol=2``
    writes the pickles as PyG 1.x files (BINUNICODE keys)."""
    import lmdb

    data_mod = types.ModuleType("torch_geometric.data.data")
    storage_mod = types.ModuleType("torch_geometric.data.storage")
    saved = {k: sys.modules.get(k) for k in ("torch_geometric", "torch_geometric.data", data_mod.__name__, storage_mod.__name__)}
    try:
        sys.modules.update({"torch_geometric": types.ModuleType("torch_geometric"),
                            "torch_geometric.data": types.ModuleType("torch_geometric.data"),
                            data_mod.__name__: data_mod, storage_mod.__name__: storage_mod})
        Data = type("Data", (), {"__module__": data_mod.__name__})
        Storage = type("GlobalStorage", (), {"__module__": storage_mod.__name__})
        data_mod.Data, storage_mod.GlobalStorage = Data, Storage
        n = n if entries is None else len(entries)
        env = lmdb.open(str(path), subdir=False, map_size=1 << 30)
        with env.begin(write=True) as txn:
            for i in range(n):
                fields = {"pos": torch.randn(4, 3), "cell": 10 * torch.eye(3).unsqueeze(0),
                          "atomic_numbers": torch.tensor([29.0, 29.0, 8.0, 1.0]), "natoms": 4,
                          "tags": torch.tensor([0, 1, 2, 2]), "y": float(i), "force": torch.randn(4, 3),
                          "sid": 100 + i % 2, "fid": i}
                if entries is not None:
                    numbers, positions, cell, sid = entries[i]
                    m = len(numbers)
                    fields.update(pos=torch.as_tensor(positions, dtype=torch.float32), natoms=m, sid=sid,
                                  atomic_numbers=torch.as_tensor(numbers, dtype=torch.float32),
                                  tags=torch.full((m,), 2), force=torch.zeros(m, 3))
                    fields["cell"] = (torch.as_tensor(cell, dtype=torch.float32).reshape(1, 3, 3) if cell is not None
                                      else 10 * torch.eye(3).unsqueeze(0))
                if tensor_sid:
                    fields["sid"] = torch.tensor([fields["sid"]])
                if natoms == "tensor":
                    fields["natoms"] = torch.tensor([fields["natoms"]])
                elif natoms == "absent":
                    del fields["natoms"]
                d = Data()
                if pyg2:
                    store = Storage()
                    store._mapping = fields
                    d._store = store
                else:
                    d.__dict__.update(fields)
                txn.put(str(i).encode(), payload if payload is not None and i == 1 else pickle.dumps(d, protocol=protocol))
            txn.put(b"length", pickle.dumps(n))
        env.close()
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


def write_sgdml_npz(path, n_frames=6):
    """sGDML / MD22 layout: z, R, E (kcal/mol), F."""
    np.savez(path, z=np.array([8, 1, 1]), R=_mol(n_frames, 3), F=_mol(n_frames, 3), E=RNG.normal(size=(n_frames, 1)))
    return path


def write_ase_db(path, frames=4):
    import ase.db

    images = write_extxyz(None, frames)
    with ase.db.connect(str(path), type="db") as db:
        for a in images:
            db.write(a, energy_ev=float(a.info["REF_energy"]))
    return path


def write_aselmdb(path, n=6, data=None, key_value_pairs=None, seed=0):
    """fairchem's ASE-LMDB (``ase.db.connect(..., type="aselmdb")``, needs ase-db-backends): ``n`` rows
    like OMat24's, a periodic cell, energy/forces/stress from a SinglePointCalculator, ``data`` per row
    from ``data(i)`` (default: an OMat24-style ``sid`` shared by pairs of rows)."""
    import ase.db
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    data = data or (lambda i: {"sid": f"mp-{i // 2}", "calc_id": i})
    with ase.db.connect(str(path), type="aselmdb") as db:
        for i in range(n):
            symbols = ["Cu", "Cu", "O", "H", "Pt"][: 2 + i % 4]
            atoms = Atoms(symbols, positions=rng.random((len(symbols), 3)) * 3, cell=np.eye(3) * (4 + i % 3), pbc=True)
            atoms.calc = SinglePointCalculator(atoms, energy=-1.5 * i, forces=rng.normal(size=(len(symbols), 3)),
                                               stress=np.arange(6.0) + i)
            db.write(atoms, key_value_pairs=key_value_pairs(i) if key_value_pairs else {}, data=data(i))
    for lock in path.parent.glob(path.name + "-lock"):
        lock.unlink()
    return path
