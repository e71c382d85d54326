"""Using a trained model: load what ``fastcsi finetune`` / ``pretrain`` wrote (weights, normaliser,
graph settings, heads), as an ASE calculator, or to predict and evaluate whole datasets. Reads what
``fastcsi.train`` writes; ``train`` never imports this package."""
from fastcsi.inference.evaluate import evaluate
from fastcsi.inference.model import TrainedModel, load_model
from fastcsi.inference.predict import iter_predictions, predict_file

__all__ = ["FastCSICalculator", "TrainedModel", "evaluate", "iter_predictions", "load_model", "predict_file"]


def __getattr__(name):
    # the calculator imports ase; load it only when asked for
    if name == "FastCSICalculator":
        from fastcsi.inference.calculator import FastCSICalculator

        return FastCSICalculator
    raise AttributeError(name)
