"""Per-atom feature extractors: the one protocol the CSI pipeline uses, and the registry of backbones.

Every extractor, ours or a foreign model's thin adapter, offers the same face (:class:`FeatureExtractor`):
``name``, ``dim``, ``elements`` (atomic numbers it can embed, or None for all), ``cutoff`` (Å),
``fingerprint`` (its weights and settings: two statistics are comparable only when they match),
``device``, ``dtype``, ``pretrained`` (False for a random initialisation), ``layer``, ``kind``,
``description``, ``model`` (the torch module, for the thread policy), ``features(batch) -> (N_atoms, dim)``,
``check_elements`` and ``describe``.

Backbones are named by a spec ``NAME[:MODEL]`` (``--backbone``):

* ``gemnet-oc:FILE`` a GemNet-OC checkpoint fastcsi reads (JMP, fairchem, fastcsi; ``--checkpoint FILE``);
* ``gemnet-oc-random[:CONFIG]`` a seeded random initialisation (default config gemnet-oc-tiny) for
  tests and speed work; its CSI is flagged as coming from untrained weights;
* ``sevennet-0`` SevenNet-0 (11 Jul 2024), weights from the ``sevenn`` wheel;
* ``chgnet[:VERSION]`` CHGNet (default 0.3.0), weights from the ``chgnet`` wheel (extra ``chgnet``);
* ``fairchem:FILE[:TASK]`` a user's fairchem eSEN or UMA checkpoint (extra ``fairchem``).

The MACE adapter is not written (see the README's Backbones section).

Foreign packages are imported only when their backbone is asked for, and no adapter ever downloads:
a model that is not on disk is a one-line error.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fastcsi.errors import FastCSIError

# The offline pretrained default: its weights ship inside a PyPI wheel (sevenn, MIT).
DEFAULT_BACKBONE = "sevennet-0"
# Names another default (e.g. gemnet-oc-random: the test suite runs the tiny random backbone).
DEFAULT_BACKBONE_ENV = "FASTCSI_BACKBONE"


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    dim: int
    elements: frozenset | None
    cutoff: float
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    pretrained: bool
    layer: str
    kind: str
    description: str
    model: torch.nn.Module

    def features(self, batch, profiler=None) -> torch.Tensor: ...

    def check_elements(self, atomic_numbers, where: str = "") -> None: ...

    def describe(self) -> dict: ...


class ExtractorBase:
    """What every extractor shares: the element check and the description recorded with its stats."""

    name: str
    elements: frozenset | None = None

    def check_elements(self, atomic_numbers, where: str = "") -> None:
        """One FastCSIError naming the atomic numbers this extractor cannot embed."""
        z = torch.as_tensor(atomic_numbers)
        if z.numel() == 0:
            return
        present = {int(v) for v in torch.unique(z).tolist()}
        bad = sorted(v for v in present if v < 1 or (self.elements is not None and v not in self.elements))
        if bad:
            message = (f"backbone {self.name} cannot embed atomic number(s) {', '.join(map(str, bad))} "
                       f"({self.coverage_text()}); choose another --backbone")
            raise FastCSIError(f"{where}: {message}" if where else message)

    def coverage_text(self) -> str:
        if self.elements is None:
            return "it covers every element"
        return f"it covers {len(self.elements)} elements, Z {min(self.elements)}..{max(self.elements)} with gaps"

    def describe(self) -> dict:
        return {
            "extractor_name": self.name,
            "pretrained": bool(self.pretrained),
            "backbone": self.description,
            "extractor": self.fingerprint,
            "layer": self.layer,
            "kind": self.kind,
            "feature_dim": self.dim,
            "cutoff": float(self.cutoff),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @staticmethod
    def _frozen(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
        model = model.to(device=device, dtype=dtype).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model


@dataclass(frozen=True)
class Backbone:
    """One registered backbone: where its adapter lives and what its MODEL part means."""

    name: str
    module: str  # fastcsi.extractors.<module>, imported on use
    model: str  # "required", "optional" or "none": the MODEL of NAME:MODEL
    model_help: str
    extra: str | None  # the pip extra that installs its package (None: a core dependency)


BACKBONES = {
    b.name: b
    for b in (
        Backbone("gemnet-oc", "gemnet_oc", "required", "a GemNet-OC checkpoint file (JMP, fairchem or fastcsi)", None),
        Backbone("gemnet-oc-random", "gemnet_oc", "optional", "a GemNet-OC config name (default gemnet-oc-tiny)",
                 None),
        Backbone("sevennet-0", "sevennet", "none", "", None),
        Backbone("chgnet", "chgnet", "optional", "a CHGNet version shipped in the chgnet wheel (default 0.3.0)",
                 "chgnet"),
        Backbone("fairchem", "fairchem", "required",
                 "a fairchem eSEN or UMA checkpoint file, with :TASK for a UMA model (e.g. FILE:omat)", "fairchem"),
    )
}


def parse_spec(spec: str) -> tuple[Backbone, str | None]:
    """``"NAME[:MODEL]"`` -> (registered backbone, MODEL or None), refusing unknown names and a
    missing or unexpected MODEL in one sentence."""
    text = str(spec).strip()
    name, _, model = text.partition(":")
    name = name.strip().lower()
    model = model.strip() or None
    if name not in BACKBONES:
        raise FastCSIError(f"--backbone {spec!r}: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    backbone = BACKBONES[name]
    if backbone.model == "required" and model is None:
        raise FastCSIError(f"--backbone {spec!r}: give {backbone.model_help} as {name}:MODEL")
    if backbone.model == "none" and model is not None:
        raise FastCSIError(f"--backbone {spec!r}: {name} takes no model part (its weights ship with its package)")
    return backbone, model


def default_backbone() -> str:
    """The spec used when no backbone option is given: $FASTCSI_BACKBONE, else the pretrained default."""
    return os.environ.get(DEFAULT_BACKBONE_ENV) or DEFAULT_BACKBONE


def import_optional(package: str, backbone: Backbone):
    """Import a foreign model package, or one line saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        how = f'pip install "fastcsi[{backbone.extra}]"' if backbone.extra else f"pip install {package}"
        raise FastCSIError(f"--backbone {backbone.name}: the {package} package is not importable ({exc}); "
                           f"install it with {how}") from None


def build_extractor(spec: str, *, layer: str = "final", kind: str = "node", device="cpu", dtype: str = "float32",
                    **options) -> FeatureExtractor:
    """The extractor of backbone ``spec`` (``NAME[:MODEL]``), frozen on ``device`` in ``dtype``.
    ``options`` are the backbone's own (GemNet-OC: ``base``, ``weights``)."""
    backbone, model = parse_spec(spec)
    gemnet_options = {k: v for k, v in options.items() if v is not None and not (k == "weights" and v == "raw")}
    if backbone.name != "gemnet-oc":
        if gemnet_options:
            raise FastCSIError(f"--base / --weights apply to GemNet-OC checkpoint files, not to --backbone {spec}")
        options = {}
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
    if torch_dtype is None:
        raise FastCSIError(f"--dtype {dtype!r}: choose float32 or float64")
    adapter = importlib.import_module(f"fastcsi.extractors.{backbone.module}")
    return adapter.load(backbone, model, layer=layer, kind=kind, device=torch.device(device), dtype=torch_dtype,
                        **options)


def state_fingerprint(digest, module: torch.nn.Module) -> None:
    """Feed every weight and buffer of ``module`` into ``digest`` (the hashing GemNet-OC's fingerprint uses)."""
    from fastcsi.model.features import hash_state

    hash_state(digest, module)


def timed_forward(profiler, build_graph, run_model):
    """``run_model(build_graph())`` under inference_mode, with the profiler's exclusive ``graph``
    and ``model`` stages when a profiler is on."""
    with torch.inference_mode():
        if profiler is None or not profiler.enabled:
            return run_model(build_graph())
        with profiler.stage("graph"):
            graph = build_graph()
        with profiler.stage("model"):
            return run_model(graph)


__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "Backbone", "ExtractorBase", "FeatureExtractor", "build_extractor",
           "default_backbone", "parse_spec", "state_fingerprint"]
