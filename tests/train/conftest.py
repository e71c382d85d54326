import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the toy model and data helpers


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs tiny models on one torch thread (tests/conftest.py)."""
