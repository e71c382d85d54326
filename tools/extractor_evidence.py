"""Does the CSI ranking of the real samples hold across pretrained extractors? The issue-23 evidence table.

For every extractor given (default: every pretrained one that loads here, among sevennet-0 and
chgnet, plus the untrained gemnet-oc-random for contrast), each downstream sample in ../shared/data (rMD17 ethanol, QM9, MD22 Ac-Ala3-NHMe, SPICE,
QMOF) is ranked against the same upstream samples (ANI-1x, ANI-1, Transition-1x, SPICE, OC20,
OC22) with ``run_select`` (one seed; a shared stats cache, so every upstream is extracted once per
extractor). Writes ``OUT/extractor_evidence.json`` and ``.md`` (one table per extractor: CSI,
rank, and the atoms behind each number against 10x the feature dimension), and with ``--doc``
replaces the block between the extractor-evidence markers of docs/performance.md.

    python tools/extractor_evidence.py [--data ../shared/data] [--backbone sevennet-0 ...]
                                       [--samples 300] [--out runs/extractor_evidence] [--doc docs/performance.md]

Transition-1x and OC22 have no real sample here: their files are the generated ones of
../shared/data/generated (real layouts, synthetic geometries), said so in the table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DOWNSTREAMS = {
    "rMD17 ethanol": "rmd17/rmd17_ethanol_train_1.extxyz",
    "QM9": "qm9/qm9_reduced_100.extxyz",
    "MD22 Ac-Ala3-NHMe": "md22/md22_Ac-Ala3-NHMe_disp_100frames.extxyz",
    "SPICE": "spice/SPICE-1.1.4_n2.hdf5",
    "QMOF": "qmof/cifs",
}
UPSTREAMS = {
    "ANI-1x": "ani1x/ani1x_n5.hdf5",
    "ANI-1": "ani1/gdb_HC_s02.h5",
    "Transition-1x*": "generated/t1x/transition1x_sample.h5",
    "SPICE": "spice/SPICE-1.1.4_n2.hdf5",
    "OC20": "oc20/raw_relaxation_traj",
    "OC22*": "generated/oc22/s2ef_total",
}
PRETRAINED = ("sevennet-0", "chgnet")
# for contrast: the untrained tiny GemNet-OC that was the default before (issue 23: wrong rankings)
CONTRAST = "gemnet-oc-random"
START, END = "<!-- extractor-evidence:start -->", "<!-- extractor-evidence:end -->"


def loadable(spec: str) -> bool:
    from fastcsi.errors import FastCSIError
    from fastcsi.pipeline.backbone import load_extractor

    try:
        load_extractor(spec)
        return True
    except FastCSIError as exc:
        print(f"skipping {spec}: {exc}")
        return False


def rank_all(spec, data: Path, samples: int, out: Path) -> dict:
    from fastcsi.pipeline import SelectSettings
    from fastcsi.pipeline.backbone import load_extractor
    from fastcsi.pipeline.select import run_select

    extractor = load_extractor(spec)
    settings = SelectSettings(samples=samples, seeds=(0,), per_element=False, batch_size=16, backbone=spec)
    up_paths = {name: str(data / rel) for name, rel in UPSTREAMS.items()}
    by_path = {p: n for n, p in up_paths.items()}
    tables = {}
    for down_name, rel in DOWNSTREAMS.items():
        t0 = time.perf_counter()
        result = run_select(str(data / rel), list(up_paths.values()), settings, outdir=None,
                            cache_dir=out / "cache" / spec.replace(":", "_"), progress=False, extractor=extractor)
        tables[down_name] = {
            "downstream_atoms": result["downstream"]["n_atoms"],
            "rows": {by_path[r["upstream"]]: {"csi": r["csi"], "rank": r["rank"], "atoms": r["n_atoms"]}
                     for r in result["ranking"]},
            "wall_s": time.perf_counter() - t0,
        }
        print(f"{spec} / {down_name}: {time.perf_counter() - t0:.0f} s, closest "
              f"{min(tables[down_name]['rows'].items(), key=lambda kv: kv[1]['csi'])[0]}")
    return {"extractor": spec, "feature_dim": extractor.dim, "description": extractor.description,
            "pretrained": bool(extractor.pretrained), "tables": tables}


def fmt(value: float) -> str:
    return f"{value:.3g}" if value < 1e4 else f"{value:.2e}"


def markdown(results: list, samples: int) -> str:
    lines = []
    for res in results:
        dim, need = res["feature_dim"], 10 * res["feature_dim"]
        untrained = "" if res.get("pretrained", True) else " UNTRAINED, for contrast only"
        lines += [f"**{res['extractor']}**{untrained} ({res['description']}; {dim} features, adequate at >= {need:,} atoms). "
                  "CSI (rank), lower = closer; _italic_: fewer atoms than 10x the feature dimension on either side.",
                  "", "| downstream (atoms) | " + " | ".join(f"{u} ({atoms})" for u, atoms in
                                                          _upstream_atoms(res).items()) + " |",
                  "|---|" + "---:|" * len(UPSTREAMS)]
        for down, table in res["tables"].items():
            cells = []
            for up in UPSTREAMS:
                row = table["rows"][up]
                text = f"{fmt(row['csi'])} ({row['rank']})"
                low = row["atoms"] < need or table["downstream_atoms"] < need
                cells.append(f"_{text}_" if low else text)
            lines.append(f"| {down} ({table['downstream_atoms']:,}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"One seed, at most {samples} structures per dataset (fewer when the sample is smaller). "
                 "\\* generated sample (real layout, synthetic geometries): ../shared/data has no real "
                 "Transition-1x or OC22 file.")
    results = [r for r in results if r.get("pretrained", True)]  # agreement among the real extractors only
    if len(results) > 1:
        lines += ["", "Where the pretrained extractors disagree: the closest upstream per downstream, and the upstreams "
                  "whose rank differs (ranks in the order " + ", ".join(r["extractor"] for r in results) + "):", ""]
        for down in DOWNSTREAMS:
            tops = {r["extractor"]: min(r["tables"][down]["rows"].items(), key=lambda kv: kv[1]["csi"])[0]
                    for r in results}
            agree = "same top-1" if len(set(tops.values())) == 1 else "top-1 DIFFERS"
            moved = [f"{up} {'/'.join(str(r['tables'][down]['rows'][up]['rank']) for r in results)}"
                     for up in UPSTREAMS if len({r["tables"][down]["rows"][up]["rank"] for r in results}) > 1]
            lines.append(f"- {down}: " + ", ".join(f"{e}: {t}" for e, t in tops.items()) + f" ({agree}); rank changes: "
                         + ("; ".join(moved) if moved else "none"))
    return "\n".join(lines) + "\n"


def _upstream_atoms(res) -> dict:
    first = next(iter(res["tables"].values()))
    return {u: f"{first['rows'][u]['atoms']:,}" for u in UPSTREAMS}


def write_doc(doc: Path, block: str) -> None:
    from fastcsi.utils import atomic_write

    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with atomic_write(doc) as handle:
        handle.write(head + START + "\n" + block + END + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--backbone", action="append", default=None)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default="runs/extractor_evidence")
    parser.add_argument("--doc", default=None)
    args = parser.parse_args()
    from fastcsi.utils import atomic_write, versions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = args.backbone or [s for s in PRETRAINED if loadable(s)] + [CONTRAST]
    results = [rank_all(spec, Path(args.data), args.samples, out) for spec in specs]
    block = markdown(results, args.samples)
    with atomic_write(out / "extractor_evidence.json") as handle:
        json.dump({"results": results, "samples": args.samples, "versions": versions()}, handle, indent=2)
    with atomic_write(out / "extractor_evidence.md") as handle:
        handle.write(block)
    print(block)
    if args.doc:
        write_doc(Path(args.doc), block)


if __name__ == "__main__":
    main()
