"""pretrain -> finetune -> report through the CLI with gemnet-oc-tiny on tiny synthetic data,
interrupt + resume through the CLI, and user mistakes (one line, exit status 2)."""
import json

import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli.app import cli

from train_toy import lj_structures

FAST = ["--model", "gemnet-oc-tiny", "--batch-size", "4", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ase.io import write

    root = tmp_path_factory.mktemp("data")
    paths = {}
    for name, seed, lo, hi in (("up_a", 1, 3, 5), ("up_b", 2, 6, 8), ("down", 3, 3, 5)):
        paths[name] = root / f"{name}.extxyz"
        write(paths[name], [s.to_ase() for s in lj_structures(16, seed=seed, min_atoms=lo, max_atoms=hi)])
    return paths


def run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    rundir = tmp_path_factory.mktemp("runs") / "pre"
    result = run(["pretrain", "--data", data["up_a"], "--data", data["up_b"], "--samples", 8, "--epochs", 2,
                  "--mix", "temperature:2", "--checkpoint-every", 3, "-o", rundir, *FAST])
    assert result.exit_code == 0, result.output
    return rundir, result.output


def test_pretrain_prints_budget_and_writes_run(pretrained):
    rundir, output = pretrained
    assert "N = 8 structures x E = 2 epochs = C = 16" in output and "4 optimizer steps" in output
    record = json.loads((rundir / "pretrain.json").read_text())
    assert record["status"] == "done" and record["budget"]["steps"] == 4
    assert sum(record["budget"]["per_dataset"].values()) == 8
    assert len((rundir / "metrics.csv").read_text().splitlines()) == 3
    profile = json.loads((rundir / "profile.json").read_text())
    for stage in ("read", "data", "graph", "forward", "backward", "optimizer", "validation"):
        assert stage in profile["stages"], stage
    assert profile["counters"]["structures"] == 16
    from fastcsi.model import load_backbone

    model = load_backbone(rundir / "backbone.pt")
    assert model.load_info["heads_initialized"]  # released without heads: fine-tuning starts fresh


def test_pretrain_interrupt_and_resume_equals_uninterrupted(data, pretrained, tmp_path):
    rundir, _ = pretrained
    part = tmp_path / "part"
    args = ["pretrain", "--data", data["up_a"], "--data", data["up_b"], "--samples", 8, "--epochs", 2,
            "--mix", "temperature:2", "--checkpoint-every", 3, "-o", part, *FAST]
    first = run(args + ["--stop-after", 3])
    assert first.exit_code == 0 and "--resume" in first.output
    assert json.loads((part / "pretrain.json").read_text())["status"] == "interrupted"
    second = run(args + ["--resume"])
    assert second.exit_code == 0, second.output
    a = torch.load(rundir / "backbone.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "backbone.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_finetune_pretrained_and_scratch_then_report(data, pretrained, tmp_path):
    rundir, _ = pretrained
    common = ["--data", data["down"], "--split", "8,4,rest", "--epochs", 1, "--forces", "direct", *FAST]
    ft = run(["finetune", "--pretrained", rundir, "-o", tmp_path / "ft", *common])
    assert ft.exit_code == 0, ft.output
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert set(res["test_mae"]) == {"energy", "forces"} and res["units"]["energy"] == "meV"
    assert res["split"]["train"] == 8 and res["split"]["test"] == 4
    assert res["pretrained"]["data"] == [str(data["up_a"].resolve()), str(data["up_b"].resolve())]
    assert (tmp_path / "ft" / "learning_curve.png").stat().st_size > 0
    assert res["train_config"]["layer_lr"] == "jmp"  # the recipe's "auto" on a pretrained backbone
    scratch = run(["finetune", "--pretrained", "none", "-o", tmp_path / "scratch", *common])
    assert scratch.exit_code == 0, scratch.output
    assert json.loads((tmp_path / "scratch" / "results.json").read_text())["train_config"]["layer_lr"] == "none"
    # report: two single-upstream runs (faked from the real results.json) against a csi.json
    runs = []
    for name, mae in (("up_a", 5.0), ("up_b", 9.0)):
        d = tmp_path / f"run_{name}"
        d.mkdir()
        r = dict(res)
        r["pretrained"] = {"kind": "fastcsi-pretrain", "data": [str(data[name])]}
        r["test_mae"] = {"energy": 1.0, "forces": mae}
        (d / "results.json").write_text(json.dumps(r))
        runs.append(d)
    sel = tmp_path / "select"
    sel.mkdir()
    (sel / "csi.json").write_text(json.dumps({"ranking": [{"upstream": str(data["up_a"]), "csi": 0.5},
                                                          {"upstream": str(data["up_b"]), "csi": 2.0}]}))
    rep = run(["report", sel, *runs, tmp_path / "scratch"])
    assert rep.exit_code == 0, rep.output
    # two points rank perfectly whatever they are: no rho; the scratch run is the baseline, not "not matched"
    assert "rho =" not in rep.output and "not computed" in rep.output and "from scratch" in rep.output
    assert (sel / "csi_vs_mae.png").is_file()
    saved = json.loads((sel / "report.json").read_text())
    assert saved["spearman"]["n"] == 2 and saved["spearman"]["rho"] is None  # strict JSON: no NaN
    assert [b["run"] for b in saved["baseline"]] == [str(tmp_path / "scratch")]


def test_finetune_scalar_target_mean_reduction(data, pretrained, tmp_path):
    rundir, _ = pretrained
    result = run(["finetune", "--pretrained", rundir, "--data", data["down"], "--target", "gap", "--recipe", "qmof",
                  "--split", "0.5,0.25,0.25", "--epochs", 1, "-o", tmp_path / "gap", *FAST])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "gap" / "results.json").read_text())
    assert set(res["test_mae"]) == {"gap"} and res["units"]["gap"] == "native"
    assert not res["model"]["hparams"]["regress_forces"]


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--data", "/nonexistent.extxyz", "--samples", 4, "-o", "{tmp}/x"], "not found"),
    (["pretrain", "--data", "{down}", "--samples", 400, "-o", "{tmp}/x"], "needs at least 401 structures"),
    (["pretrain", "--data", "{down}", "--samples", 4, "-o", "{tmp}/x", "--model-option", "cutoff=abc"],
     "cutoff must be a finite number"),
    (["pretrain", "--data", "{down}", "--samples", 4, "-o", "{tmp}/x", "--model-option", "num_blocks=-1"],
     "num_blocks must be a whole number >= 1"),
    (["pretrain", "--data", "{down}", "--samples", 4, "--mix", "hot", "-o", "{tmp}/x"], "--mix"),
    (["finetune", "--pretrained", "{tmp}/missing", "--data", "{down}", "--split", "8,4,rest", "-o", "{tmp}/y"],
     "not found"),
    (["finetune", "--pretrained", "none", "--data", "{down}", "--target", "homo", "--split", "8,4,rest",
      "-o", "{tmp}/y"], "no 'homo' label"),
    (["finetune", "--pretrained", "none", "--data", "{down}", "--split", "950,50,rest", "-o", "{tmp}/y"],
     "dataset has only 16"),
    (["finetune", "--pretrained", "none", "--data", "{down}", "--split", "8,4,rest", "--layer-lr", "blocks_7=0.5",
      "-o", "{tmp}/y"], "does not exist"),
])
def test_user_mistakes_are_one_line_exit_2(data, tmp_path, args, message):
    args = [str(a).format(tmp=tmp_path, down=data["down"]) for a in args]
    result = CliRunner().invoke(cli, args + ["--quiet", "--threads", "1", "--model", "gemnet-oc-tiny"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
