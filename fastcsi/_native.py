"""The Python face of the compiled CPU kernels (``fastcsi._C``, built from ``csrc/``).

Importing this module never fails: when the extension was not built, ``native`` is None and
``NATIVE_ERROR`` says why, so dispatchers can fall back to a reference implementation with a warning.
"""
from __future__ import annotations

try:
    from fastcsi import _C as native  # type: ignore[attr-defined]

    NATIVE_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the build
    native = None
    NATIVE_ERROR = f"fastcsi._C is not built ({exc}); reinstall with `pip install -e .`"


def has(symbol: str) -> bool:
    """True when the extension is loaded and exports ``symbol``."""
    return native is not None and hasattr(native, symbol)
