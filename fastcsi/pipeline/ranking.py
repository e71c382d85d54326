"""The result of a CSI selection as typed objects: :class:`Ranking` of :class:`RankingEntry`.

``csi.json`` holds the same content as plain JSON (``Ranking.to_dict()``); ``Ranking.from_dict``
reads it back, so a saved run and a fresh one are used the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fastcsi.errors import FastCSIError


@dataclass(frozen=True)
class RankingEntry:
    """One upstream: its CSI to the downstream (mean over seeds), the terms and counts behind it."""

    rank: int
    upstream: str
    csi: float
    csi_std: float | None  # None: every seed drew the same structures, the spread is not measured
    mean_term: float
    trace_term: float
    n_structures: int
    n_atoms: int
    per_seed: list = field(default_factory=list)
    per_element: dict = field(default_factory=dict)
    all_structures_used: bool = False  # the upstream was used whole: more --samples adds nothing


@dataclass(frozen=True)
class Ranking:
    """Upstreams ordered closest first, with the downstream's counts, the adequacy checks, the
    warnings and the settings that produced them."""

    entries: list
    downstream: dict
    adequacy: dict
    warnings: list
    settings: dict
    mix: dict | None = None
    outdir: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, result: dict, outdir=None) -> "Ranking":
        try:
            entries = [RankingEntry(rank=int(r["rank"]), upstream=str(r["upstream"]), csi=float(r["csi"]),
                                    csi_std=None if r["csi_std"] is None else float(r["csi_std"]),
                                    mean_term=float(r["mean_term"]),
                                    trace_term=float(r["trace_term"]), n_structures=int(r["n_structures"]),
                                    n_atoms=int(r["n_atoms"]), per_seed=list(r.get("per_seed", [])),
                                    per_element=dict(r.get("per_element", {})),
                                    all_structures_used=bool(r.get("all_structures_used", False)))
                       for r in result["ranking"]]
            return cls(entries=entries, downstream=dict(result["downstream"]), adequacy=dict(result["adequacy"]),
                       warnings=list(result.get("warnings", [])), settings=dict(result.get("settings", {})),
                       mix=result.get("mix"), outdir=None if outdir is None else str(outdir), raw=result)
        except (KeyError, TypeError, ValueError) as exc:
            raise FastCSIError(f"not a fastcsi select result (missing or malformed {exc})") from None

    @classmethod
    def load(cls, path) -> "Ranking":
        """Read ``csi.json`` (or the run directory holding it)."""
        path = Path(path)
        file = path / "csi.json" if path.is_dir() else path
        try:
            return cls.from_dict(json.loads(file.read_text()), outdir=file.parent)
        except (OSError, ValueError) as exc:
            raise FastCSIError(f"{file}: not a readable select result ({type(exc).__name__})") from None

    @property
    def closest(self) -> RankingEntry:
        return self.entries[0]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def to_dict(self) -> dict:
        """The ``csi.json`` content."""
        return self.raw
