"""Does the CSI-optimal mixture pay off? The issue-15 evidence on the bundled demo data.

For ``downstream_md``, at equal pretraining budget N x E and equal fine-tuning, over several seeds,
the test MAE after pretraining gemnet-oc-tiny on

  (a) the CSI-optimal dataset mixture        (``--mix csi:select_dataset/mix.json``)
  (b) the CSI-optimal class-level selection  (``--mix csi:select_class/mix.json``)
  (c) the best single upstream by CSI
  (d) the balanced and (e) the temperature:2 mixture of all four upstreams
  (f) no pretraining (from scratch).

The mixtures come from ``fastcsi select --optimize-mix`` runs on all structures of every dataset
(seed 0). Every pretraining arm draws fresh with the run's seed (class-balanced inside each
component); fine-tuning uses the same split, budget and seed for every arm. Reported: per-arm mean
and std of the test force and energy MAE, paired wins of (a)/(b) over the others, the analytic CSI
of each arm's mixture next to its MAE with Spearman's rho, and the time ``--optimize-mix`` adds to
``select`` (two fresh runs without cache, plain and class level).

    python tools/mix_evidence.py [--seeds 0,1,2,3,4] [--out runs/mix_evidence] [--threads 1]

Toy scale (random-init tiny backbone as the feature extractor, 150 structures x 4 epochs): the
numbers test the pipeline's claim at demo scale, not the paper's effect sizes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from demo_evidence import FINETUNE, MODEL, PRETRAIN, finetune, quiet  # noqa: E402

from fastcsi.data.demo import demo_downstream, demo_upstreams  # noqa: E402
from fastcsi.pipeline import SelectSettings, run_select  # noqa: E402
from fastcsi.pipeline.mix import MixSettings  # noqa: E402
from fastcsi.train.config import PRETRAIN_DEFAULTS  # noqa: E402
from fastcsi.train.pretrain import PretrainSettings, run_pretrain  # noqa: E402
from fastcsi.utils import atomic_write, versions  # noqa: E402

ARMS = ("a_csi_dataset", "b_csi_class", "c_best_single", "d_balanced", "e_temperature2", "f_scratch")


def select(downstream, upstreams, outdir: Path, threads: int, mix=None, use_cache=True) -> dict:
    settings = SelectSettings(samples=None, seeds=(0,), threads=threads)
    return run_select(downstream, upstreams, settings, outdir=outdir, progress=False, mix=mix, use_cache=use_cache)


def pretrain(data: list, mix: str, seed: int, rundir: Path, threads: int) -> Path:
    cfg = PRETRAIN_DEFAULTS.replace(seed=seed, max_threads=threads, batch_size=PRETRAIN["batch_size"],
                                    lr=PRETRAIN["lr"], epochs=PRETRAIN["epochs"])
    run_pretrain(PretrainSettings(data=[str(p) for p in data], samples=PRETRAIN["samples"], epochs=PRETRAIN["epochs"],
                                  mix=mix, model=MODEL, rundir=str(rundir), train=cfg, device="cpu", progress=False),
                 log=quiet)
    return rundir


def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None):
    from scipy.stats import spearmanr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="runs/mix_evidence")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-only", action="store_true", help="only the select timings (repeat them)")
    parser.add_argument("--repeats", type=int, default=1, help="select timing repeats (the minimum is kept)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    downstream = Path(demo_downstream("downstream_md"))
    upstreams = [str(p) for p in demo_upstreams()]

    # The time --optimize-mix adds: fresh runs (no cache), plain and class level with a budget,
    # alternated; the minimum of each is the least disturbed by other work on the machine.
    plain_times, class_times, mix_times = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        select(downstream, upstreams, out / "select_plain", args.threads, use_cache=False)
        plain_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        class_run = select(downstream, upstreams, out / "select_class", args.threads, use_cache=False,
                           mix=MixSettings(level="class", budget=PRETRAIN["samples"]))
        class_times.append(time.perf_counter() - t0)
        mix_times.append(class_run["mix"]["mix_s"])
    plain_s, class_s = min(plain_times), min(class_times)
    dataset_run = select(downstream, upstreams, out / "select_dataset", args.threads,
                         mix=MixSettings(level="dataset", budget=PRETRAIN["samples"]))
    timing = {"select_plain_s": plain_times, "select_class_mix_s": class_times, "mix_stage_class_s": mix_times,
              "mix_stage_dataset_s": dataset_run["mix"]["mix_s"], "added_fraction": (class_s - plain_s) / plain_s,
              "mix_stage_fraction": min(mix_times) / class_s}
    print(f"select (4 upstreams, all structures, 1 seed, no cache; min of {args.repeats}): plain {plain_s:.1f} s, "
          f"with --optimize-mix --level class --budget {PRETRAIN['samples']} {class_s:.1f} s (mix stage "
          f"{min(mix_times):.2f} s = {100 * timing['mix_stage_fraction']:.1f}% of the run; wall difference "
          f"{100 * timing['added_fraction']:+.1f}%)", flush=True)
    if args.timing_only:
        with atomic_write(out / "mix_timing.json") as fh:
            json.dump({"timing": timing, "threads": args.threads, "versions": versions()}, fh, indent=1)
        return

    csi_d, csi_c = dataset_run["mix"]["csi"], class_run["mix"]["csi"]
    best = csi_d["best_single"]["upstream"]
    analytic = {"a_csi_dataset": csi_d["optimum"], "b_csi_class": csi_c["optimum"],
                "c_best_single": csi_d["best_single"]["csi"], "d_balanced": csi_d["balanced"],
                "e_temperature2": csi_d["temperature:2"], "f_scratch": None}
    plans = {"a_csi_dataset": (upstreams, f"csi:{out / 'select_dataset' / 'mix.json'}"),
             "b_csi_class": (upstreams, f"csi:{out / 'select_class' / 'mix.json'}"),
             "c_best_single": ([best], "balanced"),
             "d_balanced": (upstreams, "balanced"),
             "e_temperature2": (upstreams, "temperature:2")}
    print("analytic CSI: " + ", ".join(f"{k} {v:.4g}" for k, v in analytic.items() if v is not None)
          + f"; best single = {Path(best).name}", flush=True)

    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        row = {"seed": seed}
        for arm in ARMS:
            if arm == "f_scratch":
                source = "none"
            else:
                data, mix = plans[arm]
                source = str(pretrain(data, mix, seed, out / f"pre_{arm}_s{seed}", args.threads))
            row[arm] = finetune(source, downstream, seed, out / f"ft_{arm}_s{seed}", args.threads)
        arms_with_csi = [a for a in ARMS if analytic[a] is not None]
        row["spearman_forces"] = float(spearmanr([analytic[a] for a in arms_with_csi],
                                                 [row[a]["forces"] for a in arms_with_csi]).statistic)
        rows.append(row)
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{a[0]} {row[a]['forces']:.1f}" for a in ARMS) + " meV/Å (forces)", flush=True)

    summary = {f"{a}.{t}": dict(zip(("mean", "std"), _mean_std([r[a][t] for r in rows])))
               for a in ARMS for t in ("forces", "energy")}
    wins = {f"{x}<{y}": sum(r[x]["forces"] < r[y]["forces"] for r in rows)
            for x in ("a_csi_dataset", "b_csi_class") for y in ARMS if y != x}
    arms_with_csi = [a for a in ARMS if analytic[a] is not None]
    rho_means = float(spearmanr([analytic[a] for a in arms_with_csi],
                                [summary[f"{a}.forces"]["mean"] for a in arms_with_csi]).statistic)

    lines = ["| arm | analytic CSI | test force MAE (meV/Å) | test energy MAE (meV) |", "|---|---:|---:|---:|"]
    for a in ARMS:
        f, e = summary[f"{a}.forces"], summary[f"{a}.energy"]
        csi_text = "-" if analytic[a] is None else f"{analytic[a]:.4g}"
        lines.append(f"| {a} | {csi_text} | {f['mean']:.1f} ± {f['std']:.1f} | {e['mean']:.1f} ± {e['std']:.1f} |")
    print("\n".join(lines))
    print(f"paired wins on force MAE over {len(rows)} seeds: " + ", ".join(f"{k} {v}/{len(rows)}" for k, v in wins.items()))
    print(f"Spearman(analytic CSI, mean force MAE) over arms a-e: {rho_means:+.2f}; per seed: "
          + ", ".join(f"{r['spearman_forces']:+.2f}" for r in rows))
    with atomic_write(out / "mix_evidence.json") as fh:
        json.dump({"analytic_csi": analytic, "best_single": best, "rows": rows, "summary": summary, "wins": wins,
                   "spearman_mean_forces": rho_means, "timing": timing, "pretrain": PRETRAIN, "finetune": FINETUNE,
                   "model": MODEL, "threads": args.threads, "seeds": seeds,
                   "weights": {"dataset": dataset_run["mix"]["weights"], "class": class_run["mix"]["weights"]},
                   "versions": versions()}, fh, indent=1)


if __name__ == "__main__":
    main()
