"""One place that decides which kernel backend runs an op.

Every op's dispatcher takes ``backend="auto"|"ref"|"cpu"|"triton"|"cuda"`` and calls
:func:`resolve_backend`. An explicit backend that cannot run is an error; ``auto`` picks the fastest
available one for the tensor's device and falls back to the reference only with a warning.
"""
from __future__ import annotations

import functools
import os
import warnings

from fastcsi.errors import FastCSIError

BACKENDS = ("auto", "ref", "cpu", "triton", "cuda")


class FallbackWarning(RuntimeWarning):
    """A faster kernel was wanted but the reference ran instead."""


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors, used by CI)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_usable(device) -> bool:
    """Triton can run on this device: a CUDA device, or any device under the interpreter."""
    if not triton_available():
        return False
    if triton_interpret():
        return True
    return str(device).startswith("cuda")


def resolve_backend(op: str, backend: str, device, available: dict[str, bool], auto_order) -> str:
    """Return the backend to run.

    ``available`` maps backend name -> whether it can run here for these inputs; ``auto_order`` is
    the preference list for ``auto`` (without "ref"). Unknown names and unavailable explicit
    choices raise :class:`FastCSIError`.
    """
    if backend not in BACKENDS:
        raise FastCSIError(f"{op}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ref":
        return "ref"
    if backend != "auto":
        if not available.get(backend, False):
            raise FastCSIError(f"{op}: backend {backend!r} is not available on {device} here")
        return backend
    for name in auto_order:
        if available.get(name, False):
            return name
    warnings.warn(
        f"{op}: no compiled kernel available on {device}; falling back to the reference "
        "implementation (slow)",
        FallbackWarning,
        stacklevel=3,
    )
    return "ref"
