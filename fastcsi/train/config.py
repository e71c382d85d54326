"""Training settings and the recipes (pretraining, per-downstream fine-tuning) as plain configuration.

Defaults follow JMP's published configs (Shoghi et al., ICLR 2024), scaled down where the paper's
values only make sense at millions of steps (warm-up length is a fraction of the run, not 2000
steps, so a 200-step CPU run still has a warm-up and a decay):

- pretraining: AdamW(lr 3e-4, betas (0.9, 0.95), weight decay 0.1), gradient-norm clipping at 1.0,
  linear warm-up from 0.2 x lr, cosine decay to 0.1 x lr, EMA of weights with decay 0.99,
  energy loss MAE (weight 1) and force loss L2-MAE (weight 10, as in the paper authors' code),
  both on normalised targets (per-element linear reference, then scale), bf16 autocast on GPU.
- fine-tuning: AdamW(lr 5e-6 for JMP-L; we use 1e-4 for the small models trained here, see
  ``FINETUNE_RECIPES``), clipping by value at 1.0, warm-up 5 epochs from 0.1 x lr, cosine decay to
  0.1 x lr, EMA 0.99, early stopping on the validation metric, and JMP's layer-wise learning-rate
  scales on a pretrained backbone (embedding 0.3, blocks on a U-shaped 0.3-0.625 profile; layer_lr.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastcsi.errors import FastCSIError


@dataclass
class TrainConfig:
    """Everything the shared loop needs; recipes are instances of this with other values."""

    epochs: int = 2
    batch_size: int = 8
    lr: float = 3e-4
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05  # of all optimizer steps (JMP: 2000 of ~millions / 5 epochs of 32)
    warmup_start_factor: float = 0.2
    min_lr_factor: float = 0.1
    clip_algorithm: str = "norm"  # "norm" | "value" | "none"
    clip_value: float = 1.0
    ema_decay: float = 0.99  # 0 disables EMA
    energy_weight: float = 1.0
    force_weight: float = 10.0
    target_weight: float = 1.0  # graph-level scalar targets (fine-tuning)
    amp: bool = True  # bf16 autocast, only ever used on CUDA
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps; 0 = only at epoch ends and at the end
    early_stopping_patience: int = 0  # epochs without validation improvement; 0 = off
    stop_after_steps: int = 0  # interrupt (checkpoint then return) after this many steps; 0 = off
    max_threads: int = 0  # torch intra-op threads; 0 = auto (fastcsi.threads: one for a small model on CPU)
    # Layer-wise learning-rate scales (layer_lr.py): "none" | "jmp" | "name=scale,..."; fine-tuning
    # recipes say "auto" = "jmp" for a pretrained backbone, "none" from scratch.
    layer_lr: str = "none"
    # memory only: a step's structures go through the model in chunks of at most this many atoms,
    # gradients summed (the same update as one pass); None = the whole step at once
    max_atoms_per_batch: int | None = None

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if self.epochs < 1:
            raise FastCSIError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise FastCSIError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_atoms_per_batch is not None and self.max_atoms_per_batch < 1:
            raise FastCSIError(f"--max-atoms-per-batch must be >= 1, got {self.max_atoms_per_batch}")
        if not self.lr > 0:
            raise FastCSIError(f"learning rate must be > 0, got {self.lr}")
        if self.clip_algorithm not in ("norm", "value", "none"):
            raise FastCSIError(f"clip algorithm must be norm, value or none, got {self.clip_algorithm!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise FastCSIError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise FastCSIError(f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes) -> "TrainConfig":
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)


PRETRAIN_DEFAULTS = TrainConfig()


@dataclass
class FinetuneRecipe:
    """A downstream task family: which targets, how to reduce per-atom outputs, training settings."""

    name: str
    train: TrainConfig
    # "sum" for extensive targets (energies), "mean" for intensive ones (band gap, per-atom props).
    reduction: str = "sum"
    forces: str = "auto"  # "gradient" | "direct" | "auto" (JMP: gradient forces for rMD17/MD22)
    default_split: str = "0.8,0.1,0.1"
    note: str = ""
    extra: dict = field(default_factory=dict)


def _ft(**kw) -> TrainConfig:
    base = dict(
        lr=1e-4,
        clip_algorithm="value",
        warmup_start_factor=0.1,
        warmup_fraction=0.1,
        early_stopping_patience=10,
        epochs=50,
        layer_lr="auto",
        batch_size=4,
    )
    base.update(kw)
    return TrainConfig(**base)


FINETUNE_RECIPES = {
    # rMD17 / MD22: energy + forces, tiny training splits (950 / 50 / rest), force MAE drives selection.
    "rmd17": FinetuneRecipe("rmd17", _ft(force_weight=100.0), default_split="950,50,rest",
                            forces="gradient", note="JMP rMD17: gradient forces, batch 4"),
    "md22": FinetuneRecipe("md22", _ft(force_weight=100.0), default_split="0.8,0.1,0.1",
                           forces="gradient", note="JMP MD22: gradient forces"),
    "spice": FinetuneRecipe("spice", _ft(force_weight=100.0, batch_size=8), default_split="0.8,0.1,0.1",
                            forces="gradient", note="JMP SPICE: energy + forces"),
    "qm9": FinetuneRecipe("qm9", _ft(batch_size=16), reduction="sum", default_split="0.8,0.1,0.1",
                          note="JMP QM9: one scalar target per run, native units"),
    "qmof": FinetuneRecipe("qmof", _ft(batch_size=4), reduction="mean", default_split="0.8,0.1,0.1",
                           note="JMP QMOF: band gap (eV), mean over atoms"),
    "matbench": FinetuneRecipe("matbench", _ft(batch_size=4), reduction="mean",
                               default_split="0.8,0.1,0.1", note="MatBench property, mean over atoms"),
}


def recipe_for(name: str | None, targets: list[str]) -> FinetuneRecipe:
    """The named recipe, or a guess from the targets: energy/forces -> rmd17, else qm9."""
    if name:
        try:
            return FINETUNE_RECIPES[name.lower()]
        except KeyError:
            raise FastCSIError(
                f"unknown fine-tuning recipe {name!r}; choose one of {', '.join(FINETUNE_RECIPES)}"
            ) from None
    if "energy" in targets or "forces" in targets:
        return FINETUNE_RECIPES["rmd17"]
    if any(t.lower() in ("band_gap", "bandgap", "bg_pbe", "gap") for t in targets):
        return FINETUNE_RECIPES["qmof"]
    return FINETUNE_RECIPES["qm9"]
