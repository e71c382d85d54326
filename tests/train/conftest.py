import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the toy model and data helpers


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: thread hand-offs cost more than they save, badly so on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
