"""Benchmark: per-atom features of every installed extractor, batched, vs each package's own path.

Cases (one run: every extractor on the SAME inputs, so their atoms/s compare directly):
  molecules  rattled small molecules (ethanol, benzene, water, ...), no cell
  slab       rattled Cu(111) slabs, 4x4 in-plane, 4 layers, periodic in-plane, 8 Å vacuum
for each extractor that loads here: gemnet-oc-random (gemnet-oc-tiny, the suite's tiny backbone),
sevennet-0 and chgnet (when the chgnet extra is installed). float32 throughout.
Reference: the package's own per-structure path (SevenNet: ``unlabeled_atoms_to_graph`` + one forward
per structure; CHGNet: its graph converter + one forward per structure; GemNet-OC: ours, one
structure per call). Error: max |features - reference| / max |reference|, tolerance 1e-5 (float32).
Methods (timed round-robin by bench/harness.py, atoms/s):
  batched (fastcsi)       ours: ``extractor.features(batch)``: one forward pass per batch, under
                          inference_mode; SevenNet and GemNet-OC on fastcsi's batched radius graph,
                          CHGNet on its own per-structure graphs (its bond/angle graph is its own)
  own per-structure path  baseline: the package's path above

    python bench/extractors.py [--quick] [--threads N] [--out FILE.json]
"""
from __future__ import annotations

import sys

from fastcsi._bench.gemnet_oc import rattled_molecules
from fastcsi._bench.harness import Case, Method, relative_error, script_main

KERNEL = "extractors"
TOLERANCE = 1e-5
EXTRACTORS = ("gemnet-oc-random", "sevennet-0", "chgnet")


def slabs(n: int):
    from ase.build import fcc111

    frames = []
    for i in range(n):
        slab = fcc111("Cu", (4, 4, 4), vacuum=8.0)
        slab.pbc = (True, True, False)
        slab.rattle(0.05, seed=i)
        frames.append(slab)
    return frames


def _loaded(spec: str):
    from fastcsi.errors import FastCSIError
    from fastcsi.pipeline.backbone import load_extractor

    try:
        return load_extractor(spec), None
    except FastCSIError as exc:
        return None, str(exc)


def _own_path(extractor):
    """The package's own per-structure path of ``extractor`` (list of ase.Atoms -> features)."""
    import torch

    if hasattr(extractor, "features_per_structure"):
        return lambda frames: torch.cat(extractor.features_per_structure(frames))
    from fastcsi.data import batch_from_atoms

    return lambda frames: torch.cat([extractor.features(batch_from_atoms([a])) for a in frames])


def cases(quick: bool = True, device: str = "cpu", sizes=None, extractors=EXTRACTORS):
    """``sizes``: (molecules, slabs) instead of the mode's; ``extractors``: the specs to run."""
    import torch

    from fastcsi.data import batch_from_atoms

    if device != "cpu":
        raise SystemExit("bench/extractors.py: CPU only (the packages' own paths build graphs on the CPU)")
    n_mol, n_slab = sizes or ((32, 2) if quick else (128, 8))
    inputs = {"molecules": rattled_molecules(n_mol), "slab": slabs(n_slab)}
    for spec in extractors:
        extractor, why = _loaded(spec)
        for name, frames in inputs.items():
            n_atoms = sum(len(a) for a in frames)
            title = f"{spec}, {len(frames)} {name if name == 'molecules' else 'Cu(111) slabs'}, float32"
            if extractor is None:
                yield Case(KERNEL, title, len(frames), "structures", n_atoms, "atoms", lambda: None,
                           lambda _: None, relative_error,
                           [Method("batched (fastcsi)", "ours", skip=why), Method("own per-structure path",
                                                                                 "baseline", skip=why)])
                continue
            own = _own_path(extractor)

            def batched(frames, extractor=extractor):
                return extractor.features(batch_from_atoms(frames))

            def reference(frames, own=own):
                with torch.inference_mode():
                    return own(frames)

            methods = [Method("batched (fastcsi)", "ours", batched, "float32", TOLERANCE),
                       Method("own per-structure path", "baseline", reference, "float32", TOLERANCE)]
            yield Case(KERNEL, title, len(frames), "structures", n_atoms, "atoms", lambda frames=frames: frames,
                       reference, relative_error, methods, repeats=3 if quick else 5)


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
