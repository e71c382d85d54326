"""Small helpers every stage may use: atomic writes and run metadata. Imports nothing of fastcsi."""
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

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out
