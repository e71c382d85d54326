"""The bundled demo datasets (the seeded script that makes them is ``tools/make_demo_data.py``).

``fastcsi demo`` and ``fastcsi select`` with no arguments run the whole CSI pipeline on these files:
four small "upstream" domains that mirror the paper's upstream datasets and two downstream sets.

==========================  =======================  =========================================
file                        mirrors                  what it holds (class = ``config_type``)
==========================  =======================  =========================================
upstream_organic.extxyz     ANI-1x                   rattled conformers of 30 C/H/N/O molecules
                                                     (3-14 atoms); class = molecule formula/name
upstream_reactions.extxyz   Transition-1x            NEB-like linear interpolations (3 bowed
                                                     paths each) of 9 small reactions: H
                                                     transfers, homolyses, H2 elimination;
                                                     class = reaction. Labels use 1000 K
                                                     Fermi smearing (stretched bonds)
upstream_slabs.extxyz       OC20 (S2EF)              EMT relaxation frames of fcc(111)/(100)
                                                     Cu/Pt/Ag/Au/Ni/Pd slabs with H/C/N/O
                                                     adsorbates; tags 0/1/2; class = system id
upstream_bulk.extxyz        OC22 / MatBench bulk     rattled, strained fcc/bcc/hcp metals and
                                                     random alloys; class = composition_lattice.
                                                     The bulk domain is metallic only: oxides
                                                     have no cheap, trustworthy label here.
downstream_md.extxyz        rMD17                    500 K Langevin MD of ethanol and
                                                     malonaldehyde; class = molecule
downstream_catalysis.extxyz OC20-style downstream    EMT relaxation frames of other slab +
                                                     adsorbate systems (held-out combinations)
==========================  =======================  =========================================

Labels are real (cheap) physics: GFN2-xTB from ``tblite`` for molecules, ASE's EMT for metals and
adsorbates; energies in eV, forces in eV/Å, stored by ase as ``energy`` / ``forces``.
``manifest.json`` beside the files records per file the counts, elements, classes, label method,
seed, generator version and sha256.

Regenerate with ``python tools/make_demo_data.py --out DIR [--seed 0] [--quick]`` (needs the
``demo`` extra, ``tblite``); that script documents the reproducibility of each file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fastcsi.errors import FastCSIError

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"

UPSTREAM_NAMES = ("upstream_organic", "upstream_reactions", "upstream_slabs", "upstream_bulk")
DOWNSTREAM_NAMES = ("downstream_md", "downstream_catalysis")
FILE_NAMES = UPSTREAM_NAMES + DOWNSTREAM_NAMES


def demo_paths(directory: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{name: path}`` of the demo files (the installed ``demo_data`` unless ``directory``)."""
    root = Path(directory) if directory is not None else DEMO_DIR
    return {name: root / f"{name}.extxyz" for name in FILE_NAMES}


def demo_upstreams(directory: str | os.PathLike | None = None) -> list[Path]:
    """The candidate upstream datasets, in a fixed order."""
    paths = demo_paths(directory)
    return [paths[name] for name in UPSTREAM_NAMES]


def demo_downstream(name: str = "downstream_md", directory: str | os.PathLike | None = None) -> Path:
    """The default downstream dataset (rMD17-like MD); ``name="downstream_catalysis"`` for the slab one."""
    if name not in DOWNSTREAM_NAMES:
        raise FastCSIError(f"unknown demo downstream {name!r}; choose one of {', '.join(DOWNSTREAM_NAMES)}")
    return demo_paths(directory)[name]


def load_manifest(directory: str | os.PathLike | None = None) -> dict:
    path = (Path(directory) if directory is not None else DEMO_DIR) / "manifest.json"
    if not path.is_file():
        raise FastCSIError(f"{path}: demo manifest not found; regenerate with python tools/make_demo_data.py --out DIR")
    return json.loads(path.read_text())
