"""Backbone specs, the default and the GemNet-OC extractor through the one front door."""
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.extractors import DEFAULT_BACKBONE, default_backbone, parse_spec
from fastcsi.pipeline.backbone import backbone_spec, load_extractor

from helpers import check_invariance_and_batching, check_protocol


@pytest.mark.parametrize("spec, message", [
    ("orb", "unknown backbone 'orb'"),
    ("gemnet-oc", "give a GemNet-OC checkpoint file"),
    ("sevennet-0:x.pth", "takes no model part"),
])
def test_bad_specs_are_one_sentence(spec, message):
    with pytest.raises(FastCSIError, match=message):
        parse_spec(spec)


def test_checkpoint_alone_means_gemnet_oc_and_conflicts_are_refused(tmp_path):
    assert backbone_spec(None, "jmp-s.pt") == "gemnet-oc:jmp-s.pt"
    assert backbone_spec("gemnet-oc", "jmp-s.pt") == "gemnet-oc:jmp-s.pt"
    with pytest.raises(FastCSIError, match="--checkpoint"):
        backbone_spec("sevennet-0", "jmp-s.pt")
    with pytest.raises(FastCSIError, match="--base / --weights"):
        load_extractor("gemnet-oc-random", base="gemnet-oc-tiny")
    with pytest.raises(FastCSIError, match="does not exist"):
        load_extractor(f"gemnet-oc:{tmp_path / 'missing.pt'}")


def test_the_default_is_the_pretrained_wheel_model(monkeypatch):
    monkeypatch.delenv("FASTCSI_BACKBONE", raising=False)
    assert default_backbone() == DEFAULT_BACKBONE == "sevennet-0"
    monkeypatch.setenv("FASTCSI_BACKBONE", "gemnet-oc-random")
    assert backbone_spec() == "gemnet-oc-random"


def test_random_gemnet_is_flagged_untrained_and_passes_the_checks(structures):
    ext = load_extractor("gemnet-oc-random", dtype="float64")
    check_protocol(ext)
    assert ext.name == "gemnet-oc-random" and ext.pretrained is False
    assert ext.describe()["pretrained"] is False and "untrained" in ext.description
    assert load_extractor("gemnet-oc-random", dtype="float64").fingerprint == ext.fingerprint
    # the molecules only: in the dense slab GemNet-OC's max_neighbors cut (30 of ~54 neighbours within
    # 6 A) breaks near-ties by atom order, as JMP's does; tests/model covers its periodic invariance
    check_invariance_and_batching(ext, structures[:4], atol=1e-9)
    with pytest.raises(FastCSIError, match="cannot embed atomic number"):
        ext.check_elements(torch.tensor([1, 200]), where="x.xyz")


def test_stats_of_another_extractor_are_refused_by_name(tmp_path, structures):
    # before any feature of the run's own extractor is computed; the error names both extractors
    from ase.io import write

    from fastcsi.pipeline import SelectSettings
    from fastcsi.pipeline.select import compute_stats_file, run_select

    data = tmp_path / "mols.extxyz"
    write(data, structures[:4] * 3, format="extxyz")
    settings = SelectSettings(samples=None, seeds=(0,), backbone="gemnet-oc-random", per_element=False)
    stats = compute_stats_file(data, tmp_path / "random.npz", settings, sampling="all", progress=False)
    assert stats.metadata["extractor_name"] == "gemnet-oc-random" and stats.metadata["pretrained"] is False
    pytest.importorskip("sevenn")
    other = SelectSettings(samples=None, seeds=(0,), backbone="sevennet-0", per_element=False)
    with pytest.raises(FastCSIError, match="extractor gemnet-oc-random but .* with sevennet-0"):
        run_select(data, [tmp_path / "random.npz"], other, outdir=None, progress=False)
    with pytest.raises(FastCSIError, match="not comparable"):
        run_select(tmp_path / "random.npz", [data], other, outdir=None, progress=False)


@pytest.mark.parametrize("spec", ["gemnet-oc-random", "sevennet-0", "chgnet"])
@pytest.mark.parametrize("options", [{"base": "gemnet-oc-s"}, {"weights": "ema"}])
def test_gemnet_checkpoint_options_elsewhere_are_one_sentence(spec, options):
    """--base / --weights name a GemNet-OC file's architecture and weight set: for any other backbone
    they are refused by the registry, through the CLI's path and the public builder alike."""
    from fastcsi.extractors import build_extractor

    for load in (lambda: load_extractor(spec, **options), lambda: build_extractor(spec, **options)):
        with pytest.raises(FastCSIError, match="apply to GemNet-OC checkpoint files"):
            load()
