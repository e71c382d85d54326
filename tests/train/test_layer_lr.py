"""Layer-wise learning-rate scales (JMP's fine-tuning LLRD): group membership, the resampled
profile, per-group schedules that end at the unscaled run's learning rate, and user errors."""
import math

import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.model import build_model
from fastcsi.train import layer_lr
from fastcsi.train.config import TrainConfig
from fastcsi.train.loop import Trainer
from fastcsi.train.normalization import NormalizedModel, Normalizer

from train_toy import lj_structures


def test_jmp_profile_is_jmp_l_table_at_six_blocks_and_resampled_otherwise():
    six = layer_lr.jmp_scales(6)
    assert six == {"embedding": 0.3, "blocks_0": 0.55, "blocks_1": 0.40, "blocks_2": 0.30,
                   "blocks_3": 0.40, "blocks_4": 0.55, "blocks_5": 0.625}
    four = layer_lr.jmp_scales(4)
    assert set(four) == {"embedding", "blocks_0", "blocks_1", "blocks_2", "blocks_3"}
    assert four["blocks_0"] == pytest.approx(0.55) and four["blocks_3"] == pytest.approx(0.625)
    # depth 1/3 lies between JMP's blocks 1 and 2 (depth 0.2 and 0.4): 0.40 + (1/3 - 0.2)/0.2 * (0.30 - 0.40)
    assert four["blocks_1"] == pytest.approx(0.40 - (1 / 3 - 0.2) / 0.2 * 0.10)
    assert layer_lr.jmp_scales(1) == {"embedding": 0.3, "blocks_0": 0.55}


def test_parameters_are_assigned_to_jmp_groups():
    torch.manual_seed(0)
    gemnet = build_model("gemnet-oc-tiny", regress_forces=True, direct_forces=True)
    nb = gemnet.hparams["num_blocks"]
    spec = layer_lr.parse_spec("jmp", nb)
    scales = layer_lr.parameter_scales(gemnet, spec, prefix="backbone.")
    expected_block = layer_lr.jmp_scales(nb)
    seen = set()
    for name, scale in scales.items():
        local = name[len("backbone."):]
        if local.startswith("embedding."):
            want = 0.3
        elif local.startswith("backbone.int_blocks."):
            want = expected_block[f"blocks_{int(local.split('.')[2])}"]
        elif local.startswith("backbone.out_blocks."):
            i = int(local.split(".")[2])
            want = expected_block[f"blocks_{max(i - 1, 0)}"]
        else:  # bases, heads: the base rate
            want = 1.0
        assert scale == pytest.approx(want), name
        seen.add(want)
    assert 1.0 in seen and 0.3 in seen and len(seen) >= 3
    assert set(scales) == {"backbone." + n for n, _ in gemnet.named_parameters()}


@pytest.mark.parametrize("spec, message", [
    ("blocks_9=0.5", "does not exist"),
    ("embedding=-1", "must be > 0"),
    ("embedding", "expected jmp, none"),
    ("embedding=abc", "expected jmp, none"),
])
def test_bad_specs_are_user_errors(spec, message):
    with pytest.raises(FastCSIError, match=message):
        layer_lr.parse_spec(spec, 2)


def test_trainer_schedules_each_group_and_all_end_at_the_base_floor(tmp_path):
    structures = lj_structures(12, seed=3)
    torch.manual_seed(0)
    gemnet = build_model("gemnet-oc-tiny", regress_forces=True, direct_forces=True)
    model = NormalizedModel(gemnet, Normalizer.fit(structures[:8]))
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-3, ema_decay=0.0, layer_lr="embedding=0.3,blocks_1=0.5",
                         warmup_fraction=0.25, min_lr_factor=0.1)
    trainer = Trainer(model, config, structures[:8], structures[8:], ("energy", "forces"), tmp_path,
                      progress=False, log=lambda *a: None)
    groups = trainer.optimizer.param_groups
    assert sorted({g["lr_scale"] for g in groups}) == [0.3, 0.5, 1.0]
    assert groups[0]["lr_scale"] == 1.0  # metrics log groups[0]: the base rate
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert all(scale_of[id(p)] == 0.3 for n, p in named.items() if n.startswith("backbone.embedding."))
    assert all(scale_of[id(p)] == 0.5 for n, p in named.items() if n.startswith("backbone.backbone.int_blocks.1."))
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    steps = trainer.total_steps
    for step in range(steps):
        trainer.train_step(list(range(step % 2 * 4, step % 2 * 4 + 4)))
        for g in groups:
            floor = layer_lr.floor_factor(0.1, g["lr_scale"])
            progress = 0 if step < trainer.warmup_steps else (step - trainer.warmup_steps) / (steps - trainer.warmup_steps)
            factor = (0.2 + 0.8 * step / trainer.warmup_steps if step < trainer.warmup_steps
                      else floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
            assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"] * factor)
    ends = {round(1e-3 * g["lr_scale"] * layer_lr.floor_factor(0.1, g["lr_scale"]), 12) for g in groups}
    assert ends == {1e-4}
