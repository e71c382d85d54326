"""Per-atom feature extraction from a GemNet-OC backbone (the input of the CSI statistics).

Which features the paper uses: in Ghunaim et al.'s code (Yasir-Ghunaim/efficient_atom_dev,
``GemNetOCWithFeatureExtraction`` and ``my_scripts/extract_*.py``) the "node" features are the
output of the backbone's global energy MLP ``out_mlp_E`` applied to the concatenated outputs of all
output blocks (shape (N_atoms, emb_size_atom), 256 for JMP-S/L), i.e. the last per-atom
representation before the energy head; "edge" features are the output of ``out_mlp_F`` mean-
aggregated onto each edge's target atom. CSI in the paper is computed on the node features, so
``layer="final", kind="node"`` is the default here.

Layers: ``"final"`` (the above) or ``"blockK"`` (K = 0..num_blocks: the atom / edge outputs of
output block K, block0 being the embedding before any interaction). Extraction runs under
``torch.inference_mode``, stops after the requested block and never builds the energy/force heads.
"""
from __future__ import annotations

import hashlib
import json
import re

import torch

from fastcsi.errors import FastCSIError

DEFAULT_LAYER = "final"
DEFAULT_KIND = "node"


def check_elements(model, atomic_numbers) -> None:
    """Raise FastCSIError when an atomic number cannot be embedded (Z < 1 or Z > num_elements)."""
    z = torch.as_tensor(atomic_numbers)
    if z.numel() == 0:
        return
    bad = (z < 1) | (z > model.num_elements)
    if bool(bad.any()):
        values = sorted({int(v) for v in z[bad].reshape(-1).tolist()})
        raise FastCSIError(
            f"GemNet-OC embeds atomic numbers 1..{model.num_elements} only; got {', '.join(map(str, values))}"
        )


def _parse_layer(model, layer: str):
    if layer == "final":
        return None
    match = re.fullmatch(r"block(\d+)", str(layer))
    if not match or int(match.group(1)) > model.hparams["num_blocks"]:
        raise FastCSIError(
            f"unknown feature layer {layer!r}; use 'final' or 'block0'..'block{model.hparams['num_blocks']}'"
        )
    return int(match.group(1))


def _check_kind(model, kind: str):
    if kind not in ("node", "edge"):
        raise FastCSIError(f"unknown feature kind {kind!r}; use 'node' or 'edge'")
    if kind == "edge" and not model.hparams["direct_forces"]:
        raise FastCSIError("edge features need a backbone with direct_forces=True (it has no edge output blocks)")


def feature_dim(model, layer: str = DEFAULT_LAYER, kind: str = DEFAULT_KIND) -> int:
    _parse_layer(model, layer)
    _check_kind(model, kind)
    return int(model.hparams["emb_size_atom" if kind == "node" else "emb_size_edge"])


def extract_features(model, batch, layer: str = DEFAULT_LAYER, kind: str = DEFAULT_KIND) -> torch.Tensor:
    """(N_atoms, d) features of ``layer`` / ``kind`` for every atom of ``batch`` (model dtype).

    ``kind="edge"``: edge features averaged over each atom's incoming main-graph edges (zeros for an
    atom without edges). Runs in eval mode (the model's mode is restored afterwards)."""

    block = _parse_layer(model, layer)
    _check_kind(model, kind)
    was_training = model.training
    model.eval()  # dropout / edge dropout off: features must be deterministic
    try:
        return _extract(model, batch, block, kind)
    finally:
        model.train(was_training)


def _extract(model, batch, block, kind):
    from fastcsi.model.gemnet_oc.layers import scatter_sum

    with torch.inference_mode():
        batch = model.prepare(batch)
        g = model.graphs(batch)
        want_edges = kind == "edge"
        out = model.backbone(model.embed(batch), g, stop_after_block=block, want_edges=want_edges,
                             want_final=block is None)
        if kind == "node":
            return out["energy"] if block is None else out["xs_E"][block]
        edge = out["forces"] if block is None else out["xs_F"][block]
        idx_t = g["main"]["edge_index"][1]
        total = scatter_sum(edge, idx_t, batch.num_atoms)
        count = torch.bincount(idx_t, minlength=batch.num_atoms).clamp(min=1).to(total.dtype)
        return total / count[:, None]


_HEAD_PREFIXES = ("out_energy.", "out_forces.")


def hash_state(digest, module: torch.nn.Module, skip_prefixes: tuple = ()) -> None:
    """Feed every weight and buffer of ``module`` (name, dtype, shape, bytes) into ``digest``, in
    name order, leaving out the keys that start with one of ``skip_prefixes``."""
    for name, tensor in sorted(module.state_dict().items()):
        if skip_prefixes and name.startswith(skip_prefixes):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def extractor_fingerprint(model, layer: str = DEFAULT_LAYER, kind: str = DEFAULT_KIND) -> str:
    """Stable hex digest of (hyperparameters, every backbone weight and buffer, layer, kind): two
    CSI statistics are comparable only when their fingerprints are equal. The output heads are left
    out: no feature passes through them, and a head-less checkpoint (JMP's pretraining files,
    fastcsi's released backbones) gets freshly drawn heads on every load."""
    _parse_layer(model, layer)
    _check_kind(model, kind)
    digest = hashlib.sha256()
    # the scale-factor values are hashed with the weights; where they were read from is not
    hparams = {k: v for k, v in model.hparams.items() if k not in ("scale_file", "head_num_mlps")}
    digest.update(json.dumps(hparams, sort_keys=True).encode())
    digest.update(f"|{layer}|{kind}|".encode())
    # The weight set taken from a file that holds two (JMP / fairchem: raw or EMA) names the features
    # even where both sets happen to agree; the default (raw) adds nothing to the digest. (Leaving the
    # heads out, above and below, did change every fingerprint of a model with heads once: statistics
    # computed before that are refused as another extractor's and cache entries are recomputed.)
    # Keys dropped on loading (task steps, pretraining heads) never reach the model.
    weights = (getattr(model, "load_info", None) or {}).get("weights", "raw")
    if weights != "raw":
        digest.update(f"weights={weights}|".encode())
    hash_state(digest, model, skip_prefixes=_HEAD_PREFIXES)
    return digest.hexdigest()[:32]
