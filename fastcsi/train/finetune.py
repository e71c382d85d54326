"""Fine-tuning on a downstream task (``fastcsi finetune``).

Split the downstream dataset (seeded; ``950,50,rest`` counts or fractions; the validation and test
sets may instead come from files of their own, as rMD17 / MD22 / QM9 users hold their official
splits), load the pretrained
backbone (our run directory / ``backbone.pt``, or a JMP / fairchem checkpoint) with fresh output
heads, or a fresh model for ``--pretrained none``, fit the normaliser on the training split, train
with the task's recipe (early stopping on validation, EMA weights), restore the best epoch and
report test MAE: energy in meV, forces in meV/Å, other targets in their native unit.
The run directory receives ``results.json``, ``metrics.csv``, ``learning_curve.png``, ``best.pt``,
``last.pt``, ``final.pt`` (the tested model with everything needed to use it: ``save_model``, read
by ``fastcsi.inference``) and ``profile.md``/``profile.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastcsi.errors import FastCSIError
from fastcsi.profiling import Profiler
from fastcsi.train import backbones
from fastcsi.train import checkpoint as ckpt
from fastcsi.train.config import TrainConfig, recipe_for
from fastcsi.train.loop import Trainer
from fastcsi.train.metrics import mae_unit
from fastcsi.train.normalization import NormalizedModel, Normalizer
from fastcsi.train.pretrain import start_run
from fastcsi.train.splits import split_for_files, split_indices
from fastcsi.safe_pickle import load_torch_foreign
from fastcsi.utils import atomic_write, pyplot, save_figure, versions


@dataclass
class FinetuneSettings:
    pretrained: str
    data: str  # the training data (--data or --train); split unless val/test come from files
    target: str = "energy,forces"
    split: str | None = None  # default: the recipe's
    val_data: str | None = None  # --val: validation structures from their own file
    test_data: str | None = None  # --test: test structures from their own file
    recipe: str | None = None  # rmd17 | md22 | spice | qm9 | qmof | matbench; default guessed
    model: str = "gemnet-oc-s"  # architecture for --pretrained none
    model_overrides: dict = field(default_factory=dict)
    base: str | None = None  # config name for foreign checkpoints without hyperparameters
    weights: str = "raw"  # raw | ema: which weight set of a JMP / fairchem checkpoint (load_backbone)
    forces: str = "auto"  # auto = the recipe's | direct | gradient
    device: str = "auto"
    rundir: str = "runs/finetune"
    train: TrainConfig | None = None  # default: the recipe's; CLI options override fields
    trace: bool = False
    progress: bool = True
    data_options: dict = field(default_factory=dict)  # reader options (energy_unit, force_unit) for every file

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("data", "val_data", "test_data"):
            out[key] = str(Path(out[key]).resolve()) if out[key] else None
        out["train"] = self.train.to_dict() if self.train else None
        return out


def parse_targets(spec: str) -> tuple:
    names = tuple(t.strip() for t in str(spec).split(",") if t.strip())
    if not names:
        raise FastCSIError("--target is empty; use energy,forces or a target name")
    scalar = [t for t in names if t not in ("energy", "forces")]
    if scalar and len(names) > 1:
        raise FastCSIError(f"--target {spec!r}: a named scalar target is fine-tuned alone, not with {names}")
    if names == ("forces",):
        raise FastCSIError("--target forces: forces are trained together with energy (use energy,forces)")
    return names


def pretrain_record(pretrained_path: Path | None) -> dict:
    """What the backbone was pretrained on: from ``backbone.pt``'s extra and the run's
    ``pretrain.json`` when beside it (for ``fastcsi report``)."""
    if pretrained_path is None:
        return {"kind": "none"}
    info = {"path": str(pretrained_path.resolve())}
    record = pretrained_path.parent / "pretrain.json"
    if record.is_file():
        data = json.loads(record.read_text())
        info.update(kind="fastcsi-pretrain", rundir=str(record.parent.resolve()),
                    data=[d["path"] for d in data.get("data", [])], budget=data.get("budget", {}))
    else:
        # a foreign checkpoint (JMP's Lightning files) holds pickled objects: read it as the backbone was
        payload = load_torch_foreign(pretrained_path)
        extra = payload.get("extra", {}) if isinstance(payload, dict) else {}
        extra = extra if isinstance(extra, dict) else {}
        info.update(kind=extra.get("kind", "foreign"), data=extra.get("data", []))
    return info


def read_sets(settings: FinetuneSettings, recipe, seed: int):
    """(training dataset, {part: (path, indices, structures)}, split spec): each of train / val /
    test drawn from ``settings.data`` by the split, or read whole from its own file (--val, --test)."""
    from fastcsi.data import open_dataset

    ds = open_dataset(settings.data, **settings.data_options)
    files = {part: path for part, path in (("val", settings.val_data), ("test", settings.test_data)) if path}
    for part, path in files.items():
        if Path(path).resolve() == Path(settings.data).resolve():
            raise FastCSIError(f"{path}: the --{part} file is the training data itself; give a file of its own, "
                               f"or drop --{part} to draw it by --split")
    spec = settings.split or split_for_files(recipe.default_split, files)
    try:
        drawn = split_indices(len(ds), spec, seed, from_files=files)
    except FastCSIError as exc:
        if settings.split:
            raise
        # the recipe's default (e.g. rMD17's 950,50,rest) was not the user's choice: say how to choose
        raise FastCSIError(f"{settings.data}: the {recipe.name} recipe's default {exc}; pass --split "
                           "(e.g. 0.8,0.1,0.1), or the test set as its own file with --test") from None
    parts = {}
    for part, idx in drawn.items():
        if part in files:
            own = open_dataset(files[part], **settings.data_options)
            if len(own) == 0:
                raise FastCSIError(f"{files[part]}: the --{part} file holds no structures")
            parts[part] = (files[part], range(len(own)), [own[i] for i in range(len(own))])
        else:
            parts[part] = (settings.data, idx, [ds[int(i)] for i in idx])
    return ds, parts, spec


def run_finetune(settings: FinetuneSettings, resume: bool = False, log=print) -> dict:
    targets = parse_targets(settings.target)
    recipe = recipe_for(settings.recipe, list(targets))
    cfg = settings.train or recipe.train
    device, ctx, log = start_run(cfg.max_threads, settings.device, log)
    rundir = Path(settings.rundir)
    if not resume and ctx.is_main and (rundir / ckpt.LAST).exists():
        raise FastCSIError(f"{rundir}: already holds a run; pass --resume to continue it or choose another -o")
    profiler = Profiler(device=device)
    # what the user named is checked before anything derived from the data (a missing checkpoint
    # must not be reported as a split that does not fit)
    pretrained = backbones.resolve_pretrained(settings.pretrained)

    with profiler.stage("read"):
        ds, parts, split_spec = read_sets(settings, recipe, cfg.seed)
        sets = {name: structures for name, (_, _, structures) in parts.items()}
    for name, (path, indices, structures) in parts.items():
        for s, i in zip(structures, indices):
            missing = [t for t in targets if (t == "energy" and s.energy is None)
                       or (t == "forces" and s.forces is None)
                       or (t not in ("energy", "forces") and t not in s.targets)]
            if missing:
                available = ", ".join(sorted(s.targets)) or "none"
                raise FastCSIError(f"{path}: structure {int(i)} has no {missing[0]!r} label "
                                   f"(scalar targets available: {available})")

    scalar = [t for t in targets if t not in ("energy", "forces")]
    normalizer = Normalizer.fit(sets["train"], targets)
    forces_mode = settings.forces if settings.forces != "auto" else recipe.forces
    overrides = {**settings.model_overrides, **backbones.task_overrides(targets, forces_mode)}
    if pretrained is None:
        gemnet = backbones.build(settings.model, cfg.seed, overrides)
        origin = f"fresh {settings.model} (no pretraining)"
    else:
        gemnet = backbones.load_pretrained(pretrained, cfg.seed, overrides, base=settings.base,
                                           weights=settings.weights)
        origin = f"pretrained backbone {pretrained} with fresh heads"
    if cfg.layer_lr == "auto":
        cfg = cfg.replace(layer_lr="jmp" if pretrained is not None else "none")
    model = NormalizedModel(gemnet, normalizer, gradient_forces=backbones.uses_gradient_forces(gemnet),
                            target=scalar[0] if scalar else "energy", reduction=recipe.reduction)
    n = {k: len(v) for k, v in sets.items()}
    log(f"fine-tuning {origin} on {settings.data}: targets {','.join(targets)}, recipe {recipe.name}, "
        f"split train/val/test = {n['train']}/{n['val']}/{n['test']}, {cfg.epochs} epochs max, batch {cfg.batch_size}, "
        f"{'gradient' if model.gradient_forces else 'direct'} forces" if "forces" in targets else
        f"fine-tuning {origin} on {settings.data}: target {','.join(targets)}, recipe {recipe.name}, "
        f"split {n['train']}/{n['val']}/{n['test']}, reduction {recipe.reduction}")
    own_files = [f"{part} from {path}" for part, (path, _, _) in parts.items()
                 if part != "train" and path != settings.data]
    if own_files:
        log(f"split {split_spec} of {settings.data} for the rest; " + ", ".join(own_files))

    trainer = Trainer(model, cfg, sets["train"], sets["val"], targets, rundir, device=device, ctx=ctx,
                      profiler=profiler, progress=settings.progress, log=log, settings=settings.to_dict(),
                      trace=settings.trace)
    t0 = time.perf_counter()
    with backbones.graph_timing(gemnet, profiler):
        result = trainer.fit(resume=resume)
        train_seconds = time.perf_counter() - t0
        if result.interrupted:
            return {"interrupted": True, "steps": result.steps, "rundir": str(rundir), "rank": ctx.rank}
        best = ckpt.load(rundir / ckpt.BEST, kind="fastcsi-best") if (rundir / ckpt.BEST).is_file() else None
        if best is not None:
            trainer.model.load_state_dict(best["weights"])
        with profiler.stage("test"):
            test = trainer.evaluate(sets["test"], use_ema=False if best is not None else True)
    test_mae, units = {}, {}
    for t, value in test.items():
        unit, factor = mae_unit(t)
        test_mae[t] = value * factor
        units[t] = unit
    out = {
        "kind": "fastcsi-finetune",
        "test_mae": test_mae,
        "units": units,
        "primary": trainer.metric_name,
        "best_epoch": result.best_epoch,
        "best_val_mae": result.best_val * mae_unit(trainer.metric_name)[1],
        "epochs_done": result.epochs_done,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "train_seconds": train_seconds,
        "split": {"spec": split_spec, **n, "seed": cfg.seed,
                  "files": {part: str(Path(path).resolve()) for part, (path, _, _) in parts.items()}},
        "recipe": recipe.name,
        "targets": list(targets),
        "pretrained": pretrain_record(pretrained),
        "data": {"path": str(Path(settings.data).resolve()), "structures": len(ds),
                 "fingerprint": getattr(ds, "fingerprint", None), "units_note": ds.units_note},
        "model": {"hparams": gemnet.hparams, "gradient_forces": model.gradient_forces,
                  "load_info": getattr(gemnet, "load_info", None)},
        "normalizer": normalizer.to_dict(),
        "settings": settings.to_dict(),
        "train_config": cfg.to_dict(),
        "versions": versions(),
    }
    if ctx.is_main:
        # the weights just tested: the best epoch's (EMA) weights, else the EMA of the last step
        weights = trainer.model.state_dict() if best is not None else trainer.ema_weights()
        elements = {int(z) for s in sets["train"] for z in s.atomic_numbers}
        save_model(rundir / ckpt.FINAL, model, weights, targets, elements, extra={
            "kind": "fastcsi-finetune", "recipe": recipe.name, "data": out["data"]["path"],
            "test_mae": test_mae, "units": units, "best_epoch": result.best_epoch})
        with atomic_write(rundir / "results.json") as fh:
            json.dump(out, fh, indent=1, default=str)
        plot_learning_curve(result.history, rundir / "learning_curve.png", trainer.metric_name,
                            title=f"{Path(settings.data).name}: {origin}")
        profiler.stop()
        profiler.write(rundir, settings=settings.to_dict(), title="Fine-tuning profile")
        log("test MAE: " + ", ".join(f"{t} {v:.4g} {units[t]}" for t, v in test_mae.items()))
    ctx.barrier()
    return {**out, "rank": ctx.rank}


MODEL_KIND = "fastcsi-model"


def save_model(path, model: NormalizedModel, weights: dict, targets, elements, extra: dict | None = None):
    """Write ``final.pt``: a GemNet-OC with its heads and everything needed to give physical units
    (normaliser, target, reduction, force mode), the elements it was trained on and the graph settings
    (inside ``hparams``). ``weights``: a state_dict of ``model``. Tensors and plain values only, so it
    loads with ``weights_only=True``; ``fastcsi.inference`` reads it."""
    prefix = "backbone."
    ckpt.save(path, {
        "kind": MODEL_KIND,
        "architecture": "gemnet-oc",
        # scale factors' values are in the weights: the scale file is not needed to reload
        "hparams": {**model.backbone.hparams, "scale_file": None},
        "weights": {k[len(prefix):]: v.detach().cpu() for k, v in weights.items() if k.startswith(prefix)},
        "normalizer": model.normalizer.to_dict(),
        "gradient_forces": bool(model.gradient_forces),
        "target": model.target,
        "reduction": model.reduction,
        "targets": list(targets),
        "elements": sorted(int(z) for z in elements),
        "extra": dict(extra or {}),
    })


def plot_learning_curve(history, path, metric: str, title: str = ""):
    """Training loss and validation MAE per epoch (log scale), the MAE in meV / meV/Å like
    results.json; integer epoch ticks; the legend below the plot, clear of the title."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, ax1 = plt.subplots(figsize=(6, 4.4))
    handles = ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss (normalised targets)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss (normalised)")
    ax1.set_yscale("log")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    key = f"val_{metric}_mae"
    if history and key in history[0]:
        unit, factor = mae_unit(metric)
        ax2 = ax1.twinx()
        handles += ax2.plot(epochs, [r[key] * factor for r in history], "s-", color="tab:red",
                            label=f"validation {metric} MAE ({unit})")
        ax2.set_ylabel(f"validation {metric} MAE ({unit})")
        ax2.set_yscale("log")
    ax1.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    ax1.set_title(title, fontsize=9)
    save_figure(fig, path, dpi=100)


def finetune(pretrained, data, *, target: str = "energy,forces", rundir="runs/finetune", recipe: str | None = None,
             resume: bool = False, log=print, **options) -> dict:
    """Fine-tune ``pretrained`` (a pretrain run directory, a checkpoint, or ``"none"``) on ``data``
    with fresh heads, as ``fastcsi finetune`` does; returns its summary (test MAE in ``results.json``).

    ``options``: any :class:`FinetuneSettings` field (``split``, ``val_data``, ``test_data``,
    ``model``, ``forces``, ``device``, ...) or :class:`~fastcsi.train.config.TrainConfig` field
    (``epochs``, ``lr``, ``batch_size``, ...; defaults: the recipe's)."""
    chosen = recipe_for(recipe, list(parse_targets(target)))
    train_fields = set(chosen.train.to_dict())
    train = chosen.train.replace(**{k: v for k, v in options.items() if k in train_fields})
    rest = {k: v for k, v in options.items() if k not in train_fields}
    try:
        settings = FinetuneSettings(pretrained=str(pretrained), data=str(data), target=target, recipe=chosen.name,
                                    rundir=str(rundir), train=train, **rest)
    except TypeError as exc:
        raise FastCSIError(f"finetune: {exc}") from None
    return run_finetune(settings, resume=resume, log=log)

