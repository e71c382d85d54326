"""Train the small default backbone that ``fastcsi select`` uses when no checkpoint is given.

gemnet-oc-tiny pretrained on energy and forces of all four bundled demo upstreams (equal shares,
class-balanced within each), seeded, one thread (initialisation and summation order depend on the
thread count), then released head-less as ``fastcsi/model/default/backbone.pt`` (< 2 MB) with the
settings, data fingerprints and versions in its ``extra``.

    python tools/train_default_backbone.py [--data-dir DIR] [--samples 600] [--epochs 6] [--out PATH]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from fastcsi.data.demo import demo_upstreams
from fastcsi.train.config import PRETRAIN_DEFAULTS
from fastcsi.train.pretrain import PretrainSettings, run_pretrain
from fastcsi.utils import atomic_path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fastcsi" / "model" / "default" / "backbone.pt"
MAX_BYTES = 2 * 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="demo data folder (default: the installed one)")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = [str(p) for p in demo_upstreams(args.data_dir)]
    missing = [p for p in data if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"demo data missing: {', '.join(missing)} (python tools/make_demo_data.py --out DIR)")
    with tempfile.TemporaryDirectory() as tmp:
        settings = PretrainSettings(
            data=data, samples=args.samples, epochs=args.epochs, mix="balanced", sampling="balanced",
            model="gemnet-oc-tiny", rundir=tmp, device="cpu",
            train=PRETRAIN_DEFAULTS.replace(epochs=args.epochs, batch_size=8, lr=1e-3, seed=args.seed, max_threads=1),
        )
        run_pretrain(settings)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as target:
            shutil.copyfile(Path(tmp) / "backbone.pt", target)
    size = out.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{out} is {size / 2**20:.2f} MiB, above the 2 MiB limit")
    print(f"wrote {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
