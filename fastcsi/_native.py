"""The Python face of the compiled CPU kernels (``fastcsi._C``, built from ``csrc/``).

Importing this module never fails: when the extension was not built, ``native`` is None and
``NATIVE_ERROR`` says why, so dispatchers can fall back to a reference implementation with a warning.

Limits shared by every kernel (issue 26: no input may crash the process or make it allocate without
bound): :func:`memory_budget_bytes` is what one kernel call may allocate for its outputs and
scratch, checked before it allocates; :func:`input_errors` turns the extension's ``InputError``
(a refused input) into :class:`~fastcsi.errors.FastCSIError`, the one user-facing error type.
"""
from __future__ import annotations

import contextlib
import functools
import os

from fastcsi.errors import FastCSIError

try:
    from fastcsi import _C as native  # type: ignore[attr-defined]

    NATIVE_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the build
    native = None
    NATIVE_ERROR = f"fastcsi._C is not built ({exc}); reinstall with `pip install -e .`"


def has(symbol: str) -> bool:
    """True when the extension is loaded and exports ``symbol``."""
    return native is not None and hasattr(native, symbol)


@functools.cache
def memory_budget_bytes() -> int:
    """Bytes one kernel call may allocate: half of the memory this process can have (the machine's
    physical memory, or its cgroup's limit when lower). Half, because the caller keeps its inputs and
    usually copies or converts what the kernel returns; an allocation the OS grants by overcommit
    and then cannot back kills the process with no message, which is what this budget prevents."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - non-POSIX
        total = 16 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return max(total // 2, 1 << 26)


def device_budget_bytes(device) -> int:
    """:func:`memory_budget_bytes` for a torch ``device``: half of a CUDA device's memory, else the
    host budget."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return memory_budget_bytes()


def check_budget(needed_bytes: float, device, what: str, hint: str) -> None:
    """Raise :class:`FastCSIError` ("``what`` needs X GiB (budget Y GiB): ``hint``") when an
    allocation of ``needed_bytes`` on ``device`` would exceed :func:`device_budget_bytes`."""
    budget = device_budget_bytes(device)
    if needed_bytes > budget:
        raise FastCSIError(f"{what} needs {needed_bytes / 2**30:.3g} GiB (budget {budget / 2**30:.3g} GiB): {hint}")


@contextlib.contextmanager
def input_errors(what: str):
    """Re-raise the extension's ``InputError`` (input it refuses, before allocating for it) as
    :class:`FastCSIError` prefixed with ``what`` (e.g. ``"radius_graph"``)."""
    try:
        yield
    except ValueError as exc:
        if native is not None and isinstance(exc, getattr(native, "InputError", ())):
            raise FastCSIError(f"{what}: {exc}") from None
        raise
