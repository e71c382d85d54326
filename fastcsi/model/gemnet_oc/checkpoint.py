"""GemNet-OC checkpoints: our own format, JMP's Lightning checkpoints and state_dicts, fairchem's.

Our format (``save_checkpoint``), a ``torch.save`` dict readable with ``weights_only=True``::

    {"format": "fastcsi-gemnet-oc/1", "hparams": {...}, "state_dict": {...},
     "extra": {...}, "versions": fastcsi.utils.versions()}

``load_backbone(path, base=None, weights="raw", **hparams)`` reads every file through the
allow-list unpickler of :mod:`fastcsi.safe_pickle` (tensors rebuilt by torch, every other object an
inert record: nothing a foreign file names is run) and accepts, after stripping ``module.``
(DDP / fairchem wrapper) prefixes:

* our format (hyperparameters from the file, overridable by ``hparams``);
* a JMP Lightning checkpoint (``state_dict``, ``optimizer_states``, ``hyper_parameters`` = the
  pickled pydantic config, whose ``backbone`` fields are the hyperparameters) or a bare state_dict
  in JMP's fine-tuning layout (``embedding.weight``, ``backbone.*``, ``out_energy.*``,
  ``out_forces.*``) or pretraining layout (``embedding.atom_embedding.weight``; the per-task heads
  ``output.*``, the step counters ``task_steps.*`` and any ``*_metrics.*`` are dropped);
* a fairchem GemNet-OC checkpoint (``state_dict``, ``config`` with the model's settings under
  ``config["model"]``, or ``config["model_attributes"]`` in older files, ``ema``), keys mapped
  explicitly (``_FAIRCHEM_RULES``); the hydra layout (``backbone.*`` + ``output_heads.<name>.*``)
  is flattened first.

Hyperparameters: ``config(base)``, then the file's records, then ``hparams``. A file with no
records and no ``base`` gets them from its tensor shapes (``configs.infer_hparams``); what no shape
shows is JMP's (listed in ``load_info["assumed_hparams"]``). Graph settings (cutoffs, max
neighbours) come from the same sources, else JMP's defaults (``load_info["graph_settings"]``).

``weights``: ``"raw"`` (the file's ``state_dict``, what the paper's feature extraction loads) or
``"ema"`` (JMP: ``optimizer_states[0]["ema"]``; fairchem: ``ema["shadow_params"]``), matched to
state_dict keys in order after skipping the buffers and aliases no optimizer holds, as JMP's
``_get_parameter_list_from_state_dict`` does. The aliased ``seq_energy_pre`` keys then take the
EMA value of the ``layers`` key they alias, so the model holds the EMA set throughout.

Rules: backbone and embedding keys must all be present; missing ``scale_factor`` keys are an error
unless the ``scale_file`` hyperparameter (JMP's name: a ``.pt``/``.json`` mapping ScaleFactor module
paths, relative to the backbone, to values) provides them; head keys may all be absent (a backbone-only checkpoint: the
heads keep their fresh initialisation and ``model.load_info["heads_initialized"]`` says so);
unexpected keys are an error except the documented drops, which ``load_info["dropped"]`` counts
per group. Errors list the offending keys.
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
from fastcsi.utils import atomic_path, versions

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


# Key groups of JMP's pretraining model that are not part of the backbone: (prefix, group name).
_DROPPED_GROUPS = [
    ("task_steps.", "task_steps (JMP's per-task step counters)"),
    ("train_metrics.", "metrics"),
    ("val_metrics.", "metrics"),
    ("test_metrics.", "metrics"),
    ("output.", "pretraining heads (JMP's per-task output.out_energy / output.out_forces)"),
]
# Keys that no optimizer (so no EMA) holds, in JMP's own order of tests: radial-basis buffers, the
# aliases of out_blocks.*.layers, the step counters and the (frozen) scale factors.
_NOT_IN_EMA = re.compile(r"(rbf\.offset$|rbf\.temps$|\.seq_energy_pre\.|^task_steps|scale_factor$)")
_GRAPH_KEYS = ("cutoff", "max_neighbors", "cutoff_aeaint", "cutoff_qint", "cutoff_aint", "max_neighbors_aeaint",
               "max_neighbors_qint", "max_neighbors_aint")
WEIGHTS = ("raw", "ema")
_WARNED_GRAPH_DEFAULTS: set = set()


def _read(path: Path):
    from fastcsi.safe_pickle import load_torch_foreign

    return load_torch_foreign(path, "checkpoint")


def _strip_prefix(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _flatten_hydra(state: dict) -> dict:
    """fairchem's hydra layout (backbone.* + output_heads.<head>.*) -> its single-model key names."""
    if not any(k.startswith("backbone.atom_emb.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        elif m := re.match(r"^output_heads\.[^.]+\.((?:out_mlp_E|out_mlp_F|out_energy|out_forces)\..*)$", key):
            out[m.group(1)] = value
        else:
            out[key] = value
    return out


def _map_fairchem(state: dict, path: Path) -> dict:
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
    return mapped


def _drop_groups(state: dict) -> tuple[dict, dict]:
    """JMP pretraining keys that are not the backbone, out of ``state``; {group: [keys]}."""
    kept, dropped = {}, {}
    for key, value in state.items():
        group = next((name for prefix, name in _DROPPED_GROUPS if key.startswith(prefix)), None)
        if group is None:
            kept[key] = value
        else:
            dropped.setdefault(group, []).append(key)
    if "embedding.atom_embedding.weight" in kept:
        kept["embedding.weight"] = kept.pop("embedding.atom_embedding.weight")
    return kept, dropped


def _ema_tensors(obj, layout: str, path: Path) -> list:
    where = {"jmp": 'optimizer_states[0]["ema"]', "fairchem": 'ema["shadow_params"]'}.get(layout)
    ema = None
    if layout == "jmp" and isinstance(obj.get("optimizer_states"), (list, tuple)) and obj["optimizer_states"]:
        first = obj["optimizer_states"][0]
        ema = first.get("ema") if isinstance(first, dict) else None
    elif layout == "fairchem" and isinstance(obj.get("ema"), dict):
        ema = obj["ema"].get("shadow_params")
    if where is None or not isinstance(ema, (list, tuple)) or not ema:
        raise FastCSIError(f"{path}: --weights ema: the file holds no EMA weights"
                           + (f" ({where} is absent)" if where else f" ({layout} checkpoints hold one set)"))
    if not all(torch.is_tensor(t) for t in ema):
        raise FastCSIError(f"{path}: --weights ema: {where} holds something other than tensors")
    return list(ema)


def _apply_ema(state: dict, ema: list, path: Path) -> dict:
    """``state`` with its optimised parameters replaced by ``ema`` (same order, as JMP matches them)."""
    names = [k for k in state if not _NOT_IN_EMA.search(k)]
    if len(names) != len(ema):
        raise FastCSIError(f"{path}: --weights ema: {len(ema)} EMA tensors for {len(names)} parameters "
                           "in the state_dict")
    out = dict(state)
    for index, (name, value) in enumerate(zip(names, ema)):
        if tuple(value.shape) != tuple(state[name].shape) or value.dtype != state[name].dtype:
            raise FastCSIError(f"{path}: --weights ema: EMA tensor {index} is {value.dtype} {tuple(value.shape)}, "
                               f"parameter {name} is {state[name].dtype} {tuple(state[name].shape)}")
        out[name] = value
    for key in state:  # out_blocks.*.seq_energy_pre is out_blocks.*.layers under a second name
        twin = key.replace(".seq_energy_pre.", ".layers.")
        if twin != key and twin in out:
            out[key] = out[twin]
    return out


def _plain(value) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _recorded_hparams(fields: dict) -> tuple[dict, list]:
    """The GemNet-OC hyperparameters among a file's recorded settings; names it records that do not
    apply here (bookkeeping of JMP / fairchem, or values that are not plain data)."""
    from fastcsi.model.gemnet_oc.configs import ALL_KEYS

    kept, ignored = {}, []
    for key, value in fields.items():
        if key in ALL_KEYS and key != "scale_file" and _plain(value):
            kept[key] = list(value) if isinstance(value, tuple) else value
        elif key not in IGNORED_KEYS and key != "scale_file":
            ignored.append(key)
    return kept, sorted(ignored)


def _jmp_records(obj) -> dict:
    """JMP's config object (``hyper_parameters``): backbone fields, head depth, graph settings."""
    from fastcsi.safe_pickle import record_fields

    config_fields = record_fields(obj.get("hyper_parameters"))
    backbone = record_fields(config_fields.get("backbone"))
    if not backbone:
        return {}
    fields = dict(backbone)
    num_mlps = record_fields(config_fields.get("output")).get("num_mlps")
    if isinstance(num_mlps, int) and not isinstance(num_mlps, bool):
        fields["head_num_mlps"] = num_mlps
    # graph settings when a config records them (JMP's Cutoffs / MaxNeighbors: main, aeaint, qint, aint)
    for record_key, name in (("cutoffs", "cutoff"), ("max_neighbors", "max_neighbors")):
        graph = record_fields(config_fields.get(record_key))
        for part, value in graph.items():
            if part in ("main", "aeaint", "qint", "aint"):
                fields[name if part == "main" else f"{name}_{part}"] = value
    return fields


def _fairchem_records(obj) -> dict:
    from fastcsi.safe_pickle import record_fields

    cfg = record_fields(obj.get("config"))
    model_cfg = cfg.get("model")
    if isinstance(model_cfg, str):  # older OCP configs: model name, settings in model_attributes
        model_cfg = cfg.get("model_attributes")
    model_cfg = record_fields(model_cfg)
    if isinstance(model_cfg.get("backbone"), dict):  # hydra: {"name": "hydra", "backbone": {...}, "heads": ...}
        model_cfg = record_fields(model_cfg["backbone"])
    # fairchem's energy and force outputs are one Linear layer each
    return {"head_num_mlps": 1, **model_cfg} if model_cfg else {}


def _classify(obj, path: Path):
    """(layout, raw state with prefixes stripped, the file's recorded settings)."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return "fastcsi", _strip_prefix(obj["state_dict"]), dict(obj["hparams"])
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif _is_state_dict(obj):
        state = obj
    else:
        raise FastCSIError(f"{path}: neither a state_dict nor a checkpoint holding one")
    bad = sorted(k for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v)))
    if bad:
        raise FastCSIError(f"{path}: state_dict entries that are not tensors: {', '.join(map(str, bad[:6]))}")
    state = _strip_prefix(state)
    records = obj if isinstance(obj, dict) else {}
    flat = _flatten_hydra(state)
    if "atom_emb.embeddings.weight" in flat:
        return "fairchem", flat, _fairchem_records(records)
    if any(k.startswith("backbone.") for k in state):
        return "jmp", state, _jmp_records(records)
    raise FastCSIError(f"{path}: state_dict is neither in JMP's layout (backbone.*) nor fairchem's (atom_emb.*)")


def load_backbone(path, base: str | None = None, weights: str = "raw", **hparams) -> GemNetOC:
    """Build a GemNetOC from a checkpoint (see the module docstring for formats and rules)."""
    from fastcsi.model.gemnet_oc.configs import GRAPH_DEFAULTS, infer_hparams

    from fastcsi.model.gemnet_oc.configs import CONFIGS

    path = Path(path)
    if weights not in WEIGHTS:
        raise FastCSIError(f"--weights {weights!r}: choose raw or ema")
    if base is not None and base not in CONFIGS:
        raise FastCSIError(f"--base {base!r}: unknown GemNet-OC config; choose one of {', '.join(CONFIGS)}")
    scale_file = hparams.get("scale_file")
    obj = _read(path)
    layout, state, records = _classify(obj, path)
    if weights == "ema":
        if layout == "fastcsi":
            raise FastCSIError(f"{path}: --weights ema: a fastcsi checkpoint holds one set of weights "
                               "(pretraining already saves its EMA weights as the backbone)")
        if _is_state_dict(obj):
            raise FastCSIError(f"{path}: --weights ema: a bare state_dict holds no EMA weights")
        state = _apply_ema(state, _ema_tensors(obj, layout, path), path)
    if layout == "fairchem":
        state = _map_fairchem(state, path)
    dropped_groups: dict = {}
    if layout == "jmp":
        state, dropped_groups = _drop_groups(state)

    file_hparams, ignored = (dict(records), []) if layout == "fastcsi" else _recorded_hparams(records)
    assumed: list = []
    if file_hparams:
        source = "file"
    elif base:
        source = f"--base {base}"
    else:
        # Arguments (fine-tuning's task overrides, a scale file) refine the inferred architecture;
        # they never stand in for it unless they name what the tensors cannot show.
        file_hparams, assumed, unknown = infer_hparams(state)
        unknown = [k for k in unknown if k not in hparams]
        if unknown:
            raise FastCSIError(f"{path}: no hyperparameters stored and {', '.join(unknown)} cannot be inferred "
                               "from the tensors; pass --base gemnet-oc-s (or -l), or the hyperparameters")
        assumed = [k for k in assumed if k not in hparams]
        source = "inferred from tensor shapes" + (", with arguments" if hparams else "")
    merged = {**(config(base) if base else {}), **file_hparams, **hparams}
    if "num_elements" not in hparams and "embedding.weight" in state:
        merged["num_elements"] = int(state["embedding.weight"].shape[0])
    graph_given = [k for k in _GRAPH_KEYS if k in file_hparams or k in hparams]
    if graph_given:
        graph_settings = "file" if any(k in file_hparams for k in graph_given) else "arguments"
    elif base:
        graph_settings = f"--base {base}"
    else:
        merged.update(GRAPH_DEFAULTS)
        graph_settings = "JMP defaults"
        if str(path.resolve()) not in _WARNED_GRAPH_DEFAULTS:  # once per file and process, however often it loads
            import warnings

            _WARNED_GRAPH_DEFAULTS.add(str(path.resolve()))
            warnings.warn(f"{path} records no graph settings: using JMP's defaults (cutoff "
                          f"{GRAPH_DEFAULTS['cutoff']:g} Å for every graph, {GRAPH_DEFAULTS['max_neighbors']}/20/8/1000 "
                          "neighbours)", stacklevel=2)
    with skip_weight_init():  # every initialised (backbone) weight is loaded below or it is an error
        model = GemNetOC(**{**merged, "scale_file": None})
    model.hparams["scale_file"] = merged.get("scale_file")
    expected = model.state_dict()

    filled = []
    if layout == "fairchem":
        # fairchem's Gaussian basis keeps no widths: ours are fixed by the hyperparameters
        filled = [k for k in expected if k.endswith("rbf.temps") and k not in state]
        state.update({k: expected[k] for k in filled})

    if not model.hparams["direct_forces"]:
        # JMP drops a pretrained backbone's direct-force modules when fine-tuning with gradient forces.
        force_only = re.compile(r"^backbone\.(out_mlp_F\.|out_blocks\.\d+\.(scale_rbf_F|dense_rbf_F|seq_forces)\.?)")
        unused = [k for k in state if force_only.match(k) and k not in expected]
        if unused:
            dropped_groups["direct-force modules (unused with gradient forces)"] = unused
        state = {k: v for k, v in state.items() if k not in unused}

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
    model.load_info = {
        "path": str(path), "layout": layout, "weights": weights,
        "dropped_keys": sorted(k for keys in dropped_groups.values() for k in keys),
        "dropped": {group: len(keys) for group, keys in sorted(dropped_groups.items())},
        "heads_initialized": heads_initialized, "hparams": source, "assumed_hparams": assumed,
        "ignored_settings": ignored, "graph_settings": graph_settings, "filled_buffers": sorted(filled),
    }
    return model
