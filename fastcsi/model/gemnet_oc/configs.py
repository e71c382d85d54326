"""GemNet-OC hyperparameters: JMP's ``BackboneConfig`` names (so a JMP config passes straight
through), plus the graph settings (cutoff / max neighbours of the main, atom-edge, quadruplet and
atom-atom graphs) and the fine-tuning head. Three named configurations: JMP-S ("gemnet-oc-s"),
JMP-L ("gemnet-oc-l") and a tiny one for tests and demos."""
from __future__ import annotations

import copy
import math

from fastcsi.errors import FastCSIError

# JMP BackboneConfig field defaults (values from the dataclass, not from a named config).
BACKBONE_DEFAULTS: dict = {
    "num_targets": 1,
    "num_spherical": 7,
    "num_radial": 128,
    "num_blocks": 4,
    "emb_size_atom": 256,
    "emb_size_edge": 512,
    "emb_size_trip_in": 64,
    "emb_size_trip_out": 64,
    "emb_size_quad_in": 32,
    "emb_size_quad_out": 32,
    "emb_size_aint_in": 64,
    "emb_size_aint_out": 64,
    "emb_size_rbf": 16,
    "emb_size_cbf": 16,
    "emb_size_sbf": 32,
    "num_before_skip": 2,
    "num_after_skip": 2,
    "num_concat": 1,
    "num_atom": 3,
    "num_output_afteratom": 3,
    "num_atom_emb_layers": 0,
    "num_global_out_layers": 2,
    "regress_forces": True,
    "regress_energy": True,
    "direct_forces": False,
    "use_pbc": True,
    "scale_backprop_forces": False,
    "rbf": {"name": "gaussian"},
    "rbf_spherical": None,
    "envelope": {"name": "polynomial", "exponent": 5},
    "cbf": {"name": "spherical_harmonics"},
    "sbf": {"name": "spherical_harmonics"},
    "extensive": True,
    "forces_coupled": False,
    "activation": "scaled_silu",
    "quad_interaction": False,
    "atom_edge_interaction": False,
    "edge_atom_interaction": False,
    "atom_interaction": False,
    "scale_basis": False,
    "qint_tags": [0, 1, 2],
    "num_elements": 120,
    "otf_graph": False,
    "scale_file": None,
    "absolute_rbf_cutoff": None,
    "learnable_rbf": False,
    "learnable_rbf_stds": False,
    "unique_basis_per_layer": False,
    "dropout": None,
    "edge_dropout": None,
}

# Graph settings (fairchem's names); None -> JMP's base proportions 30/20/8/1000 of max_neighbors
# and the main cutoff for every graph.
GRAPH_DEFAULTS: dict = {
    "cutoff": 12.0,
    "max_neighbors": 30,
    "cutoff_aeaint": None,
    "cutoff_qint": None,
    "cutoff_aint": None,
    "max_neighbors_aeaint": None,
    "max_neighbors_qint": None,
    "max_neighbors_aint": None,
}

# The fine-tuning head (JMP's ``OutputConfig.num_mlps``, default 5): Linear layers of width
# emb_size_atom (energy) / emb_size_edge (direct forces) then one output.
HEAD_DEFAULTS: dict = {"head_num_mlps": 5}

# Keys of fairchem / JMP configs that have no effect here (bookkeeping of those code bases).
IGNORED_KEYS = {"name", "num_atoms", "bond_feat_dim", "enforce_max_neighbors_strictly", "model", "backbone",
                "use_pbc_single", "output_init"}

_JMP_BASE = {
    **BACKBONE_DEFAULTS,
    "num_blocks": 4, "emb_size_atom": 256, "emb_size_edge": 512, "emb_size_trip_in": 64, "emb_size_trip_out": 64,
    "emb_size_quad_in": 32, "emb_size_quad_out": 32, "emb_size_aint_in": 64, "emb_size_aint_out": 64,
    "emb_size_rbf": 16, "emb_size_cbf": 16, "emb_size_sbf": 32, "num_concat": 1, "num_atom_emb_layers": 2,
    "direct_forces": True, "sbf": {"name": "legendre_outer"}, "quad_interaction": True,
    "atom_edge_interaction": True, "edge_atom_interaction": True, "atom_interaction": True,
    "qint_tags": [1, 2], "absolute_rbf_cutoff": 12.0,
}

CONFIGS: dict[str, dict] = {
    # JMP-S (BackboneConfig.base()).
    "gemnet-oc-s": {**_JMP_BASE, **GRAPH_DEFAULTS, **HEAD_DEFAULTS},
    # JMP-L (BackboneConfig.large()).
    "gemnet-oc-l": {
        **_JMP_BASE, "num_blocks": 6, "emb_size_edge": 1024, "emb_size_trip_out": 128, "emb_size_quad_in": 64,
        "emb_size_rbf": 32, "emb_size_sbf": 64, "num_concat": 4, **GRAPH_DEFAULTS, **HEAD_DEFAULTS,
    },
    # Same architecture (all four interactions, quadruplets, legendre_outer sbf), small widths and
    # 2 blocks: fast on one CPU core for tests and demos.
    "gemnet-oc-tiny": {
        **_JMP_BASE, "num_spherical": 3, "num_radial": 16, "num_blocks": 2, "emb_size_atom": 32,
        "emb_size_edge": 32, "emb_size_trip_in": 8, "emb_size_trip_out": 8, "emb_size_quad_in": 8,
        "emb_size_quad_out": 8, "emb_size_aint_in": 8, "emb_size_aint_out": 8, "emb_size_rbf": 8,
        "emb_size_cbf": 8, "emb_size_sbf": 8, "num_before_skip": 1, "num_after_skip": 1, "num_concat": 1,
        "num_atom": 1, "num_output_afteratom": 1, "num_atom_emb_layers": 1, "num_global_out_layers": 1,
        "absolute_rbf_cutoff": 6.0, **GRAPH_DEFAULTS, "cutoff": 6.0, "head_num_mlps": 2,
    },
}

ALL_KEYS = set(BACKBONE_DEFAULTS) | set(GRAPH_DEFAULTS) | set(HEAD_DEFAULTS)

# Sizes and counts below which a model cannot be built (zero layers of a kind is fine elsewhere).
_AT_LEAST_ONE = {"num_targets", "num_spherical", "num_radial", "num_blocks", "num_concat", "num_elements",
                 "max_neighbors", "head_num_mlps"}
_OPTIONAL_NUMBERS = {"absolute_rbf_cutoff": float, "dropout": float, "edge_dropout": float,
                     **{f"cutoff_{g}": float for g in ("aeaint", "qint", "aint")},
                     **{f"max_neighbors_{g}": int for g in ("aeaint", "qint", "aint")}}


def _check_types(hparams: dict):
    """Each given scalar hyperparameter has its default's type and a possible value (a typo such as
    ``cutoff=abc`` must be a user error, not a traceback deep inside the model)."""
    defaults = {**BACKBONE_DEFAULTS, **GRAPH_DEFAULTS, **HEAD_DEFAULTS}
    for key, value in hparams.items():
        if key not in defaults:
            continue
        kind = _OPTIONAL_NUMBERS.get(key, type(defaults[key]))
        if value is None and key in _OPTIONAL_NUMBERS:
            continue
        if kind is bool:
            ok = isinstance(value, bool) or (type(value) is int and value in (0, 1))  # YAML configs write 0/1
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (1 if (
                key in _AT_LEAST_ONE or key.startswith("emb_size_")) else 0)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        elif kind is str:
            ok = isinstance(value, str)
        else:  # nested settings (basis dicts, tag lists): checked where they are used
            continue
        if not ok:
            want = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}[kind]
            if kind is int and isinstance(value, int) and not isinstance(value, bool):
                want = "a whole number >= " + ("1" if key in _AT_LEAST_ONE or key.startswith("emb_size_") else "0")
            raise FastCSIError(f"GemNet-OC: {key} must be {want}, got {value!r}")


def normalize_hparams(hparams: dict) -> dict:
    """Fill defaults, derive the per-graph cutoffs / max neighbours, validate; JSON-serialisable."""
    unknown = sorted(k for k in hparams if k not in ALL_KEYS and k not in IGNORED_KEYS)
    if unknown:
        raise FastCSIError(f"GemNet-OC: unknown hyperparameter(s) {', '.join(unknown)}")
    _check_types(hparams)
    hp = copy.deepcopy({**BACKBONE_DEFAULTS, **GRAPH_DEFAULTS, **HEAD_DEFAULTS})
    hp.update({k: copy.deepcopy(v) for k, v in hparams.items() if k in ALL_KEYS})
    hp["cutoff"] = float(hp["cutoff"])
    for graph in ("aeaint", "qint", "aint"):
        if hp[f"cutoff_{graph}"] is None:
            hp[f"cutoff_{graph}"] = hp["cutoff"]
        hp[f"cutoff_{graph}"] = float(hp[f"cutoff_{graph}"])
    k = int(hp["max_neighbors"])
    for graph, share in (("aeaint", 20), ("qint", 8), ("aint", 1000)):
        if hp[f"max_neighbors_{graph}"] is None:
            hp[f"max_neighbors_{graph}"] = int(k * share / 30)
    for flag, key in (("learnable_rbf", "trainable"), ("learnable_rbf_stds", "trainable_stds")):
        if hp[flag]:
            hp["rbf"] = {**hp["rbf"], key: True}
            if hp["rbf_spherical"]:
                hp["rbf_spherical"] = {**hp["rbf_spherical"], key: True}
    if hp["unique_basis_per_layer"]:
        raise FastCSIError("GemNet-OC: unique_basis_per_layer=True is not supported (JMP's models use shared bases)")
    for graph in ("aeaint", "qint"):
        if hp[f"cutoff_{graph}"] > hp["cutoff_aint"] or hp["cutoff"] > hp["cutoff_aint"]:
            raise FastCSIError("GemNet-OC: the atom-atom cutoff (cutoff_aint) must be the largest cutoff")
    for key in ("cutoff", "cutoff_aeaint", "cutoff_qint", "cutoff_aint"):
        if not (math.isfinite(hp[key]) and hp[key] > 0):
            raise FastCSIError(f"GemNet-OC: {key} must be a positive number of Å, got {hp[key]!r}")
    if hp["forces_coupled"]:
        raise FastCSIError("GemNet-OC: forces_coupled=True (fairchem's symmetrised direct forces) is not supported")
    if hp["regress_forces"] and hp["num_targets"] != 1:
        raise FastCSIError("GemNet-OC: forces need num_targets = 1")
    hp["qint_tags"] = [int(t) for t in hp["qint_tags"]]
    return hp


def config(name: str) -> dict:
    if name not in CONFIGS:
        raise FastCSIError(f"unknown model {name!r}; choose one of {', '.join(CONFIGS)}")
    return copy.deepcopy(CONFIGS[name])


# JMP's choices that no tensor shape reveals; JMP-S and JMP-L share every one of them.
JMP_FIXED_CHOICES = ("rbf", "rbf_spherical", "envelope", "cbf", "sbf", "activation", "qint_tags",
                     "absolute_rbf_cutoff", "scale_basis", "extensive", "num_targets")


def infer_hparams(state: dict) -> tuple[dict, list, list]:
    """Hyperparameters read off a GemNet-OC state_dict in our (JMP's) key layout.

    Returns ``(hparams, assumed, unknown)``: ``assumed`` names the settings taken from JMP's
    architecture because no shape shows them (:data:`JMP_FIXED_CHOICES`), ``unknown`` the sizes
    whose tensors are absent (the caller then needs a named configuration). Sizes come from weight
    shapes, layer counts from the indices under each ModuleList, flags from which modules exist.
    """
    import re

    shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    hp: dict = {}
    unknown: list = []

    def dim(key, axis, *names):
        shape = shapes.get(key)
        if shape is None or len(shape) <= axis:
            for name in names:
                if name not in hp and name not in unknown:
                    unknown.append(name)
            return None
        for name in names:
            hp.setdefault(name, int(shape[axis]))
        return int(shape[axis])

    def count(prefix):
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
        return max(found) + 1 if found else 0

    bases, block = "backbone.bases.", "backbone.int_blocks.0."
    dim("embedding.weight", 0, "num_elements")
    dim("embedding.weight", 1, "emb_size_atom")
    dim(block + "dense_ca.linear.weight", 0, "emb_size_edge")
    dim(bases + "mlp_rbf_tint.linear.weight", 0, "emb_size_rbf")
    dim(bases + "mlp_rbf_tint.linear.weight", 1, "num_radial")
    dim(bases + "mlp_cbf_tint.weight", 1, "num_spherical")
    dim(bases + "mlp_cbf_tint.weight", 2, "emb_size_cbf")
    dim(block + "trip_interaction.down_projection.linear.weight", 0, "emb_size_trip_in")
    dim(block + "trip_interaction.up_projection_ca.linear.weight", 1, "emb_size_trip_out")
    for flag in ("quad_interaction", "atom_edge_interaction", "edge_atom_interaction", "atom_interaction"):
        hp[flag] = any(k.startswith(block + flag + ".") for k in shapes)
    if hp["quad_interaction"]:
        dim(block + "quad_interaction.down_projection.linear.weight", 0, "emb_size_quad_in")
        dim(block + "quad_interaction.up_projection_ca.linear.weight", 1, "emb_size_quad_out")
        dim(bases + "mlp_sbf_qint.weight", 2, "emb_size_sbf")
    aint = next((b for b in ("atom_edge_interaction", "edge_atom_interaction") if hp[b]), None)
    if aint:
        dim(f"{block}{aint}.down_projection.linear.weight", 0, "emb_size_aint_in")
        dim(f"{block}{aint}.up_projection_ca.linear.weight", 1, "emb_size_aint_out")
    elif hp["atom_interaction"]:
        dim(block + "atom_interaction.down_projection.linear.weight", 0, "emb_size_aint_in")
        dim(block + "atom_interaction.up_projection.linear.weight", 1, "emb_size_aint_out")
    layer_counts = {
        "num_blocks": count("backbone.int_blocks."),
        "num_before_skip": count(block + "layers_before_skip."),
        "num_after_skip": count(block + "layers_after_skip."),
        "num_atom_emb_layers": count(block + "atom_emb_layers."),
        "num_atom": count(block + "atom_update.layers."),
        "num_concat": count(block + "residual_m."),
        "num_output_afteratom": count("backbone.out_blocks.0.seq_energy2."),
    }
    hp.update(layer_counts)
    for name in ("num_blocks", "num_concat"):
        if not hp[name]:
            unknown.append(name)
    out_mlp = count("backbone.out_mlp_E.out_mlp.")
    if out_mlp:
        hp["num_global_out_layers"] = out_mlp - 1
    else:
        unknown.append("num_global_out_layers")
    hp["direct_forces"] = any(k.startswith("backbone.out_mlp_F.") for k in shapes)
    heads = count("out_energy.")
    if heads:
        # Linear layers sit at even positions of the head's Sequential (activations between them)
        hp["head_num_mlps"] = heads // 2 + 1
    hp["learnable_rbf"] = False
    assumed = [name for name in JMP_FIXED_CHOICES]
    hp.update({name: copy.deepcopy(_JMP_BASE[name]) for name in assumed})
    return hp, assumed, unknown
