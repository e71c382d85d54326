"""bench/extractors.py: every method is checked against the package's own path before it is timed."""
import pytest

from fastcsi._bench import extractors as bench
from fastcsi._bench.harness import run_case


def _quiet(*_args, **_kwargs):
    pass


@pytest.mark.parametrize("spec", ["gemnet-oc-random", "sevennet-0"])
def test_every_method_passes_its_check(spec):
    if spec == "sevennet-0":
        pytest.importorskip("sevenn")
    rows = []
    for case in bench.cases(quick=True, sizes=(4, 1), extractors=(spec,)):
        case.repeats, case.warmup = 1, 0  # the check is the point here, not the timing
        rows += run_case(case, log=_quiet)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}, rows
    assert all(row["items_unit"] == "atoms" and row["items"] > 0 and row["seconds"] > 0 for row in rows)


def test_a_wrong_batched_path_is_failed_not_timed(monkeypatch):
    import torch

    from fastcsi.extractors.gemnet_oc import GemNetOCExtractor

    real = GemNetOCExtractor.features
    # a batched path that drops the last atom's features must fail the check (never timed)
    monkeypatch.setattr(GemNetOCExtractor, "features", lambda self, batch, profiler=None:
                        torch.cat([real(self, batch)[:-1], torch.zeros(1, self.dim)]))
    case = next(iter(bench.cases(quick=True, sizes=(4, 1), extractors=("gemnet-oc-random",))))
    rows = {row["method"]: row for row in run_case(case, log=_quiet)}
    assert rows["batched (fastcsi)"]["status"] == "failed"
