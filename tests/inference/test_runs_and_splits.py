"""What inference reads: final.pt of a fine-tuning run, a pretraining run's EMA weights; and the
split files of ``finetune --train/--val/--test`` (or ``--data`` + ``--test``), with the recipe's
default split never leaving the test set empty silently."""
import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.errors import FastCSIError
from fastcsi.train.splits import parse_split, split_for_files

from inference_runs import finetune_settings


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_final_pt_holds_what_the_run_tested(ethanol_run):
    from fastcsi.inference import load_model
    from fastcsi.train import checkpoint as ckpt

    rundir, results = ethanol_run
    record = ckpt.load(rundir / ckpt.FINAL, kind="fastcsi-model")  # weights_only loading
    assert record["elements"] == [1, 6, 8] and record["targets"] == ["energy", "forces"]
    assert record["normalizer"] == results["normalizer"] and record["extra"]["test_mae"] == results["test_mae"]
    best = ckpt.load(rundir / ckpt.BEST, kind="fastcsi-best")["weights"]
    for key, value in record["weights"].items():
        assert torch.equal(value, best["backbone." + key]), key
    model = load_model(rundir, device="cpu")
    assert model.properties == ("energy", "forces", "stress") and not model.direct_forces
    assert model.describe()["source"]["path"] == str((rundir / ckpt.FINAL).resolve())


def test_a_pretraining_run_is_a_model_with_its_ema_weights(split_files, tmp_path):
    from fastcsi.inference import load_model
    from fastcsi.model import load_backbone

    rundir = tmp_path / "pre"
    result = run(["pretrain", "--data", split_files["train"], "--samples", 8, "--epochs", 1, "--batch-size", 4,
                  "--model", "gemnet-oc-tiny", "--threads", 1, "--quiet", "-o", rundir])
    assert result.exit_code == 0, result.output
    model = load_model(rundir, device="cpu")
    assert model.source["kind"] == "fastcsi-pretrain" and model.elements == {1, 6, 8}
    released = load_backbone(rundir / "backbone.pt")  # the EMA weights, heads stripped (re-initialised here)
    assert released.load_info["heads_initialized"]
    ours = model.network.backbone.state_dict()
    body = [k for k in ours if not k.startswith(("out_energy.", "out_forces."))]
    assert len(body) > 100 and all(torch.equal(released.state_dict()[k], ours[k]) for k in body)
    with pytest.raises(FastCSIError, match="without trained heads"):
        load_model(rundir / "backbone.pt")


def test_split_for_files_and_zero_parts():
    assert split_for_files("950,50,rest", {"test"}) == "rest,50,0"
    assert split_for_files("0.8,0.1,0.1", {"test"}) == "rest,0.1,0"
    assert split_for_files("0.8,0.1,0.1", {"val", "test"}) == "rest,0,0"
    assert split_for_files("0.8,0.1,0.1", ()) == "0.8,0.1,0.1"
    assert parse_split("rest,50,0", 1000, from_files={"test"}) == (950, 50, 0)
    with pytest.raises(FastCSIError, match="test set comes from its own file"):
        parse_split("0.8,0.1,0.1", 100, from_files={"test"})
    with pytest.raises(FastCSIError, match="leaves the test set empty"):
        parse_split("950,50,rest", 1000)


def test_train_val_test_files_are_the_split(energy_only_run, split_files):
    _, results = energy_only_run
    split = results["split"]
    assert (split["train"], split["val"], split["test"]) == (16, 4, 6)
    assert split["files"] == {k: str(v.resolve()) for k, v in split_files.items()}
    assert set(results["test_mae"]) == {"energy"}


def test_data_with_a_test_file_keeps_the_recipes_validation_size(rmd17, split_files, tmp_path):
    """rMD17 as users hold it: the 1000-frame train file and a test file; the recipe's 950,50,rest
    becomes 950 train + 50 validation from the train file, test from its own file."""
    from fastcsi.train.config import recipe_for
    from fastcsi.train.finetune import read_sets

    settings = finetune_settings(split_files, tmp_path / "x")
    settings.data, settings.val_data = str(rmd17), None
    _, parts, spec = read_sets(settings, recipe_for("rmd17", ["energy"]), seed=0)
    assert spec == "rest,50,0"
    assert [len(parts[p][2]) for p in ("train", "val", "test")] == [950, 50, 6]
    assert parts["test"][0] == str(split_files["test"])
    assert not set(parts["train"][1]) & set(parts["val"][1])


@pytest.mark.parametrize("args, message", [
    # the recipe's default split does not fit: the one line names --split and --test
    (["--data", "{train}"], "the rmd17 recipe's default split '950,50,rest' asks for 1000 structures but the "
                            "dataset has only 16; pass --split (e.g. 0.8,0.1,0.1), or the test set as its own "
                            "file with --test"),
    (["--data", "{train}", "--train", "{train}"], "not both"),
    (["--val", "{val}"], "needs --data PATH"),
    (["--data", "{train}", "--test", "{test}", "--split", "8,4,4"], "make that part 0"),
    (["--train", "{train}", "--val", "{val}", "--test", "{train}"], "the --test file is the training data itself"),
    (["--train", "{train}", "--val", "{val}", "--test", "{missing}"], "not found"),
])
def test_finetune_split_mistakes_are_one_line_exit_2(split_files, tmp_path, args, message):
    files = {**{k: str(v) for k, v in split_files.items()}, "missing": str(tmp_path / "missing.extxyz")}
    args = ["finetune", "--pretrained", "none", "--model", "gemnet-oc-tiny", "--quiet", "-o", tmp_path / "ft",
            *[a.format(**files) for a in args]]
    result = run(args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
