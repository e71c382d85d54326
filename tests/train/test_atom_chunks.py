"""pretrain --max-atoms-per-batch: a step's structures go through the model in chunks of at most N
atoms with their gradients summed, which is the same update as the whole step at once."""
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.data import atom_chunks
from fastcsi.data.structure import Structure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from format_writers import write_lmdb  # noqa: E402


def test_atom_chunks_keep_order_and_cap_atoms():
    structures = [Structure([1] * m, [[0, 0, float(k)]] * m) for k, m in enumerate([3, 3, 10, 2, 2, 2, 7])]
    chunks = atom_chunks(structures, 6)
    assert [[s.n_atoms for s in c] for c in chunks] == [[3, 3], [10], [2, 2, 2], [7]]
    assert [s for c in chunks for s in c] == structures
    assert atom_chunks(structures, None) == [structures] and atom_chunks([], 6) == []


@pytest.mark.slow
def test_pretrain_in_atom_chunks_makes_the_same_update(tmp_path, one_torch_thread, monkeypatch):
    import fastcsi.train.loop as loop

    data = write_lmdb(tmp_path / "data.lmdb", 10)  # 4 atoms per entry
    chunk_sizes = []

    def counted(structures, max_atoms):
        chunks = atom_chunks(structures, max_atoms)
        chunk_sizes.extend(len(c) for c in chunks)
        return chunks

    monkeypatch.setattr(loop, "atom_chunks", counted)
    runs = {}
    for name, extra in (("whole", []), ("chunks", ["--max-atoms-per-batch", "5"])):
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["pretrain", "--data", str(data), "--samples", "8", "--epochs", "1",
                                          "-o", str(out), "--model", "gemnet-oc-tiny", "--batch-size", "4",
                                          "--threads", "1", "--quiet", "--ema", "0", *extra])
        assert result.exit_code == 0, result.output
        runs[name] = torch.load(out / "last.pt", weights_only=False)["model"]
    assert chunk_sizes == [4, 4] + [1] * 8  # 2 steps of 4 whole, then of 4 chunks of one 4-atom structure
    assert runs["whole"].keys() == runs["chunks"].keys()
    moved = 0
    for key, value in runs["whole"].items():
        if value.is_floating_point():
            torch.testing.assert_close(runs["chunks"][key], value, rtol=1e-4, atol=1e-6, msg=key)
            moved += 1
    assert moved > 10
