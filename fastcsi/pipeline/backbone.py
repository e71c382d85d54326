"""The feature extractor behind a CSI run: which backbone, which layer, which device.

Without ``--checkpoint`` the default backbone is ``fastcsi/model/default/backbone.pt`` when the
package ships one, else a fixed-seed (seed 0) initialisation of ``gemnet-oc-tiny``. Random features
still separate chemistry: the element embedding gives every element its own direction and the
radial/angular bases make the features depend on the geometry of each atom's neighbourhood, so two
datasets with different compositions or bonding produce different feature clouds. The paper uses a
pretrained JMP GemNet-OC checkpoint; pass it with ``--checkpoint``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastcsi.errors import FastCSIError

DEFAULT_MODEL_NAME = "gemnet-oc-tiny"
# Below this many parameters a backbone's ops are too small to amortise intra-op thread
# synchronisation: more threads cost more CPU than they save, and far more wall time when other
# processes compete for the cores (docs/performance.md has the measurement).
SMALL_BACKBONE_PARAMETERS = 1_000_000
DEFAULT_INIT_SEED = 0


def default_backbone_path() -> Path:
    import fastcsi.model

    return Path(fastcsi.model.__file__).resolve().parent / "default" / "backbone.pt"


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise FastCSIError(f"--device {device!r}: not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FastCSIError(f"--device {device!r}: CUDA is not available on this machine")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    return dev


@dataclass
class Extractor:
    """A backbone frozen for feature extraction, with everything that identifies its features."""

    model: torch.nn.Module
    layer: str
    kind: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    dim: int
    description: str  # where the weights came from (checkpoint path or the seeded init)

    def check_elements(self, atomic_numbers, where: str = "") -> None:
        from fastcsi.model import check_elements

        try:
            check_elements(self.model, atomic_numbers)
        except FastCSIError as exc:
            raise FastCSIError(f"{where}: {exc}" if where else str(exc)) from None

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

    def describe(self) -> dict:
        return {
            "backbone": self.description,
            "extractor": self.fingerprint,
            "layer": self.layer,
            "kind": self.kind,
            "feature_dim": self.dim,
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def apply_thread_policy(extractor, threads: int | None) -> int:
    """Set torch's intra-op CPU threads for feature extraction and return the previous count.

    ``threads=None`` (auto): one thread for a small backbone on CPU (see SMALL_BACKBONE_PARAMETERS),
    otherwise torch's own default (OMP_NUM_THREADS, which torchrun sets per rank)."""
    previous = torch.get_num_threads()
    if threads is None:
        if extractor.device.type != "cpu":
            return previous
        n_params = sum(p.numel() for p in extractor.model.parameters())
        threads = 1 if n_params < SMALL_BACKBONE_PARAMETERS else previous
    torch.set_num_threads(int(threads))
    return previous


def load_extractor(
    checkpoint=None, layer: str = "final", kind: str = "node", device="cpu", dtype: str = "float32"
) -> Extractor:
    """Build the extractor from ``checkpoint`` (any format ``fastcsi.model.load_backbone`` reads) or
    the documented default backbone."""
    from fastcsi.model import build_model, extractor_fingerprint, feature_dim, load_backbone

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise FastCSIError(f"{path}: checkpoint file does not exist")
        model = load_backbone(path)
        description = str(path)
    elif default_backbone_path().exists():
        model = load_backbone(default_backbone_path())
        description = f"default ({default_backbone_path().name}, shipped with fastcsi)"
    else:
        # fork_rng keeps the caller's global RNG state untouched by the seeded initialisation; one
        # thread because the initialisers' roundoff (and so the extractor fingerprint) otherwise
        # depends on the thread count, and torchrun ranks run with fewer threads than a single process.
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(DEFAULT_INIT_SEED)
                model = build_model(DEFAULT_MODEL_NAME)
        finally:
            torch.set_num_threads(threads)
        description = f"default ({DEFAULT_MODEL_NAME}, random init seed {DEFAULT_INIT_SEED})"
    try:
        # Fingerprint the weights as stored (before any dtype cast): it names the backbone, while
        # the compute dtype is recorded beside it as a setting of its own.
        fingerprint = extractor_fingerprint(model, layer, kind)
        dim = int(feature_dim(model, layer, kind))
    except (KeyError, ValueError) as exc:
        raise FastCSIError(f"--layer {layer!r} / --kind {kind!r}: {exc}") from None
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    model = model.to(device=device, dtype=torch_dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Extractor(model, layer, kind, torch.device(device), torch_dtype, fingerprint, dim, description)
