"""``fastcsi stats`` (merge, from-features, info) and ``fastcsi csi``: thin layers over fastcsi.stats."""
from __future__ import annotations

import json
from pathlib import Path

import click

from fastcsi.errors import FastCSIError

from fastcsi.pipeline.settings import AGGREGATIONS  # light: fastcsi.stats imports torch


@click.group()
def stats():
    """Feature statistics files (.npz): merge shards, build from saved features, inspect."""


def _parse_meta(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise FastCSIError(f"--meta expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@stats.command("from-features")
@click.argument("features_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="stats .npz to write")
@click.option("--agg", type=click.Choice(AGGREGATIONS), default="flat", show_default=True,
              help="flat: every atom a sample; mean/sum/max: one sample per structure")
@click.option("--groups/--no-groups", default=None,
              help="per-element stats (flat only; default: when atomic numbers are present)")
@click.option("--extractor", default=None, help="extractor fingerprint to record (checked by csi)")
@click.option("--layer", default=None, help="feature layer to record")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="extra metadata to record")
@click.option("--backend", default="auto", show_default=True, help="covariance backend")
def from_features(features_file, output, agg, groups, extractor, layer, meta, backend):
    """Build stats from a saved features file (torch list of dicts with node_features, a tensor or
    array, or a dict with 'features'; .pt/.pth via torch.load(weights_only=True), .npy/.npz)."""
    from fastcsi.stats import from_feature_file

    result = from_feature_file(features_file, agg=agg, groups=groups, extractor=extractor, layer=layer,
                               metadata=_parse_meta(meta), backend=backend, progress=True)
    result.save(output)
    click.echo(f"{output}: {result.count} samples of dim {result.dim} ({agg}) from {features_file}")


@stats.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="merged stats .npz")
def merge_cmd(inputs, output):
    """Merge stats shards exactly (refuses shards of different feature spaces)."""
    from fastcsi.stats import load_stats

    merged = load_stats(inputs[0]).copy()
    for path in inputs[1:]:
        merged.merge(load_stats(path))
    merged.metadata["merged_from"] = [str(p) for p in inputs]
    merged.save(output)
    meta = merged.metadata
    counts = (f" ({meta['n_structures']} structures, {meta['n_atoms']} atoms)"
              if "n_structures" in meta and "n_atoms" in meta else "")
    click.echo(f"{output}: {merged.count} samples of dim {merged.dim} from {len(inputs)} shard(s){counts}")


@stats.command("info")
@click.argument("path", type=click.Path(path_type=Path))
def info_cmd(path):
    """Show a stats file's dimension, count, groups and metadata."""
    from fastcsi.stats import load_stats

    loaded = load_stats(path)
    click.echo(f"{path}: dim {loaded.dim}, {loaded.count} samples, {len(loaded.groups)} groups")
    click.echo(json.dumps(loaded.metadata, indent=2, sort_keys=True, default=str))


@click.command("csi")
@click.argument("stats_a", type=click.Path(path_type=Path))
@click.argument("stats_b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--backend", default="auto", show_default=True, help="Fréchet backend (auto, ref, cpu, torch, cuda)")
def csi_cmd(stats_a, stats_b, as_json, backend):
    """Chemical Similarity Index (Fréchet distance) between two stats files; lower = closer."""
    from fastcsi.stats import csi, load_stats

    from fastcsi.pipeline.report import element_symbol

    a, b = load_stats(stats_a), load_stats(stats_b)
    per_group = bool(a.groups) and bool(b.groups)
    result = csi(a, b, per_group=per_group, backend=backend)
    if as_json:
        payload = result.to_dict()
        # Groups are atomic numbers (from-features and select record them so): name the element too.
        for z, part in payload.get("per_group", {}).items():
            part["element"] = element_symbol(int(z))
        click.echo(json.dumps({"a": str(stats_a), "b": str(stats_b), **payload}, sort_keys=True))
        return
    click.echo(f"CSI {result.csi:.6g}  (mean term {result.mean_term:.6g}, trace term {result.trace_term:.6g})")
    click.echo(f"samples: {result.n_a} in {stats_a}, {result.n_b} in {stats_b}")
    if per_group:
        click.echo("per element: element        CSI   n_a   n_b")
        for label, part in sorted(result.per_group.items()):
            click.echo(f"             {element_symbol(label):<7} {part.csi:10.4g} {part.n_a:5d} {part.n_b:5d}")
        for label, why in sorted(result.skipped_groups.items()):
            click.echo(f"             {element_symbol(label):<7}  skipped: {why}")
