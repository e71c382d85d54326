"""The shared loop on a toy model: it learns, resumes bit-for-bit, stops early, and data parallel
training over 2 gloo processes matches single-process training on the same global batches."""
import os

import numpy as np
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.train import checkpoint as ckpt
from fastcsi.train.config import TrainConfig
from fastcsi.train.loop import Trainer, epoch_order
from fastcsi.train.normalization import NormalizedModel, Normalizer

from train_toy import PairModel, lj_structures

STRUCTURES = lj_structures(30, seed=5)
TRAIN, VAL = STRUCTURES[:22], STRUCTURES[22:]


def make_trainer(rundir, gradient=False, ctx=None, **cfg):
    torch.manual_seed(0)
    norm = Normalizer.fit(TRAIN)
    model = NormalizedModel(PairModel(gradient_forces=gradient), norm, gradient_forces=gradient)
    config = TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 3e-3, **cfg})
    return Trainer(model, config, TRAIN, VAL, ("energy", "forces"), rundir, progress=False, log=lambda *a: None,
                   ctx=ctx)


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(10, 0, 0)
    assert sorted(a) == list(range(10))
    assert np.array_equal(a, epoch_order(10, 0, 0))
    assert not np.array_equal(a, epoch_order(10, 0, 1))


def test_training_reduces_validation_error_and_writes_metrics(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6, ema_decay=0.5)
    before = trainer.evaluate(VAL, use_ema=False)
    result = trainer.fit()
    after = trainer.evaluate(VAL)
    assert after["energy"] < before["energy"]
    assert result.steps == 6 * 6 and not result.interrupted
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 7 and "val_forces_mae" in lines[0]
    assert (tmp_path / ckpt.LAST).is_file() and (tmp_path / ckpt.BEST).is_file()


@pytest.mark.parametrize("gradient", [False, True])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, gradient):
    full = make_trainer(tmp_path / "full", gradient=gradient, checkpoint_every=5)
    full.fit()
    # interrupt mid-epoch (step 8 of 18; epoch 2 starts at step 6), then resume in a fresh trainer
    part = make_trainer(tmp_path / "part", gradient=gradient, checkpoint_every=5, stop_after_steps=8)
    result = part.fit()
    assert result.interrupted and result.steps == 8
    torch.manual_seed(123)  # a resumed process starts with a different RNG state: must not matter
    resumed = make_trainer(tmp_path / "part", gradient=gradient, checkpoint_every=5)
    resumed.fit(resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for name in full.ema.shadow:
        assert torch.equal(full.ema.shadow[name], resumed.ema.shadow[name]), name
    assert full.metrics.rows[-1]["train_loss"] == resumed.metrics.rows[-1]["train_loss"]
    assert len(resumed.metrics.rows) == 3


def test_resume_without_checkpoint_starts_from_scratch_and_other_settings_are_a_user_error(tmp_path):
    # interrupted before its first checkpoint: --resume says so and runs the same run from step 0
    messages = []
    early = make_trainer(tmp_path / "early", epochs=1)
    early.log = messages.append
    early.fit(resume=True)
    assert any("nothing to resume" in m and "starting from scratch" in m for m in messages)
    fresh = make_trainer(tmp_path / "fresh", epochs=1)
    fresh.fit()
    for (name, a), b in zip(fresh.model.state_dict().items(), early.model.state_dict().values()):
        assert torch.equal(a, b), name
    make_trainer(tmp_path, epochs=1).fit()
    with pytest.raises(FastCSIError, match="batch size"):
        make_trainer(tmp_path, batch_size=5).fit(resume=True)


def test_early_stopping_stops(tmp_path):
    # lr so small nothing improves beyond noise; patience 1 must end the run before 10 epochs
    trainer = make_trainer(tmp_path, epochs=10, lr=1e-12, early_stopping_patience=1, ema_decay=0.0)
    result = trainer.fit()
    assert result.stopped_early and result.epochs_done < 10


def _ddp_worker(rank, world, port, rundir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from fastcsi.train.distributed import init_distributed

    ctx = init_distributed("cpu")
    # the context goes in at construction: only rank 0 may own the metrics file and checkpoints
    trainer = make_trainer(rundir, epochs=2, batch_size=5, ctx=ctx)
    trainer.progress = False
    trainer.model.backbone.radial[2].p = 0.0  # dropout masks differ per rank by design
    trainer.fit()  # rank 0 writes last.pt and metrics.csv into rundir
    torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # no re-import: seconds, not tens of seconds
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(tmp_path / "ddp"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    state = ckpt.load(tmp_path / "ddp" / ckpt.LAST)
    weights, steps, val = state["model"], state["step"], state["metrics_rows"][-1]["val_forces_mae"]
    single = make_trainer(tmp_path / "single", epochs=2, batch_size=5)
    single.model.backbone.radial[2].p = 0.0
    single.fit()
    # 22 structures, batch 5: ceil(22/5) = 5 steps per epoch whatever the world size (no padding);
    # the last global batch has 2 structures, one per rank.
    assert steps == single.step == 10
    for name, value in single.model.state_dict().items():
        assert torch.allclose(value, weights[name], rtol=1e-4, atol=1e-6), name
    assert val == pytest.approx(single.metrics.rows[-1]["val_forces_mae"], rel=1e-4)
