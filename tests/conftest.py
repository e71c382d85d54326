import os
from pathlib import Path

import pytest

# ../shared beside the repository root; FASTCSI_SHARED names another place (or a missing one, to try
# the suite as a clone without it sees it).
SHARED = Path(os.environ.get("FASTCSI_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
SHARED_DATA = SHARED / "data"
# CI sets this: a missing ../shared/data must fail the run, not skip the tests on the real samples.
REQUIRE_SHARED = os.environ.get("FASTCSI_REQUIRE_SHARED") == "1"


def pytest_sessionstart(session):
    if REQUIRE_SHARED and not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"FASTCSI_REQUIRE_SHARED=1 but {SHARED_DATA} is not present: the tests on the "
                                "real data samples would be skipped")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples (read-only). Every test that reads them takes this fixture, so that a clone
    without ../shared skips them (one reason line) and FASTCSI_REQUIRE_SHARED=1 fails instead."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_SKIP_REASON)
    return SHARED_DATA


SHARED_SKIP_REASON = f"{SHARED_DATA} is not present: tests on the real data samples skipped"


@pytest.fixture(autouse=True, scope="session")
def _dataset_index_cache(tmp_path_factory):
    """The persistent dataset index (fastcsi.data.index) of the runs under test goes to a session folder,
    never the user's ~/.cache (tests that count index builds point FASTCSI_CACHE_DIR at their own)."""
    before = os.environ.get("FASTCSI_CACHE_DIR")
    os.environ["FASTCSI_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastcsi-cache"))
    yield
    if before is None:
        os.environ.pop("FASTCSI_CACHE_DIR", None)
    else:
        os.environ["FASTCSI_CACHE_DIR"] = before


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # pytest files a skip under each test's own line; these all have one cause, so they are filed under
    # the fixture, which folds them into one line of the -ra summary
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(SHARED_SKIP_REASON):
        report.longrepr = (__file__, None, report.longrepr[2])
    return report


@pytest.fixture
def one_torch_thread():
    """Tiny models: thread hand-offs cost more than they save, badly so on a shared 2-core machine
    (test folders of tiny-model runs use it for every test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Tests that do not name a backbone run the tiny random GemNet-OC (seconds), not the pretrained
# default (sevennet-0, far slower on CPU); the tests of the default itself unset this.
os.environ.setdefault("FASTCSI_BACKBONE", "gemnet-oc-random")

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
