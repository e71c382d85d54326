"""Fixtures of the model tests: a molecule, a slab with adsorbate and a bulk crystal, and float64
tiny GemNet-OC models (direct and gradient forces)."""
import pytest

from goc_helpers import make_model, sample_structures


@pytest.fixture(scope="session")
def structures():
    return sample_structures()


@pytest.fixture(scope="session")
def model_direct():
    return make_model(direct_forces=True)


@pytest.fixture(scope="session")
def model_grad():
    return make_model(direct_forces=False)


