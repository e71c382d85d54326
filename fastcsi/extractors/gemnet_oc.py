"""GemNet-OC as a feature extractor: any checkpoint ``fastcsi.model.load_backbone`` reads, or a seeded
random initialisation (``gemnet-oc-random``) for tests and speed work.

Layers ``final`` / ``blockK`` and kinds ``node`` / ``edge`` are those of :mod:`fastcsi.model.features`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastcsi.errors import FastCSIError
from fastcsi.extractors import ExtractorBase

DEFAULT_RANDOM_CONFIG = "gemnet-oc-tiny"
DEFAULT_INIT_SEED = 0


class GemNetOCExtractor(ExtractorBase):
    """A GemNet-OC backbone frozen for feature extraction, with everything that identifies its features."""

    def __init__(self, model, layer, kind, device, dtype, fingerprint, dim, description, name="gemnet-oc",
                 pretrained=True):
        self.model = model
        self.layer = layer
        self.kind = kind
        self.device = torch.device(device)
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.dim = dim
        self.description = description  # where the weights came from (checkpoint path or the seeded init)
        self.name = name
        self.pretrained = pretrained
        self.elements = frozenset(range(1, int(model.num_elements) + 1))
        self.cutoff = float(model.hparams["cutoff"])

    def coverage_text(self) -> str:
        return f"GemNet-OC embeds atomic numbers 1..{self.model.num_elements} only"

    def describe(self) -> dict:
        out = super().describe()
        info = getattr(self.model, "load_info", None)
        if info:  # read from a file: which weight set, where its settings came from, what was left out
            out.update(weights=info.get("weights", "raw"), hparams_from=info.get("hparams"),
                       graph_settings=info.get("graph_settings"), dropped_keys=dict(info.get("dropped", {})))
        return out

    def features(self, batch, profiler=None) -> torch.Tensor:
        """(N_atoms, dim) per-atom features of ``batch`` (already on the device). With a
        ``profiler``, graph construction and the rest of the forward pass are timed as the separate
        stages ``graph`` and ``model``."""
        from fastcsi.model import extract_features

        if profiler is None or not profiler.enabled:
            with torch.inference_mode():
                return extract_features(self.model, batch, layer=self.layer, kind=self.kind)
        graph_before = profiler.stages.get("graph", {}).get("total_s", 0.0)
        with profiler.stage("model"), self.model.timing_graphs(lambda: profiler.stage("graph")), \
                torch.inference_mode():
            features = extract_features(self.model, batch, layer=self.layer, kind=self.kind)
        # Keep the stages exclusive: the graph time measured inside the forward pass is not model time.
        profiler.add_time("model", -(profiler.stages.get("graph", {}).get("total_s", 0.0) - graph_before), calls=0)
        return features


def random_init(config: str = DEFAULT_RANDOM_CONFIG):
    """The seeded (seed 0) random initialisation of ``config``, identical on every machine."""
    from fastcsi.model import CONFIGS, build_model

    if config not in CONFIGS:
        raise FastCSIError(f"--backbone gemnet-oc-random:{config}: unknown config; choose one of {', '.join(CONFIGS)}")
    # fork_rng keeps the caller's global RNG state untouched by the seeded initialisation; one
    # thread because the initialisers' roundoff (and so the extractor fingerprint) otherwise
    # depends on the thread count, and torchrun ranks run with fewer threads than a single process.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(DEFAULT_INIT_SEED)
            return build_model(config)
    finally:
        torch.set_num_threads(threads)


def load(backbone, model_part, *, layer, kind, device, dtype, base=None, weights="raw"):
    """The GemNet-OC extractor of ``gemnet-oc:FILE`` or ``gemnet-oc-random[:CONFIG]``."""
    from fastcsi.model import extractor_fingerprint, feature_dim, load_backbone

    pretrained = backbone.name == "gemnet-oc"
    if pretrained:
        path = Path(model_part)
        if not path.exists():
            raise FastCSIError(f"{path}: checkpoint file does not exist")
        options = {"base": base} if base else {}
        if weights != "raw":  # only asked of load_backbone when it is not its default
            options["weights"] = weights
        model = load_backbone(path, **options)
        description = str(path)
        name = "gemnet-oc"
    else:
        config = model_part or DEFAULT_RANDOM_CONFIG
        model = random_init(config)
        description = f"{config}, random init seed {DEFAULT_INIT_SEED} (untrained)"
        name = "gemnet-oc-random" if config == DEFAULT_RANDOM_CONFIG else f"gemnet-oc-random:{config}"
    try:
        # Fingerprint the weights as stored (before any dtype cast): it names the backbone, while
        # the compute dtype is recorded beside it as a setting of its own.
        fingerprint = extractor_fingerprint(model, layer, kind)
        dim = int(feature_dim(model, layer, kind))
    except (KeyError, ValueError) as exc:
        raise FastCSIError(f"--layer {layer!r} / --kind {kind!r}: {exc}") from None
    return GemNetOCExtractor(ExtractorBase._frozen(model, device, dtype), layer, kind, device, dtype, fingerprint,
                             dim, description, name=name, pretrained=pretrained)
