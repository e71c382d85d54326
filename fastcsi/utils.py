"""Small helpers every stage may use: atomic writes, safe torch loading and run metadata. Imports
nothing of fastcsi but its error type."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
from pathlib import Path


def _umask_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the permissions a plain open() would give.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside ``path`` for writers that want a filename (np.savez, torch.save,
    ase.io.write); rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file, and a crash leaves the old file (or none) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: some writers (np.savez, ase.io.write) pick the format from it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **kwargs):
    """Open a temp file beside ``path``; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def versions() -> dict:
    """Versions of the software that shaped a result, recorded in every output file."""
    import numpy

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": numpy.__version__}
    from fastcsi import __version__

    out["fastcsi"] = __version__
    try:
        import torch

        # plain str: torch.__version__ is a TorchVersion, which weights_only loading rejects
        out["torch"] = str(torch.__version__)
        out["cuda"] = None if torch.version.cuda is None else str(torch.version.cuda)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out


def torch_load_or_one_line(path, what: str, **load_kwargs):
    """``torch.load(path, map_location="cpu", **load_kwargs)`` with torch's warnings silenced and every
    failure as one :class:`~fastcsi.errors.FastCSIError` line naming the file: the one place that turns
    a missing, unreadable, truncated or refused torch file into a user's error."""
    import pickle
    import warnings

    import torch

    from fastcsi.errors import FastCSIError

    path = Path(path)
    if not path.is_file():
        raise FastCSIError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's UserWarnings would print before our one line
            return torch.load(path, map_location="cpu", **load_kwargs)
    except PermissionError:
        raise FastCSIError(f"{path}: {what} is not readable (permission denied)") from None
    except RecursionError:
        raise FastCSIError(f"{path}: not a readable {what} (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or corrupt files are the user's input
        if isinstance(exc, pickle.UnpicklingError) and load_kwargs.get("weights_only"):
            raise FastCSIError(f"{path}: {what} holds objects other than tensors and plain containers; "
                               "fastcsi will not unpickle them") from None
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise FastCSIError(f"{path}: not a readable {what} (truncated or not a torch file; {detail})") from None


def load_torch_file(path, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` on CPU, with every failure as one
    :class:`~fastcsi.errors.FastCSIError` line: a file that holds anything but tensors and plain
    containers is refused before any of its code can run (torch's own advice to retry with
    ``weights_only=False`` is the opposite of what a user should do, so it is not quoted). For the
    files fastcsi writes; other programs' checkpoints (JMP, fairchem) are read with
    :func:`fastcsi.safe_pickle.load_torch_foreign`."""
    return torch_load_or_one_line(path, what, weights_only=True)


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path, what: str, expected_format: str | None = None) -> dict:
    """A JSON object written by fastcsi (``what`` names it in errors), with ``"format"`` equal to
    ``expected_format`` when given; every failure as one :class:`~fastcsi.errors.FastCSIError` line."""
    import json

    from fastcsi.errors import FastCSIError

    path = Path(path)
    if not path.is_file():
        raise FastCSIError(f"{path}: no such {what}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FastCSIError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); not a {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FastCSIError(f"{path}: not a readable {what} ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise FastCSIError(f"{path}: not a {what}: JSON {type(payload).__name__}, not an object")
    if expected_format is not None and payload.get("format") != expected_format:
        raise FastCSIError(f"{path}: not a {what} (format {payload.get('format')!r}, expected {expected_format})")
    return payload


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only: no display is needed or opened)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_allocator_tuned: bool | None = None


def allocator_tuned() -> bool:
    """Whether ``tune_allocator`` put its settings in force in this process."""
    return bool(_allocator_tuned)


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30, top_pad: int = 64 << 20) -> bool:
    """Keep freed memory for reuse instead of handing it back to the OS (glibc only; the CLI calls it).

    glibc serves large blocks with mmap and unmaps them on free, and trims the heap top, so every
    fresh (E, 512) activation of a GemNet-OC step is new memory whose pages fault in and get zeroed
    again: ~26k page faults per feature-extraction batch and ~56k per training step for GemNet-OC-S
    on 32 molecules, 5-7% of the time. With large blocks served from the heap and freed memory kept
    (up to ``trim_threshold`` at the top), they drop to a few thousand. The cost: the process keeps
    up to ``trim_threshold`` bytes of freed memory. ``FASTCSI_MALLOC_TUNING=0`` turns it off;
    returns whether the settings are in force (False off glibc). Idempotent."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("FASTCSI_MALLOC_TUNING", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # the mmap threshold first: setting any of these turns glibc's adaptive threshold off
    _allocator_tuned = all(
        libc.mallopt(key, int(value)) == 1
        for key, value in ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
                           (_M_TOP_PAD, top_pad))
    )
    return _allocator_tuned
