"""Generate the bundled demo datasets (``fastcsi/data/demo_data``): seeded, with real cheap labels.

    python tools/make_demo_data.py --out DIR [--seed 0] [--quick] [--only NAME ...]

Needs the ``demo`` extra (``tblite``). What each file mirrors and holds is in
``fastcsi/data/demo.py``, which the package keeps (the files, their names and paths); this script
is the generator and is not part of the installed package.

The script runs with ``OMP_NUM_THREADS=1`` unless told otherwise: tblite's
OpenMP threads spin-wait and slow molecules this small down by up to ~100x on a busy CPU. Reproducibility: every structure of the organic, reaction and bulk files is a
pure function of numpy's seeded generator (bitwise reproducible); the slab files follow seeded
rattles through deterministic EMT + BFGS relaxations (bitwise on one platform). xTB energies and
forces are reproducible to ~1e-9 eV but are not promised bitwise across tblite builds or thread
counts, and the MD trajectory (chaotic) integrates those forces, so ``downstream_md`` positions
match to tight tolerance for the first frames of a run and may drift apart later on another build.
Every class draws from its own seed stream (seed, file, class), so ``quick=True`` (2 classes, 3
frames each) reproduces the first frames of each class of the full files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastcsi.data.demo import FILE_NAMES
from fastcsi.errors import FastCSIError
from fastcsi.utils import file_sha256

GENERATOR_VERSION = "1"
# a fixed number per file so each file's seed stream does not depend on which files are generated
_FILE_STREAM = {name: i for i, name in enumerate(FILE_NAMES)}
QUICK_CLASSES = 2
QUICK_FRAMES = 3


def _class_rng(seed: int, file_name: str, class_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _FILE_STREAM[file_name], class_index]))


def _labelled(atoms, calc, config_type: str):
    """A clean copy of ``atoms`` (no momenta, no constraints) with ``calc``'s energy and forces.

    Forces are the raw ones (``apply_constraint=False``): fixed slab atoms keep their true forces,
    as in OC20. ``calc`` may be a zero-argument factory (a fresh calculator per structure).
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    work = atoms.copy()
    work.calc = calc() if callable(calc) else calc
    energy = float(work.get_potential_energy())
    forces = np.array(work.get_forces(apply_constraint=False), dtype=np.float64)
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if "tags" in atoms.arrays:
        out.set_tags(atoms.get_tags())
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    out.info["config_type"] = config_type
    return out


def _xtb(**settings):
    """A fresh GFN2-xTB calculator. Single points each get their own: tblite's ASE calculator
    restarts the SCF from the previous result, which makes labels depend on the order of
    generation and can leave a stretched geometry unconverged."""
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # the demo extra is optional at runtime
        raise FastCSIError(
            "regenerating the demo data needs tblite (GFN2-xTB labels); install it with pip install 'fastcsi[demo]'"
        ) from exc
    return TBLite(method="GFN2-xTB", verbosity=0, **settings)


def _emt():
    from ase.calculators.emt import EMT

    return EMT()


def _mass_scaled_sigma(atoms, amplitude: float) -> np.ndarray:
    # light atoms move more, roughly as in normal-mode sampling (amplitude ~ m^-1/4 at fixed energy)
    masses = atoms.get_masses()
    return amplitude * (12.0 / masses) ** 0.25


# ----------------------------------------------------------------------------------------------
# upstream_organic: ANI-1x-like conformers
# ----------------------------------------------------------------------------------------------
# closed-shell C/H/N/O molecules of ase's g2 set; ethanol is left out on purpose (it is downstream)
ORGANIC_MOLECULES = (
    "CH4", "H2O", "NH3", "CH3OH", "H2CO", "HCOOH", "HCN", "CO2", "C2H2", "C2H4", "C2H6", "CH3CHO",
    "CH3CN", "H3CNH2", "CH2OCH2", "CH3OCH3", "CH3COOH", "HCOOCH3", "CH3CONH2", "CH3NO2", "N2H4",
    "H2O2", "C3H8", "CH3COCH3", "C4H4O", "C4H4NH", "C5H5N", "C6H6", "butadiene", "trans-butane",
)
ORGANIC_CONFORMERS = 8
ORGANIC_MAX_BOND_STRAIN = 0.10


def _bond_pairs(atoms, cutoff: float = 1.6):
    d = atoms.get_all_distances()
    i, j = np.triu_indices(len(atoms), 1)
    keep = d[i, j] < cutoff
    return i[keep], j[keep], d[i, j][keep]


def _max_bond_strain(atoms, bonded) -> float:
    i, j, d0 = bonded
    if len(d0) == 0:
        return 0.0
    d = np.linalg.norm(atoms.positions[i] - atoms.positions[j], axis=1)
    return float(np.abs(d / d0 - 1.0).max())


def _gen_organic(seed: int, quick: bool, progress) -> list:
    from ase.build import molecule

    names = ORGANIC_MOLECULES[:QUICK_CLASSES] if quick else ORGANIC_MOLECULES
    n_conf = QUICK_FRAMES if quick else ORGANIC_CONFORMERS
    frames = []
    for class_index, name in enumerate(names):
        rng = _class_rng(seed, "upstream_organic", class_index)
        base = molecule(name)
        label = name
        bonded = _bond_pairs(base)
        for _ in range(n_conf):
            amplitude = rng.uniform(0.01, 0.05)
            sigma = _mass_scaled_sigma(base, amplitude)
            conf = base.copy()
            while True:  # thermal-like conformers: no bond stretched or squeezed by more than 10 %
                conf.positions = base.positions + rng.normal(size=base.positions.shape) * sigma[:, None]
                if _max_bond_strain(conf, bonded) < ORGANIC_MAX_BOND_STRAIN:
                    break
            frames.append(_labelled(conf, _xtb, label))
            progress.update(1)
    return frames


# ----------------------------------------------------------------------------------------------
# upstream_reactions: Transition-1x-like interpolated paths
# ----------------------------------------------------------------------------------------------
# (name, g2 molecule, kind, i, j): "htransfer" moves the H bonded to atom i towards atom j;
# "homolysis" pulls the fragment of atom j (j and its hydrogens) away from atom i;
# "h2_elimination" lets the two H of atom i leave together as H2.
REACTIONS = (
    ("formic_acid_1,3-H_shift", "HCOOH", "htransfer", 0, 2),
    ("acetaldehyde_to_vinyl_alcohol", "CH3CHO", "htransfer", 3, 0),
    ("acetamide_to_imidic_acid", "CH3CONH2", "htransfer", 2, 0),
    ("nitromethane_to_aci-nitro", "CH3NO2", "htransfer", 0, 5),
    ("ethane_C-C_homolysis", "C2H6", "homolysis", 0, 1),
    ("hydrogen_peroxide_O-O_homolysis", "H2O2", "homolysis", 0, 1),
    ("hydrazine_N-N_homolysis", "N2H4", "homolysis", 0, 1),
    ("methanol_C-O_homolysis", "CH3OH", "homolysis", 0, 1),
    ("formaldehyde_H2_elimination", "H2CO", "h2_elimination", 1, 0),
)
REACTION_PATHS = 3
REACTION_IMAGES = 11
REACTION_ELECTRONIC_TEMPERATURE_K = 1000.0


def _hydrogens_of(atoms, index: int, cutoff: float = 1.25) -> list[int]:
    d = np.linalg.norm(atoms.positions - atoms.positions[index], axis=1)
    return [k for k in range(len(atoms)) if atoms.numbers[k] == 1 and k != index and d[k] < cutoff]


def _reaction_endpoints(atoms, kind: str, i: int, j: int):
    """Product geometry and the indices of the atoms that move (reactant = ``atoms``)."""
    pos = atoms.positions.copy()
    if kind == "htransfer":
        hs = _hydrogens_of(atoms, i)
        h = min(hs, key=lambda k: np.linalg.norm(pos[k] - pos[j]))
        towards = pos[h] - pos[j]
        pos[h] = pos[j] + towards / np.linalg.norm(towards) * (1.09 if atoms.numbers[j] == 6 else 1.0)
        moving = [h]
    elif kind == "homolysis":
        moving = [j] + [k for k in _hydrogens_of(atoms, j) if k != i]
        axis = pos[j] - pos[i]
        pos[moving] += axis / np.linalg.norm(axis) * 2.0
    elif kind == "h2_elimination":
        moving = _hydrogens_of(atoms, i)[:2]
        away = pos[i] - pos[j]
        away /= np.linalg.norm(away)
        mid = pos[moving].mean(axis=0) + away * 1.4
        half = pos[moving[0]] - pos[moving[1]]
        half *= 0.37 / np.linalg.norm(half)
        pos[moving[0]], pos[moving[1]] = mid + half, mid - half
    else:  # pragma: no cover - table above is fixed
        raise ValueError(kind)
    return pos, moving


def _gen_reactions(seed: int, quick: bool, progress) -> list:
    from ase.build import molecule

    reactions = REACTIONS[:QUICK_CLASSES] if quick else REACTIONS

    def reaction_xtb():
        # stretched bonds (radical pairs) leave the SCF oscillating at the default 300 K; the
        # whole file uses one Fermi smearing so its labels stay one consistent method
        return _xtb(electronic_temperature=REACTION_ELECTRONIC_TEMPERATURE_K)

    frames = []
    for class_index, (name, mol, kind, i, j) in enumerate(reactions):
        rng = _class_rng(seed, "upstream_reactions", class_index)
        reactant = molecule(mol)
        product, moving = _reaction_endpoints(reactant, kind, i, j)
        t_values = np.linspace(0.0, 1.0, REACTION_IMAGES)
        budget = QUICK_FRAMES if quick else REACTION_PATHS * REACTION_IMAGES
        produced = 0
        for _ in range(REACTION_PATHS):
            # each path bows the moving atoms sideways by a random amount, like successive NEB bands
            bow_dir = rng.normal(size=3)
            bow = rng.uniform(0.0, 0.3) * bow_dir / np.linalg.norm(bow_dir)
            for t in t_values:
                if produced == budget:
                    break
                pos = (1.0 - t) * reactant.positions + t * product
                pos[moving] += np.sin(np.pi * t) * bow
                pos += rng.normal(scale=0.01, size=pos.shape)
                image = reactant.copy()
                image.positions = pos
                frames.append(_labelled(image, reaction_xtb, name))
                produced += 1
                progress.update(1)
    return frames


# ----------------------------------------------------------------------------------------------
# upstream_slabs / downstream_catalysis: OC20-like adsorbate + slab relaxation frames
# ----------------------------------------------------------------------------------------------
SLAB_METALS = ("Cu", "Pt", "Ag", "Au", "Ni", "Pd")
# adsorbate: (symbols, positions relative to the binding atom at the origin, Å)
ADSORBATES = {
    "H": (["H"], [[0, 0, 0]]),
    "O": (["O"], [[0, 0, 0]]),
    "N": (["N"], [[0, 0, 0]]),
    "C": (["C"], [[0, 0, 0]]),
    "OH": (["O", "H"], [[0, 0, 0], [0, 0, 0.97]]),
    "CO": (["C", "O"], [[0, 0, 0], [0, 0, 1.15]]),
    "CH": (["C", "H"], [[0, 0, 0], [0, 0, 1.09]]),
    "NH": (["N", "H"], [[0, 0, 0], [0, 0, 1.02]]),
    "CH2": (["C", "H", "H"], [[0, 0, 0], [0.89, 0, 0.63], [-0.89, 0, 0.63]]),
    "NH2": (["N", "H", "H"], [[0, 0, 0], [0.83, 0, 0.58], [-0.83, 0, 0.58]]),
    "CH3": (["C", "H", "H", "H"], [[0, 0, 0], [1.03, 0, 0.36], [-0.51, 0.89, 0.36], [-0.51, -0.89, 0.36]]),
    "OCH3": (["O", "C", "H", "H", "H"],
             [[0, 0, 0], [0, 0, 1.42], [1.03, 0, 1.78], [-0.51, 0.89, 1.78], [-0.51, -0.89, 1.78]]),
}
SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
SLAB_SYSTEMS = 24
SLAB_FRAMES = 12
CATALYSIS_SYSTEMS = 10
CATALYSIS_FRAMES = 12


def _slab_system_table(seed: int, file_name: str, n_systems: int, exclude=()) -> list[tuple]:
    """Distinct (metal, facet, adsorbate, site) systems drawn from the file's own seed stream."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _FILE_STREAM[file_name]]))
    chosen, seen = [], set(exclude)
    while len(chosen) < n_systems:
        facet = ("111", "100")[rng.integers(2)]
        system = (
            SLAB_METALS[rng.integers(len(SLAB_METALS))],
            facet,
            sorted(ADSORBATES)[rng.integers(len(ADSORBATES))],
            SITES[facet][rng.integers(len(SITES[facet]))],
        )
        if system not in seen:
            seen.add(system)
            chosen.append(system)
    return chosen


def _build_adslab(metal: str, facet: str, adsorbate: str, site: str):
    from ase import Atoms
    from ase.build import add_adsorbate, fcc100, fcc111
    from ase.constraints import FixAtoms

    build = fcc111 if facet == "111" else fcc100
    slab = build(metal, size=(2, 2, 3), vacuum=7.0)
    # ase tags layers 1 (top) .. 3 (bottom); OC20 uses 1 = surface, 0 = subsurface, 2 = adsorbate
    layer = slab.get_tags()
    oc20_tags = np.where(layer == 1, 1, 0)
    symbols, rel = ADSORBATES[adsorbate]
    ads = Atoms(symbols, positions=rel)
    height = 2.0 if site == "ontop" else 1.5 if site == "bridge" else 1.2
    if symbols[0] == "H":
        height -= 0.4
    add_adsorbate(slab, ads, height, position=site)
    tags = np.concatenate([oc20_tags, np.full(len(ads), 2)])
    slab.set_tags(tags)
    slab.pbc = True  # OC20 convention: periodic in z too, with vacuum
    slab.set_constraint(FixAtoms(mask=tags == 0))
    return slab


def _relaxation_frames(start, rng, n_frames: int, label: str, calc, progress) -> list:
    """Frames along BFGS relaxations from rattled starts, restarting when one converges (S2EF-like)."""
    from ase.optimize import BFGS

    frames = []
    while len(frames) < n_frames:
        atoms = start.copy()
        free = atoms.get_tags() > 0
        atoms.positions[free] += rng.normal(scale=0.08, size=(int(free.sum()), 3))
        atoms.calc = calc
        opt = BFGS(atoms, maxstep=0.1, logfile=None)
        for _ in opt.irun(fmax=0.05, steps=4 * n_frames):
            frames.append(_labelled(atoms, calc, label))
            progress.update(1)
            if len(frames) == n_frames:
                break
    return frames


def _gen_adslabs(seed: int, quick: bool, progress, file_name: str, n_systems: int, n_frames: int,
                 exclude=()) -> list:
    calc = _emt()
    systems = _slab_system_table(seed, file_name, n_systems, exclude)
    if quick:
        systems, n_frames = systems[:QUICK_CLASSES], QUICK_FRAMES
    frames = []
    for class_index, (metal, facet, adsorbate, site) in enumerate(systems):
        rng = _class_rng(seed, file_name, class_index)
        label = f"{metal}{facet}+{adsorbate}@{site}"
        start = _build_adslab(metal, facet, adsorbate, site)
        frames += _relaxation_frames(start, rng, n_frames, label, calc, progress)
    return frames


def _gen_slabs(seed, quick, progress):
    return _gen_adslabs(seed, quick, progress, "upstream_slabs", SLAB_SYSTEMS, SLAB_FRAMES)


def _gen_catalysis(seed, quick, progress):
    upstream = _slab_system_table(seed, "upstream_slabs", SLAB_SYSTEMS)
    return _gen_adslabs(seed, quick, progress, "downstream_catalysis", CATALYSIS_SYSTEMS, CATALYSIS_FRAMES,
                        exclude=upstream)


# ----------------------------------------------------------------------------------------------
# upstream_bulk: rattled metals and alloys
# ----------------------------------------------------------------------------------------------
BULK_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
# (label, element -> count in an 8-atom cell, lattice); the decoration is random per frame
BULK_ALLOYS = (
    ("CuAu", {"Cu": 4, "Au": 4}, "fcc"),
    ("Cu3Au", {"Cu": 6, "Au": 2}, "fcc"),
    ("Cu3Pt", {"Cu": 6, "Pt": 2}, "fcc"),
    ("NiPt", {"Ni": 4, "Pt": 4}, "fcc"),
    ("Ni3Al", {"Ni": 6, "Al": 2}, "fcc"),
    ("PdAg", {"Pd": 4, "Ag": 4}, "fcc"),
    ("AuAg3", {"Au": 2, "Ag": 6}, "fcc"),
    ("NiAl", {"Ni": 4, "Al": 4}, "bcc"),
)
BULK_FRAMES = 10


def _bulk_cell(element_a: str, lattice: str, a_fcc: float):
    from ase.build import bulk

    if lattice == "fcc":
        return bulk(element_a, "fcc", a=a_fcc).repeat((2, 2, 2))
    if lattice == "bcc":  # same volume per atom as the fcc reference
        return bulk(element_a, "bcc", a=a_fcc / 2 ** (1 / 3)).repeat((2, 2, 2))
    a_hcp = a_fcc / np.sqrt(2)
    return bulk(element_a, "hcp", a=a_hcp, c=a_hcp * np.sqrt(8 / 3)).repeat((2, 2, 1))


def _gen_bulk(seed: int, quick: bool, progress) -> list:
    from ase.data import atomic_numbers, reference_states

    def a_ref(el):
        return reference_states[atomic_numbers[el]]["a"]

    classes = [(f"{m}_{lat}", {m: 8}, lat) for m in BULK_METALS for lat in ("fcc", "bcc", "hcp")]
    classes += [(f"{name}_{lat}", comp, lat) for name, comp, lat in BULK_ALLOYS]
    n_frames = BULK_FRAMES
    if quick:
        classes, n_frames = classes[:QUICK_CLASSES], QUICK_FRAMES
    calc = _emt()
    frames = []
    for class_index, (label, composition, lattice) in enumerate(classes):
        rng = _class_rng(seed, "upstream_bulk", class_index)
        total = sum(composition.values())
        a_mix = sum(a_ref(el) * n for el, n in composition.items()) / total  # Vegard's law
        template = _bulk_cell(next(iter(composition)), lattice, a_mix)
        symbols = [el for el, n in composition.items() for _ in range(n)]
        for _ in range(n_frames):
            atoms = template.copy()
            atoms.set_chemical_symbols(list(rng.permutation(symbols)))
            strain = np.eye(3) + rng.uniform(-0.02, 0.02, size=(3, 3))
            strain = 0.5 * (strain + strain.T)
            atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
            atoms.positions += rng.normal(scale=rng.uniform(0.03, 0.1), size=atoms.positions.shape)
            frames.append(_labelled(atoms, calc, label))
            progress.update(1)
    return frames


# ----------------------------------------------------------------------------------------------
# downstream_md: rMD17-like Langevin MD
# ----------------------------------------------------------------------------------------------
# malonaldehyde is not in ase's g2 set: a planar enol start (relaxed with xTB before the MD)
_MALONALDEHYDE = (
    ["C", "O", "C", "C", "O", "H", "H", "H", "H"],
    [[-1.227, 0.590, 0.0], [-1.251, 1.823, 0.0], [0.000, -0.133, 0.0], [1.193, 0.546, 0.0],
     [1.297, 1.863, 0.0], [0.330, 1.950, 0.0], [-2.170, 0.010, 0.0], [0.000, -1.220, 0.0],
     [2.130, -0.010, 0.0]],
)
MD_MOLECULES = (("ethanol", 150), ("malonaldehyde", 100))
MD_TEMPERATURE_K = 500.0
MD_TIMESTEP_FS = 0.5
MD_FRICTION_PER_FS = 0.02
MD_EQUILIBRATION_STEPS = 100
MD_STRIDE = 10


def _md_start(name: str):
    from ase import Atoms
    from ase.build import molecule

    if name == "ethanol":
        return molecule("CH3CH2OH")
    symbols, positions = _MALONALDEHYDE
    return Atoms(symbols, positions=positions)


def _gen_md(seed: int, quick: bool, progress) -> list:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.constraints import FixCom
    from ase.md.velocitydistribution import Stationary
    from ase.optimize import BFGS

    try:  # ase >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # older ase: same draw under its former name
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        def thermalize_momenta(atoms, temperature_K, rng=None):
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

    calc = _xtb()
    plan = [(name, QUICK_FRAMES) for name, _ in MD_MOLECULES[:QUICK_CLASSES]] if quick else MD_MOLECULES
    frames = []
    for class_index, (name, n_frames) in enumerate(plan):
        rng = _class_rng(seed, "downstream_md", class_index)
        atoms = _md_start(name)
        atoms.calc = calc
        BFGS(atoms, logfile=None).run(fmax=0.02, steps=200)
        thermalize_momenta(atoms, MD_TEMPERATURE_K, rng=rng)
        Stationary(atoms)
        atoms.set_constraint(FixCom())  # no centre-of-mass drift, as in MD17-style trajectories
        dyn = Langevin(atoms, timestep=MD_TIMESTEP_FS * units.fs, temperature_K=MD_TEMPERATURE_K,
                       friction=MD_FRICTION_PER_FS / units.fs, fixcm=False, rng=rng)
        dyn.run(MD_EQUILIBRATION_STEPS)
        for _ in range(n_frames):
            dyn.run(MD_STRIDE)
            frames.append(_labelled(atoms, calc, name))
            progress.update(1)
    return frames


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
_GENERATORS = {
    "upstream_organic": (_gen_organic, "GFN2-xTB (tblite), electronic temperature 300 K", len(ORGANIC_MOLECULES) * ORGANIC_CONFORMERS),
    "upstream_reactions": (_gen_reactions, "GFN2-xTB (tblite), electronic temperature 1000 K", len(REACTIONS) * REACTION_PATHS * REACTION_IMAGES),
    "upstream_slabs": (_gen_slabs, "EMT (ase)", SLAB_SYSTEMS * SLAB_FRAMES),
    "upstream_bulk": (_gen_bulk, "EMT (ase)", (3 * len(BULK_METALS) + len(BULK_ALLOYS)) * BULK_FRAMES),
    "downstream_md": (_gen_md, "GFN2-xTB (tblite), electronic temperature 300 K", sum(n for _, n in MD_MOLECULES)),
    "downstream_catalysis": (_gen_catalysis, "EMT (ase)", CATALYSIS_SYSTEMS * CATALYSIS_FRAMES),
}


def _label_versions() -> dict:
    import ase

    out = {"ase": ase.__version__}
    try:
        from importlib.metadata import version

        out["tblite"] = version("tblite")
    except Exception:  # tblite absent or installed without metadata
        out["tblite"] = None
    return out


def summarize(frames) -> dict:
    """Counts a reader should reproduce: structures, atoms, elements, per-class structure counts."""
    classes: dict[str, int] = {}
    for atoms in frames:
        key = atoms.info["config_type"]
        classes[key] = classes.get(key, 0) + 1
    elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    return {
        "n_structures": len(frames),
        "n_atoms_total": int(sum(len(a) for a in frames)),
        "elements": elements,
        "classes": classes,
    }


def generate(out_dir, seed: int = 0, quick: bool = False, only=None, progress: bool = True) -> dict:
    """Write the demo files and ``manifest.json`` into ``out_dir``; return the manifest.

    ``quick`` writes 2 classes x 3 frames per file (seconds; used by the tests). ``only`` limits
    generation to some file names (the manifest then lists just those).
    """
    import ase.io
    from tqdm import tqdm

    from fastcsi.utils import atomic_path, atomic_write, versions

    names = list(FILE_NAMES if only is None else only)
    unknown = [n for n in names if n not in _GENERATORS]
    if unknown:
        raise FastCSIError(f"unknown demo file name(s) {unknown}; choose from {', '.join(FILE_NAMES)}")
    if any("xTB" in _GENERATORS[n][1] for n in names):
        _xtb()  # fail early, before any file is written, when tblite is missing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "tools/make_demo_data.py",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "quick": quick,
        "versions": {**versions(), **_label_versions()},
        "files": {},
    }
    for name in names:
        func, method, expected = _GENERATORS[name]
        total = QUICK_CLASSES * QUICK_FRAMES if quick else expected
        start = time.perf_counter()
        with tqdm(total=total, desc=name, disable=not progress, leave=False) as bar:
            frames = func(seed, quick, bar)
        path = out_dir / f"{name}.extxyz"
        with atomic_path(path) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the files are shipped data
        manifest["files"][path.name] = {
            **summarize(frames),
            "labels": method,
            "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
            "periodic": bool(frames[0].pbc.any()),
            "has_tags": "tags" in frames[0].arrays,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
            "sha256": file_sha256(path),
            "size_bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - start, 2),
        }
    with atomic_write(out_dir / "manifest.json") as handle:
        os.chmod(handle.name, 0o644)
        json.dump(manifest, handle, indent=1, sort_keys=False)
        handle.write("\n")
    return manifest


def main(argv=None) -> int:
    if argv is None and "OMP_NUM_THREADS" not in os.environ:
        # the OpenMP runtime was already started by torch's import: restart with one thread
        os.environ["OMP_NUM_THREADS"] = "1"
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]])
    parser = argparse.ArgumentParser(description="Generate the fastcsi demo datasets (needs tblite).")
    parser.add_argument("--out", required=True, help="output folder (the shipped one: fastcsi/data/demo_data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 classes x 3 frames per file")
    parser.add_argument("--only", nargs="*", choices=FILE_NAMES, help="generate only these files")
    args = parser.parse_args(argv)
    try:
        manifest = generate(args.out, seed=args.seed, quick=args.quick, only=args.only)
    except FastCSIError as exc:
        parser.exit(2, f"error: {exc}\n")
    for fname, info in manifest["files"].items():
        print(f"{fname:28s} {info['n_structures']:5d} structures {info['n_atoms_total']:7d} atoms "
              f"{len(info['classes']):3d} classes {info['size_bytes'] / 1e6:6.2f} MB {info['seconds']:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
