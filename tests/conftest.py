import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def _use_triton_interpreter_without_gpu():
    # Triton reads TRITON_INTERPRET when a kernel is decorated, so this must run before any
    # fastcsi kernel module is imported: conftest is imported first by pytest.
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_use_triton_interpreter_without_gpu()
