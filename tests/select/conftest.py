"""Small datasets written by the tests themselves (a few atoms per structure, so the tiny backbone
runs in well under a second per dataset) and one shared extractor."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import write


def _rattled(atoms, rng, n, scale=0.05, config_type=None):
    frames = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(scale=scale, size=a.positions.shape)
        a.info["config_type"] = config_type or a.get_chemical_formula()
        frames.append(a)
    return frames


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Paths of a downstream (water/ethanol-like MD), an organic upstream and a metal upstream."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("select_data")
    down = _rattled(molecule("H2O"), rng, 4) + _rattled(molecule("CH3OH"), rng, 4)
    organic = (
        _rattled(molecule("CH4"), rng, 3)
        + _rattled(molecule("NH3"), rng, 3)
        + _rattled(molecule("H2O"), rng, 3)
        + _rattled(molecule("HCOOH"), rng, 3)
    )
    cu = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.2, 0], [1.25, 0.7, 2.0]])
    pt = Atoms("Pt3", positions=[[0, 0, 0], [2.7, 0, 0], [1.35, 2.3, 0]])
    metal = _rattled(cu, rng, 5, 0.1) + _rattled(pt, rng, 5, 0.1)
    paths = {}
    for name, frames in (("down", down), ("organic", organic), ("metal", metal)):
        paths[name] = root / f"{name}.extxyz"
        write(paths[name], frames, format="extxyz")
    return paths


@pytest.fixture(scope="session")
def extractor():
    from fastcsi.pipeline.backbone import load_extractor

    return load_extractor("gemnet-oc-random", None, "final", "node", "cpu", "float64")
