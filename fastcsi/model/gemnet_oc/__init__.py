"""GemNet-OC (JMP layout): hyperparameters, model, checkpoint import/export."""
from fastcsi.model.gemnet_oc.checkpoint import FORMAT, load_backbone, save_checkpoint
from fastcsi.model.gemnet_oc.configs import CONFIGS, normalize_hparams
from fastcsi.model.gemnet_oc.model import GemNetOC, build_graphs

__all__ = ["CONFIGS", "FORMAT", "GemNetOC", "build_graphs", "load_backbone", "normalize_hparams", "save_checkpoint"]
