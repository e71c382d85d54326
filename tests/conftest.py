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


@pytest.fixture
def one_torch_thread():
    """Tiny models: thread hand-offs cost more than they save, badly so on a shared 2-core machine
    (test folders of tiny-model runs use it for every test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


GPU_TESTS = os.environ.get("FASTCSI_TEST_GPU") == "1"


def _use_triton_interpreter():
    # The suite runs Triton kernels on CPU tensors, which only the interpreter can do, on any machine
    # (a CUDA machine too). FASTCSI_TEST_GPU=1 (with -m gpu) runs the GPU-marked tests on the device
    # instead. Triton reads TRITON_INTERPRET when a kernel is decorated, so this must run before any
    # fastcsi kernel module is imported: conftest is imported first by pytest.
    if not GPU_TESTS:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_use_triton_interpreter()


def pytest_collection_modifyitems(config, items):
    if GPU_TESTS:
        import torch

        reason = None if torch.cuda.is_available() else "FASTCSI_TEST_GPU=1 but no CUDA device"
    else:
        reason = "GPU test: run FASTCSI_TEST_GPU=1 python -m pytest -m gpu on a CUDA machine"
    if reason:
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
