"""Settings of the tiny fine-tuning runs the inference tests make (a module of its own: every
test folder has a ``conftest``, so ``from conftest import`` may find another folder's)."""


def finetune_settings(split_files, rundir, target="energy,forces", epochs=1):
    from fastcsi.train import FinetuneSettings
    from fastcsi.train.config import recipe_for

    cfg = recipe_for("rmd17", ["energy"]).train.replace(epochs=epochs, batch_size=4, max_threads=1)
    return FinetuneSettings(pretrained="none", data=str(split_files["train"]), val_data=str(split_files["val"]),
                            test_data=str(split_files["test"]), target=target, recipe="rmd17",
                            model="gemnet-oc-tiny", device="cpu", rundir=str(rundir), train=cfg, progress=False)
