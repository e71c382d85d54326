"""GemNet-OC checkpoints: our own format, JMP checkpoints / state_dicts, fairchem checkpoints.

Our format (``save_checkpoint``), a ``torch.save`` dict readable with ``weights_only=True``::

    {"format": "fastcsi-gemnet-oc/1", "hparams": {...}, "state_dict": {...},
     "extra": {...}, "versions": fastcsi.utils.versions()}

``load_backbone(path, base=None, scale_file=None, **hparams)`` accepts, after stripping any
``module.`` (DDP / fairchem wrapper) prefixes:

* our format (hyperparameters from the file, overridable by ``hparams``);
* a JMP checkpoint (``{"state_dict": ...}``) or bare state_dict in JMP's fine-tuning layout
  (``embedding.weight``, ``backbone.*``, ``out_energy.*``, ``out_forces.*``) or pretraining layout
  (``embedding.atom_embedding.weight`` -> ``embedding.weight``; the pretraining heads ``output.*``
  are dropped and reported). Hyperparameters come from ``base`` (a name in ``CONFIGS``) and
  ``hparams``; ``num_elements`` is read off the embedding when not given;
* a fairchem GemNet-OC checkpoint (``{"state_dict": ..., "config": {"model": {...}}}``), keys
  mapped explicitly (``_FAIRCHEM_RULES``), hyperparameters from its config.

Rules: backbone and embedding keys must all be present; missing ``scale_factor`` keys are an error
unless the ``scale_file`` hyperparameter (JMP's name: a ``.pt``/``.json`` mapping ScaleFactor module
paths, relative to the backbone, to values) provides them; head keys may all be absent (a backbone-only checkpoint: the
heads keep their fresh initialisation and ``model.load_info["heads_initialized"]`` says so);
unexpected keys are an error except the documented drops. Errors list the offending keys.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from fastcsi.errors import FastCSIError
from fastcsi.model.gemnet_oc.configs import IGNORED_KEYS, config
from fastcsi.model.gemnet_oc.layers import skip_weight_init
from fastcsi.model.gemnet_oc.model import GemNetOC
from fastcsi.model.gemnet_oc.scale_file import load_scale_file
from fastcsi.utils import atomic_path, load_torch_file, versions

FORMAT = "fastcsi-gemnet-oc/1"
HEAD_PREFIXES = ("out_energy.", "out_forces.")

# fairchem GemNetOC key -> our key (first matching rule wins).
_FAIRCHEM_RULES = [
    (r"^atom_emb\.embeddings\.weight$", "embedding.weight"),
    (r"^edge_emb\.(.*)$", r"backbone.bases.edge_emb.\1"),
    (r"^((?:radial_basis|radial_basis_aeaint|radial_basis_aint|cbf_basis_\w+|sbf_basis_qint|mlp_rbf_\w+|"
     r"mlp_cbf_\w+|mlp_sbf_qint)\..*)$", r"backbone.bases.\1"),
    (r"^((?:int_blocks|out_blocks)\..*)$", r"backbone.\1"),
    (r"^out_mlp_(E|F)\.(\d+\..*)$", r"backbone.out_mlp_\1.out_mlp.\2"),
    (r"^out_energy\.linear\.weight$", "out_energy.0.weight"),
    (r"^out_forces\.linear\.weight$", "out_forces.0.weight"),
]


def save_checkpoint(model: GemNetOC, path, extra: dict | None = None) -> Path:
    """Write ``model`` in our format, atomically. ``extra`` must hold plain Python values/tensors."""
    payload = {
        "format": FORMAT,
        # the scale factors' values are in the state_dict; the file is not needed to reload
        "hparams": {**model.hparams, "scale_file": None},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
        "versions": versions(),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read(path: Path):
    return load_torch_file(path, "checkpoint")


def _strip_prefix(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _map_fairchem(state: dict, path: Path) -> tuple[dict, list]:
    mapped, unmapped = {}, []
    for key, value in state.items():
        for pattern, repl in _FAIRCHEM_RULES:
            if re.match(pattern, key):
                mapped[re.sub(pattern, repl, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise FastCSIError(f"{path}: fairchem checkpoint has keys with no GemNet-OC mapping: {', '.join(sorted(unmapped))}")
    return mapped, []


def _map_jmp(state: dict) -> tuple[dict, list]:
    mapped, dropped = {}, []
    for key, value in state.items():
        if key == "embedding.atom_embedding.weight":
            mapped["embedding.weight"] = value
        elif key.startswith("output."):  # JMP pretraining heads: not part of the backbone
            dropped.append(key)
        else:
            mapped[key] = value
    return mapped, dropped


def load_backbone(path, base: str | None = None, **hparams) -> GemNetOC:
    """Build a GemNetOC from a checkpoint (see the module docstring for formats and rules)."""
    path = Path(path)
    scale_file = hparams.get("scale_file")
    obj = _read(path)
    file_hparams: dict = {}
    dropped: list = []
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        file_hparams, state = dict(obj["hparams"]), _strip_prefix(obj["state_dict"])
        layout = "fastcsi"
    else:
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            state = obj["state_dict"]
        elif _is_state_dict(obj):
            state = obj
        else:
            raise FastCSIError(f"{path}: neither a state_dict nor a checkpoint holding one")
        state = _strip_prefix(state)
        if "atom_emb.embeddings.weight" in state:
            layout = "fairchem"
            model_cfg = obj.get("config", {}).get("model", {}) if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
            file_hparams = {k: v for k, v in model_cfg.items() if k not in IGNORED_KEYS and k not in ("output_init", "scale_file")}
            state, dropped = _map_fairchem(state, path)
        elif any(k.startswith("backbone.") for k in state):
            layout = "jmp"
            state, dropped = _map_jmp(state)
        else:
            raise FastCSIError(f"{path}: state_dict is neither in JMP's layout (backbone.*) nor fairchem's (atom_emb.*)")
        if layout == "jmp" and isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
            backbone_cfg = obj["hyper_parameters"].get("backbone")
            if isinstance(backbone_cfg, dict):
                file_hparams = dict(backbone_cfg)
    merged = {**(config(base) if base else {}), **file_hparams, **hparams}
    if not merged:
        raise FastCSIError(f"{path}: no hyperparameters stored; pass base='gemnet-oc-s' (or -l) and/or the hyperparameters")
    if "num_elements" not in hparams and "embedding.weight" in state:
        merged["num_elements"] = int(state["embedding.weight"].shape[0])
    with skip_weight_init():  # every initialised (backbone) weight is loaded below or it is an error
        model = GemNetOC(**{**merged, "scale_file": None})
    model.hparams["scale_file"] = merged.get("scale_file")
    expected = model.state_dict()

    if not model.hparams["direct_forces"]:
        # JMP drops a pretrained backbone's direct-force modules when fine-tuning with gradient forces.
        force_only = re.compile(r"^backbone\.(out_mlp_F\.|out_blocks\.\d+\.(scale_rbf_F|dense_rbf_F|seq_forces)\.?)")
        dropped += [k for k in state if force_only.match(k) and k not in expected]
        state = {k: v for k, v in state.items() if not (force_only.match(k) and k not in expected)}

    missing = [k for k in expected if k not in state]
    if scale_file is not None:
        scales = load_scale_file(scale_file)
        for key in [k for k in missing if k.endswith(".scale_factor") and k in scales]:
            state[key] = scales[key]
        missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    heads_missing = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    heads_present = any(k.startswith(HEAD_PREFIXES) for k in state)
    heads_initialized = bool(heads_missing) and not heads_present
    if heads_initialized:
        missing = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    scale_missing = [k for k in missing if k.endswith(".scale_factor")]
    if scale_missing:
        raise FastCSIError(
            f"{path}: missing {len(scale_missing)} scale-factor value(s) ({', '.join(scale_missing[:6])}"
            f"{', ...' if len(scale_missing) > 6 else ''}); pass scale_file= with fitted values"
        )
    if missing:
        raise FastCSIError(f"{path}: missing key(s): {', '.join(missing)}")
    if unexpected:
        raise FastCSIError(f"{path}: unexpected key(s): {', '.join(unexpected)}")
    bad_shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in state
                  if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad_shapes:
        raise FastCSIError(f"{path}: shape mismatch (checkpoint vs hyperparameters): {'; '.join(bad_shapes)}")
    dtype = state["embedding.weight"].dtype
    if dtype.is_floating_point:
        model = model.to(dtype)
    model.load_state_dict(state, strict=not heads_initialized)
    model.load_info = {"path": str(path), "layout": layout, "dropped_keys": sorted(dropped),
                       "heads_initialized": heads_initialized}
    return model
