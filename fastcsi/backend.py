"""One place that decides which kernel backend runs an op.

Every op's dispatcher takes ``backend="auto"|"ref"|"cpu"|"triton"|"cuda"`` and calls
:func:`resolve_backend`. An explicit backend that cannot run is an error; ``auto`` picks the fastest
available one for the tensor's device and falls back to the reference only with a warning.

:func:`override` switches paths for everything run inside it (a whole model, a pipeline, a
benchmark row) without reaching into modules: ``with override(radius="ref", interaction="triton",
fused=False): model(batch)``. Dispatchers see the override only where their ``backend`` argument is
"auto"; an explicit argument still wins.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from types import MappingProxyType

from fastcsi.errors import FastCSIError

BACKENDS = ("auto", "ref", "cpu", "triton", "cuda")
# The kernel op families (one dispatcher each); the keys ``override`` takes besides ``fused``.
OPS = ("radius", "gemnet_indices", "covariance", "frechet", "interaction", "activation")

# A context variable rather than module globals: an override is undone exactly when its block
# ends, nests, and does not leak into other threads or asyncio tasks.
_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar("fastcsi_backend_overrides",
                                                            default=MappingProxyType({}))


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


@functools.lru_cache(maxsize=None)  # dispatchers pass a handful of constant names, on hot paths
def family_of(op: str) -> str | None:
    """The op family (an entry of :data:`OPS`) an op name belongs to: a dotted component equal to
    the family or starting with ``<family>_`` ("radius_graph" -> radius, "frechet_distance" ->
    frechet, "gemnet_oc.interaction_bilinear" -> interaction, "activation.silu" -> activation)."""
    for part in op.split("."):
        for family in OPS:
            if part == family or part.startswith(family + "_"):
                return family
    return None


@contextlib.contextmanager
def override(*, fused: bool | None = None, **backends: str):
    """Run the block with other kernel paths: ``backends`` maps op families (:data:`OPS`) to a
    backend name, used wherever that op is called with ``backend="auto"`` (an explicit argument
    wins); an overridden backend that cannot run raises like an explicit one. ``fused=False`` runs
    the model's plain (unfused, JMP-shaped) layer arithmetic instead of its fused paths. Overrides
    nest (inner values win, the outer ones come back when the block ends) and are per thread."""
    unknown = sorted(set(backends) - set(OPS))
    if unknown:
        raise FastCSIError(f"override: unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    for op, name in backends.items():
        if name not in BACKENDS:
            raise FastCSIError(f"override: {op}={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    values = dict(_OVERRIDES.get())
    values.update(backends)
    if fused is not None:
        values["fused"] = bool(fused)
    token = _OVERRIDES.set(MappingProxyType(values))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def requested(op: str, backend: str = "auto") -> str:
    """The backend asked for: ``backend`` itself unless it is "auto", else the :func:`override` of
    the op's family ("auto" when none)."""
    if backend != "auto":
        return backend
    family = family_of(op)
    return _OVERRIDES.get().get(family, "auto") if family else "auto"


def fused_enabled() -> bool:
    """Whether the model's fused layer paths run (see :func:`override`, ``fused``)."""
    return _OVERRIDES.get().get("fused", True)


def resolve_backend(op: str, backend: str, device, available: dict[str, bool], auto_order,
                    reasons: dict[str, str] | None = None) -> str:
    """Return the backend to run.

    ``backend`` "auto" first takes the :func:`override` of the op's family, if any. ``available``
    maps backend name -> whether it can run here for these inputs; ``auto_order`` is the preference
    list for ``auto``: a "ref" in it means the reference is the intended path for these inputs (no
    warning), otherwise running out of choices falls back to the reference with a
    :class:`FallbackWarning`. Unknown names and unavailable explicit choices raise
    :class:`FastCSIError`; ``reasons`` (backend -> why it cannot run) goes into that message.
    """
    if backend not in BACKENDS:
        raise FastCSIError(f"{op}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    backend = requested(op, backend)
    if backend == "ref":
        return "ref"
    if backend != "auto":
        if not available.get(backend, False):
            why = (reasons or {}).get(backend)
            raise FastCSIError(f"{op}: backend {backend!r} is not available on {device} here"
                               + (f" ({why})" if why else ""))
        return backend
    for name in auto_order:
        if name == "ref" or available.get(name, False):
            return name
    warnings.warn(
        f"{op}: no compiled kernel available on {device}; falling back to the reference "
        "implementation (slow)",
        FallbackWarning,
        stacklevel=3,
    )
    return "ref"
