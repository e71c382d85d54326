"""Budgeted pretraining and fine-tuning of GemNet-OC: one training loop (losses, normalisation,
EMA, checkpoint/resume, exact-budget data parallelism) with the recipes as configuration."""
from fastcsi.train.config import FINETUNE_RECIPES, PRETRAIN_DEFAULTS, FinetuneRecipe, TrainConfig, recipe_for
from fastcsi.train.finetune import FinetuneSettings, run_finetune
from fastcsi.train.loop import Trainer
from fastcsi.train.normalization import NormalizedModel, Normalizer, fit_linear_reference
from fastcsi.train.pretrain import PretrainSettings, run_pretrain
from fastcsi.train.report import build_report
from fastcsi.train.splits import split_indices

__all__ = [
    "FINETUNE_RECIPES", "PRETRAIN_DEFAULTS", "FinetuneRecipe", "FinetuneSettings", "NormalizedModel", "Normalizer",
    "PretrainSettings", "TrainConfig", "Trainer", "build_report", "fit_linear_reference", "recipe_for",
    "run_finetune", "run_pretrain", "split_indices",
]
