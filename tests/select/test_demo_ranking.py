"""CSI is meaningful on the bundled demo data: the ranking follows the downstream's chemistry."""
from fastcsi.data.demo import demo_paths
from fastcsi.pipeline import SelectSettings
from fastcsi.pipeline.select import run_select


def test_ranking_flips_with_the_downstream(extractor, tmp_path):
    paths = demo_paths()
    upstreams = [paths["upstream_slabs"], paths["upstream_organic"]]
    settings = SelectSettings(samples=8, seeds=(0,), dtype="float64", batch_size=8)
    kw = dict(outdir=tmp_path, cache_dir=tmp_path / "cache", extractor=extractor, progress=False)
    molecular = run_select(paths["downstream_md"], upstreams, settings, **kw)
    catalysis = run_select(paths["downstream_catalysis"], upstreams, settings, **kw)
    assert molecular["ranking"][0]["upstream"] == str(paths["upstream_organic"])
    assert catalysis["ranking"][0]["upstream"] == str(paths["upstream_slabs"])
    assert catalysis["cache"]["hits"] == 2  # the upstream stats of the first run were reused


def test_the_demo_is_adequate_by_its_own_checks(tmp_path):
    # a newcomer's first run: a clean ranking, none of the warnings meant for small real samples
    import json

    from click.testing import CliRunner

    from fastcsi.cli.app import cli

    from fastcsi.pipeline.backbone import UNTRAINED_WARNING

    # the suite's tiny random backbone (the pretrained default's demo is test_the_default_demo_runs_offline):
    # the one warning is that its weights are untrained; 96 structures are adequate for its 32 features
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo"), "--quiet", "--samples", "96"])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning") == 1 and UNTRAINED_WARNING in result.output
    run = json.loads((tmp_path / "demo" / "csi.json").read_text())
    assert run["warnings"] == [UNTRAINED_WARNING] and run["adequacy"]["ranking_stable_across_seeds"] is True
    assert run["extractor"] == "gemnet-oc-random" and run["settings"]["pretrained"] is False
    order = [row["upstream"].rsplit("/", 1)[-1] for row in run["ranking"]]
    assert set(order[:2]) == {"upstream_organic.extxyz", "upstream_reactions.extxyz"}


def test_the_default_demo_runs_offline_on_the_pretrained_default(tmp_path, monkeypatch):
    # no backbone option, no network: SevenNet-0 from the sevenn wheel (a small sample keeps it to
    # seconds; the full demo's adequacy on it is measured in the README)
    import json
    import socket

    from click.testing import CliRunner

    from fastcsi.cli.app import cli

    def no_network(*args, **kwargs):
        raise AssertionError("the demo reached for the network")

    monkeypatch.delenv("FASTCSI_BACKBONE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo"), "--quiet", "--samples", "12",
                                      "--seeds", "0", "--no-per-element"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "demo" / "csi.json").read_text())
    assert run["extractor"] == "sevennet-0" and run["settings"]["pretrained"] is True
    assert "untrained" not in result.output and "sevennet-0" in result.output
    assert run["ranking"][0]["upstream"].endswith("upstream_organic.extxyz")
