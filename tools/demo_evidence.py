"""Does CSI-guided pretraining help on the demo data? The issue-8 evidence, over several seeds.

For each seed: pretrain gemnet-oc-tiny on the demo upstream closest to ``downstream_md`` by CSI and
on the farthest one (same budget N x E), then fine-tune each, and a from-scratch model, on
``downstream_md`` with the same split, budget and seed. The closest/farthest pair comes from a
``fastcsi select`` run of the four demo upstreams (run here first: 100 structures, seed 0, unless --upstreams names
two files). Prints a table of test MAE per seed plus mean and std, and writes ``evidence.json``.

    python tools/demo_evidence.py [--seeds 0,1,2] [--all] [--out runs/evidence] [--threads 1]

``--all`` also pretrains on the middle-ranked upstreams and reports, per seed, the Spearman rank
correlation between CSI and the fine-tuned test force MAE (``fastcsi report``'s question).

Minutes per seed on one CPU core; the numbers show the pipeline's effect at toy scale, not the
paper's effect sizes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fastcsi.data.demo import demo_downstream, demo_upstreams
from fastcsi.pipeline import SelectSettings, run_select
from fastcsi.train.config import PRETRAIN_DEFAULTS, recipe_for
from fastcsi.train.finetune import FinetuneSettings, run_finetune
from fastcsi.train.pretrain import PretrainSettings, run_pretrain
from fastcsi.train.report import build_report
from fastcsi.utils import atomic_write, versions

PRETRAIN = dict(samples=150, epochs=4, batch_size=8, lr=2e-3)
FINETUNE = dict(split="60,40,150", epochs=10, batch_size=4, lr=2e-3)
MODEL = "gemnet-oc-tiny"


def quiet(*_args, **_kwargs):
    pass


def closest_and_farthest(downstream: Path, upstreams: list, outdir: Path) -> tuple:
    result = run_select(downstream, upstreams, SelectSettings(samples=100), outdir=outdir, progress=False)
    ranking = [row["upstream"] for row in result["ranking"]]
    return Path(ranking[0]), Path(ranking[-1]), result["ranking"]


def pretrain(upstream: Path, seed: int, rundir: Path, threads: int) -> Path:
    cfg = PRETRAIN_DEFAULTS.replace(seed=seed, max_threads=threads, batch_size=PRETRAIN["batch_size"],
                                    lr=PRETRAIN["lr"], epochs=PRETRAIN["epochs"])
    run_pretrain(PretrainSettings(data=[str(upstream)], samples=PRETRAIN["samples"], epochs=PRETRAIN["epochs"],
                                  model=MODEL, rundir=str(rundir), train=cfg, device="cpu", progress=False),
                 log=quiet)
    return rundir


def finetune(pretrained: str, downstream: Path, seed: int, rundir: Path, threads: int) -> dict:
    recipe = recipe_for(None, ["energy", "forces"])
    cfg = recipe.train.replace(seed=seed, max_threads=threads, epochs=FINETUNE["epochs"],
                               batch_size=FINETUNE["batch_size"], lr=FINETUNE["lr"], early_stopping_patience=0)
    out = run_finetune(FinetuneSettings(pretrained=pretrained, data=str(downstream), split=FINETUNE["split"],
                                        model=MODEL, forces="direct", rundir=str(rundir), train=cfg,
                                        device="cpu", progress=False), log=quiet)
    return out["test_mae"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/evidence")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--upstreams", default=None, help="CLOSEST,FARTHEST (skip the select run)")
    parser.add_argument("--all", action="store_true",
                        help="also pretrain on the middle-ranked upstreams; report Spearman(CSI, force MAE)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    downstream = Path(demo_downstream("downstream_md"))
    if args.upstreams:
        closest, farthest = (Path(p) for p in args.upstreams.split(","))
        ranking = None
    else:
        closest, farthest, ranking = closest_and_farthest(downstream, list(demo_upstreams()),
                                                          out / "select")
    print(f"closest upstream {closest.name}, farthest {farthest.name}", flush=True)
    backbones = {"closest": closest, "farthest": farthest, "none": None}
    middle = []
    if args.all and ranking:
        middle = [Path(r["upstream"]) for r in ranking[1:-1]]
        backbones = {"closest": closest, **{f"rank{i + 2}": p for i, p in enumerate(middle)},
                     "farthest": farthest, "none": None}
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        row = {"seed": seed}
        for label, upstream in backbones.items():
            if upstream is None:
                source = "none"
            else:
                source = str(pretrain(upstream, seed, out / f"pre_{label}_s{seed}", args.threads))
            row[label] = finetune(source, downstream, seed, out / f"ft_{label}_s{seed}", args.threads)
        if ranking and len(backbones) > 3:
            # Does CSI rank the upstreams like their fine-tuned force error does? (fastcsi report)
            report = build_report(out / "select", [out / f"ft_{k}_s{seed}" for k in backbones if k != "none"],
                                  metric="forces")
            row["spearman"] = report["spearman"]["rho"]
        rows.append(row)
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{k} forces {row[k]['forces']:.1f} meV/Å" for k in backbones)
            + (f"; Spearman(CSI, force MAE) {row['spearman']:+.2f}" if "spearman" in row else ""), flush=True)

    lines = ["| seed | " + " | ".join(f"{k}: forces (meV/Å) / energy (meV)" for k in backbones) + " |",
             "|---|" + "---:|" * len(backbones)]
    for row in rows:
        lines.append(f"| {row['seed']} | " + " | ".join(
            f"{row[k]['forces']:.1f} / {row[k]['energy']:.1f}" for k in backbones) + " |")
    summary = {}
    for k in backbones:
        for target in ("forces", "energy"):
            values = [row[k][target] for row in rows]
            summary[f"{k}.{target}"] = {"mean": statistics.fmean(values),
                                        "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    lines.append("| mean ± std | " + " | ".join(
        f"{summary[k + '.forces']['mean']:.1f} ± {summary[k + '.forces']['std']:.1f} / "
        f"{summary[k + '.energy']['mean']:.1f} ± {summary[k + '.energy']['std']:.1f}" for k in backbones) + " |")
    rhos = [row["spearman"] for row in rows if row.get("spearman") is not None]
    if rhos:
        print(f"Spearman(CSI, test force MAE) per seed: {', '.join(f'{r:+.2f}' for r in rhos)}")
    wins = {"closest<none": sum(r["closest"]["forces"] < r["none"]["forces"] for r in rows),
            "closest<farthest": sum(r["closest"]["forces"] < r["farthest"]["forces"] for r in rows)}
    table = "\n".join(lines)
    print(table)
    print(f"force MAE: closest beats scratch in {wins['closest<none']}/{len(rows)} seeds, "
          f"beats farthest in {wins['closest<farthest']}/{len(rows)}")
    with atomic_write(out / "evidence.json") as fh:
        json.dump({"closest": str(closest), "farthest": str(farthest), "ranking": ranking, "rows": rows,
                   "summary": summary, "wins": wins, "spearman": rhos, "pretrain": PRETRAIN, "finetune": FINETUNE,
                   "model": MODEL, "threads": args.threads, "versions": versions()}, fh, indent=1)


if __name__ == "__main__":
    main()
