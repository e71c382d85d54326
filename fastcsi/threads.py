"""One CPU thread policy for every command and the ASE calculator (``threads=`` / ``--threads``).

``auto`` gives a small model on CPU one intra-op thread: its ops are too small to amortise thread
synchronisation, and on a busy machine torch's default threads spin against the other processes
(an MD run with a tiny model went from 25 to 5 steps/s at a load average of 2.6 on 2 cores, and to
0.25 at a load average of 6). A larger model, or a GPU run, keeps torch's own default
(OMP_NUM_THREADS, which torchrun sets per rank). An integer is used as given
(``fastcsi.pipeline.settings.parse_threads`` reads the option).
"""
from __future__ import annotations

import contextlib
import os

# Below this many parameters a model's ops are too small to amortise intra-op thread
# synchronisation: more threads cost more CPU than they save, and far more wall time when other
# processes compete for the cores (docs/performance.md has the measurement).
SMALL_MODEL_PARAMETERS = 1_000_000


def threads_for(model, device, threads: int | None) -> int | None:
    """The intra-op thread count the policy gives ``model`` (a torch module) on ``device``;
    None leaves torch's setting alone."""
    if threads is not None:
        return int(threads)
    if str(device).split(":")[0] != "cpu":
        return None
    n_params = sum(p.numel() for p in model.parameters())
    return 1 if n_params < SMALL_MODEL_PARAMETERS else None


def apply_threads(model, device, threads: int | None) -> int:
    """Set torch's intra-op threads by the policy; returns the previous count (to restore)."""
    import torch

    previous = torch.get_num_threads()
    chosen = threads_for(model, device, threads)
    if chosen is not None and chosen != previous:
        torch.set_num_threads(chosen)
    return previous


@contextlib.contextmanager
def thread_policy(model, device, threads: int | None):
    """The policy for the body only (a calculator inside someone else's process leaves their
    setting as it found it)."""
    import torch

    previous = apply_threads(model, device, threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def prefer_passive_omp_wait() -> None:
    """Idle OpenMP workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the user chose.

    Spinning workers take cores from other processes and from each other when the machine is busy.
    libgomp reads the variable once, when torch loads it: only a process we own (the CLI entry point,
    before anything imports torch) can set it; a library must leave the host's process alone."""
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
