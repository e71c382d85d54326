"""Budgeted pretraining on energy and forces (``fastcsi pretrain``).

Sample N training structures across the upstream datasets (per-dataset shares by temperature
mixing p_i ∝ n_i^(1/T) as in JMP, or equal shares; within a dataset class-balanced or random),
hold out a validation sample from the structures not drawn, fit the normaliser on the training
sample, then train E epochs with the shared loop. The run directory receives ``backbone.pt``
(EMA weights, head-less, readable by ``fastcsi.model.load_backbone``), ``last.pt`` (resumable
state), ``metrics.csv``, ``pretrain.json`` (settings, budget, data, results, versions) and
``profile.md``/``profile.json``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastcsi.errors import FastCSIError, Interrupted
from fastcsi.profiling import Profiler
from fastcsi.train import backbones
from fastcsi.train.config import TrainConfig
from fastcsi.train.distributed import init_distributed
from fastcsi.train.loop import Trainer
from fastcsi.train.normalization import NormalizedModel, Normalizer
from fastcsi.utils import atomic_write, read_json, versions


@dataclass
class PretrainSettings:
    data: list
    samples: int
    epochs: int = 2
    mix: str = "temperature:2"
    sampling: str = "balanced"
    model: str = "gemnet-oc-s"
    model_overrides: dict = field(default_factory=dict)
    forces: str = "auto"  # auto (the model config's: direct for JMP configs) | direct | gradient
    val_samples: int | None = None  # default: 10% of N, at least 1, at most 1000
    device: str = "auto"
    rundir: str = "runs/pretrain"
    train: TrainConfig = field(default_factory=TrainConfig)
    trace: bool = False
    progress: bool = True
    skip_unreadable: bool = False  # HDF5: leave out unreadable groups of damaged files (recorded)
    selection: str | None = None  # pretrain_set.json of `select --optimize-mix --budget N`: train on exactly it
    data_options: dict = field(default_factory=dict)  # reader options (energy_unit, force_unit): recorded, fingerprinted

    def to_dict(self) -> dict:
        out = asdict(self)
        out["data"] = [str(Path(p).resolve()) for p in self.data]
        out["train"] = self.train.to_dict()
        return out


def resolve_device(spec: str) -> str:
    if spec in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(spec).startswith("cuda") and not torch.cuda.is_available():
        raise FastCSIError(f"device {spec!r} requested but CUDA is not available here")
    return str(spec)


def start_run(max_threads, device_spec: str, log):
    """Threads, device and process group for a training run; ``log`` is silenced on ranks > 0."""
    if max_threads:
        # before the model is built: orthogonal initialisation (QR) depends on the thread count
        torch.set_num_threads(max_threads)
    device = resolve_device(device_spec)
    ctx = init_distributed(device)
    if device.startswith("cuda") and ctx.enabled:
        device = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(ctx.local_rank)
    if not ctx.is_main:
        log = lambda *args, **kwargs: None  # noqa: E731 - one rank speaks
    return device, ctx, log


def mixture_weights(mix: str, sizes) -> np.ndarray:
    """Per-dataset shares: ``balanced`` (equal), ``proportional`` (T=1) or ``temperature:T``."""
    from fastcsi.data import temperature_mix

    sizes = np.asarray(sizes, dtype=np.float64)
    mix = (mix or "temperature:2").strip().lower()
    if mix == "balanced":
        return np.where(sizes > 0, 1.0, 0.0) / max((sizes > 0).sum(), 1)
    if mix == "proportional":
        return temperature_mix(sizes, 1.0)
    if mix.startswith("temperature"):
        _, _, value = mix.partition(":")
        try:
            T = float(value) if value else 2.0
        except ValueError:
            raise FastCSIError(f"--mix {mix!r}: temperature must be a number, e.g. temperature:2") from None
        return temperature_mix(sizes, T)
    raise FastCSIError(f"--mix {mix!r}: choose balanced, proportional, temperature:T or csi:MIX.json")


def _check_room(datasets, n_train: int) -> None:
    total = sum(len(d) for d in datasets)
    if n_train + 1 > total:
        raise FastCSIError(
            f"--samples {n_train} needs at least {n_train + 1} structures (one held out for validation), "
            f"but the data has {total}"
        )


def draw_samples(datasets, n_train: int, n_val: int, weights, strategy: str, seed: int):
    """(train, val) lists of (dataset, index) pairs: train by the mixture, val by the same weights
    from what training did not draw (so validation measures held-out structures of that mixture)."""
    from fastcsi.data import mixture_indices

    _check_room(datasets, n_train)
    train = mixture_indices(datasets, n_train, weights=weights, seed=seed, strategy=strategy)
    if len(train) != n_train:
        raise FastCSIError(f"could draw only {len(train)} of {n_train} training structures from the data")
    return train, held_out(datasets, train, n_val, seed, weights)


def held_out(datasets, train, n_val: int, seed: int, weights=None):
    """``n_val`` (dataset, index) pairs at random among the structures ``train`` does not hold,
    split across the datasets by ``weights`` (the mixture's per-dataset shares of structures), so
    that validation measures the mixture that was trained, not whatever is left over: an upstream
    of weight 0 gives none. A dataset with too few left hands its part on to the others; what the
    weighted ones cannot give comes from any held-out structure (a small validation set measures
    nothing). ``weights=None``: in proportion to what is left."""
    from fastcsi.data.sampling import _apportion

    free_per_dataset = []
    for k, d in enumerate(datasets):  # vectorised: upstreams can hold millions of structures
        free = np.ones(len(d), dtype=bool)
        free[train[train[:, 0] == k, 1]] = False
        free_per_dataset.append(np.flatnonzero(free))
    capacity = np.array([len(f) for f in free_per_dataset], dtype=np.int64)
    shares = capacity.astype(np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    quotas = _apportion(n_val, shares, capacity)
    if quotas.sum() < min(n_val, capacity.sum()):
        left = capacity - quotas
        quotas += _apportion(n_val - int(quotas.sum()), left.astype(np.float64), left)
    rng = np.random.default_rng([seed, 0xFA1])
    parts = [np.stack([np.full(q, k, dtype=np.int64), np.sort(rng.choice(free, size=q, replace=False))], axis=1)
             for k, (free, q) in enumerate(zip(free_per_dataset, quotas)) if q]
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def _check_fingerprint(dataset, expected, path, source) -> None:
    if expected is not None and dataset.fingerprint != expected:
        raise FastCSIError(
            f"{path}: the dataset changed since {source} was written (fingerprint {dataset.fingerprint}, "
            f"recorded {expected}); rerun fastcsi select --optimize-mix for it"
        )


def _same_paths(given, recorded, source) -> list:
    """``given`` --data paths in the order of the ``recorded`` ones (all of them, nothing else)."""
    if not given:
        return list(recorded)
    resolved = {str(Path(p).resolve()): p for p in given}
    wanted = [str(Path(p).resolve()) for p in recorded]
    if sorted(resolved) != sorted(wanted):
        raise FastCSIError(f"--data does not name the datasets of {source} ({', '.join(map(str, recorded))}); "
                           "drop --data to use them")
    return [resolved[p] for p in wanted]


def resolve_data_source(settings: PretrainSettings):
    """Where the training structures come from, before anything is read: ``(settings, plan)``
    with ``settings.data`` / ``samples`` filled in from a selection or mix file, and ``plan`` a
    dict saying how to draw (recorded in pretrain.json as ``data_source``)."""
    try:
        return _resolve_data_source(settings)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        where = settings.selection or (settings.mix or "")[4:]
        raise FastCSIError(f"{where}: malformed file (missing or bad field: {exc})") from None


def _resolve_data_source(settings: PretrainSettings):
    from dataclasses import replace

    mix = (settings.mix or "").strip()
    if settings.selection:
        selection = read_json(settings.selection, "pretraining-set file", "fastcsi-pretrain-set/1")
        entries = selection.get("datasets") or []
        recorded = [e["path"] for e in entries]
        data = _same_paths(settings.data, recorded, settings.selection)
        budget = int(selection["budget"])
        if settings.samples is not None and settings.samples != budget:
            raise FastCSIError(f"--samples {settings.samples}: {settings.selection} holds a set of {budget} "
                               "structures; drop --samples")
        order = {str(Path(p).resolve()): k for k, p in enumerate(data)}
        plan = {"kind": "selection", "file": str(Path(settings.selection).resolve()), "level": selection.get("level"),
                "budget": budget, "mix": selection.get("mix"),
                "entries": sorted(entries, key=lambda e: order[str(Path(e["path"]).resolve())])}
        return replace(settings, data=data, samples=budget, mix="selection"), plan
    if mix.lower().startswith("csi:"):
        path = mix[4:]
        payload = read_json(path, "mix file", "fastcsi-mix/1")
        recorded = [e["path"] for e in payload["datasets"]]
        data = _same_paths(settings.data, recorded, path)
        plan = {"kind": "csi", "file": str(Path(path).resolve()), "level": payload["level"],
                "fingerprints": {str(Path(e["path"]).resolve()): e.get("fingerprint") for e in payload["datasets"]},
                "structure_shares": payload["structure_shares"], "components": payload["components"],
                "csi": payload.get("csi")}
        return replace(settings, data=data), plan
    return settings, {"kind": "mixture", "mix": settings.mix, "sampling": settings.sampling}


def draw_training_data(settings: PretrainSettings, plan: dict, datasets, n_val: int, seed: int):
    """(train, val) (dataset, index) pairs for ``plan`` (see :func:`resolve_data_source`) and the
    per-dataset shares of structures that drew them."""
    try:
        return _draw_training_data(settings, plan, datasets, n_val, seed)
    except (KeyError, TypeError, ValueError) as exc:
        raise FastCSIError(f"{plan.get('file')}: malformed file (missing or bad field: {exc})") from None


def _draw_training_data(settings, plan, datasets, n_val: int, seed: int):
    if plan["kind"] == "selection":
        parts = []
        for k, (entry, d) in enumerate(zip(plan["entries"], datasets)):
            _check_fingerprint(d, entry.get("fingerprint"), settings.data[k], plan["file"])
            idx = np.asarray(entry.get("indices", []), dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(d) or np.unique(idx).size != idx.size):
                raise FastCSIError(f"{plan['file']}: the indices of {settings.data[k]} are out of range or repeated")
            parts.append(np.stack([np.full(idx.size, k, dtype=np.int64), np.sort(idx)], axis=1))
        train = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        if len(train) != settings.samples:
            raise FastCSIError(f"{plan['file']}: lists {len(train)} structures but says its budget is {settings.samples}")
        _check_room(datasets, settings.samples)
        weights = np.array([(train[:, 0] == k).sum() for k in range(len(datasets))], dtype=np.float64)
        weights /= weights.sum()
        return train, held_out(datasets, train, n_val, seed, weights), weights
    if plan["kind"] == "csi":
        for path, d in zip(settings.data, datasets):
            _check_fingerprint(d, plan["fingerprints"].get(str(Path(path).resolve())), path, plan["file"])
        shares = {str(Path(p).resolve()): q for p, q in plan["structure_shares"].items()}
        weights = np.array([shares[str(Path(p).resolve())] for p in settings.data], dtype=np.float64)
        if plan["level"] == "dataset":
            train, val = draw_samples(datasets, settings.samples, n_val, weights, settings.sampling, seed)
            return train, val, weights
        # class level: the mix's class components, fresh seeded class-balanced draws inside each
        from fastcsi.data.sampling import draw_selection

        _check_room(datasets, settings.samples)
        index = {str(Path(p).resolve()): k for k, p in enumerate(settings.data)}
        components = [{"dataset": index[str(Path(c["dataset"]).resolve())], "classes": c["classes"],
                       "structure_share": c["structure_share"]} for c in plan["components"]]
        chosen, _ = draw_selection(datasets, components, settings.samples, seed)
        train = np.concatenate([np.stack([np.full(len(idx), k, dtype=np.int64), idx], axis=1)
                                for k, idx in enumerate(chosen)])
        return train, held_out(datasets, train, n_val, seed, weights), weights
    weights = mixture_weights(settings.mix, [len(d) for d in datasets])
    train, val = draw_samples(datasets, settings.samples, n_val, weights, settings.sampling, seed)
    return train, val, weights


def _read(datasets, pairs, paths, what: str, progress: bool):
    """The structures of ``pairs``. Each needs an energy; one without forces (ANI-1, which a mixture
    may choose) trains on its energy alone: the force loss masks it (losses.py)."""
    from tqdm import tqdm

    out = []
    for k, i in tqdm(pairs, desc=f"reading {what}", unit="structure", disable=not progress, leave=False):
        s = datasets[k][int(i)]
        if s.energy is None:
            raise FastCSIError(f"{paths[k]}: structure {int(i)} has no energy label; pretraining needs energies "
                               "(forces where the data has them)")
        out.append(s)
    return out


def forces_note(missing: int, total: int, what: str) -> str | None:
    """A line saying that ``missing`` of ``total`` structures have no force labels (None when all have them)."""
    if not missing:
        return None
    if missing == total:
        effect = "the force loss is off (energy only)" if what == "training" else "it measures energies only"
        return f"no {what} structure has force labels: {effect}"
    effect = "their force loss is masked" if what == "training" else "force errors are over the others"
    return f"{missing} of {total} {what} structures have no force labels: {effect}"


def run_pretrain(settings: PretrainSettings, resume: bool = False, log=print) -> dict:
    from fastcsi.data import open_dataset

    settings, source = resolve_data_source(settings)  # before the resume check: it compares resolved settings
    cfg = settings.train
    device, ctx, log = start_run(cfg.max_threads, settings.device, log)
    rundir = Path(settings.rundir)
    profiler = Profiler(device=device)
    record = rundir / "pretrain.json"
    if resume and not record.is_file():
        log(f"nothing to resume in {rundir} (no pretrain.json: the run stopped before set-up finished); "
            "starting from scratch")
        resume = False
    if resume:
        previous = _check_resume(record, settings)
        if previous.get("status") == "running":
            log(f"{record}: the previous run never recorded an end (killed, or its machine stopped); "
                "resuming from its last checkpoint")
    elif ctx.is_main and (rundir / "last.pt").exists():
        raise FastCSIError(f"{rundir}: already holds a run; pass --resume to continue it or choose another -o")
    if not settings.data:
        raise FastCSIError("pretraining needs at least one --data PATH (or --from-selection / --mix csi:MIX.json)")
    if settings.samples is None:
        raise FastCSIError("pretraining needs --samples N (or --from-selection, whose set fixes N)")
    if settings.samples < 1:
        raise FastCSIError(f"--samples must be >= 1, got {settings.samples}")

    with profiler.stage("read"):
        datasets = [open_dataset(p, skip_unreadable=settings.skip_unreadable, **settings.data_options) for p in settings.data]
        n_val = settings.val_samples if settings.val_samples is not None else min(max(settings.samples // 10, 1), 1000)
        train_pairs, val_pairs, weights = draw_training_data(settings, source, datasets, n_val, cfg.seed)
        train = _read(datasets, train_pairs, settings.data, "training sample", settings.progress and ctx.is_main)
        val = _read(datasets, val_pairs, settings.data, "validation sample", settings.progress and ctx.is_main)

    targets = ("energy", "forces")
    normalizer = Normalizer.fit(train, targets)
    overrides = {**settings.model_overrides, **backbones.task_overrides(targets, settings.forces)}
    gemnet = backbones.build(settings.model, cfg.seed, overrides)
    model = NormalizedModel(gemnet, normalizer, gradient_forces=backbones.uses_gradient_forces(gemnet))

    steps_per_epoch = math.ceil(settings.samples / cfg.batch_size)
    per_dataset = {str(settings.data[k]): int((train_pairs[:, 0] == k).sum()) for k in range(len(datasets))}
    budget = {"N": settings.samples, "E": cfg.epochs, "C": settings.samples * cfg.epochs,
              "batch_size": cfg.batch_size, "steps_per_epoch": steps_per_epoch,
              "steps": steps_per_epoch * cfg.epochs, "world_size": ctx.world_size,
              "validation_structures": len(val), "per_dataset": per_dataset,
              "mixture_weights": [float(w) for w in weights],
              "data_source": {k: v for k, v in source.items() if k not in ("entries", "components", "fingerprints")}}
    log(f"budget: N = {budget['N']} structures x E = {budget['E']} epochs = C = {budget['C']} structure-visits; "
        f"{budget['steps']} optimizer steps of {cfg.batch_size} ({steps_per_epoch} per epoch) on {ctx.world_size} "
        f"process(es), {device}; validation on {len(val)} held-out structures")
    log("training sample per dataset: " + ", ".join(f"{Path(p).name}: {n}" for p, n in per_dataset.items()))
    budget["validation_per_dataset"] = {str(settings.data[k]): int((val_pairs[:, 0] == k).sum())
                                        for k in range(len(datasets))}
    log("validation sample per dataset (by the same weights): "
        + ", ".join(f"{Path(p).name}: {n}" for p, n in budget["validation_per_dataset"].items()))
    log(describe_source(source))
    for structures, what in ((train, "training"), (val, "validation")):
        missing = sum(s.forces is None for s in structures)
        budget[f"{what}_without_forces"] = missing
        note = forces_note(missing, len(structures), what)
        if note:
            log(note)
    if ctx.is_main:
        rundir.mkdir(parents=True, exist_ok=True)
        _write_record(record, settings, budget, datasets, normalizer, gemnet, status="running")

    try:
        trainer = Trainer(model, cfg, train, val, targets, rundir, device=device, ctx=ctx, profiler=profiler,
                          progress=settings.progress, log=log, settings=settings.to_dict(), trace=settings.trace)
        t0 = time.perf_counter()
        with backbones.graph_timing(gemnet, profiler):
            result = trainer.fit(resume=resume)
    except BaseException as exc:
        # the record must not say "running" for a run that ended; a SIGKILL cannot be recorded (see resume)
        if ctx.is_main:
            interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
            message = "interrupted (SIGINT)" if interrupted else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _write_record(record, settings, budget, datasets, normalizer, gemnet,
                          status="interrupted" if interrupted else "failed",
                          results={"error": f"{type(exc).__name__}: {message}" if not interrupted else message})
        raise
    summary = {"steps": result.steps, "epochs_done": result.epochs_done, "interrupted": result.interrupted,
               "train_seconds": time.perf_counter() - t0, "last_epoch": result.history[-1] if result.history else {}}
    if ctx.is_main:
        if not result.interrupted:
            with trainer.ema.applied(trainer.model):
                backbones.save_backbone(gemnet, rundir / backbones.BACKBONE_FILE, extra={
                    "kind": "pretrain", "data": [str(Path(p).resolve()) for p in settings.data],
                    "samples": settings.samples, "epochs": cfg.epochs, "seed": cfg.seed,
                    "normalizer": normalizer.to_dict(), "ema": cfg.ema_decay > 0,
                })
            log(f"backbone (EMA weights) written to {rundir / backbones.BACKBONE_FILE}")
        profiler.stop()
        profiler.write(rundir, settings=settings.to_dict(), title="Pretraining profile")
        _write_record(record, settings, budget, datasets, normalizer, gemnet,
                      status="interrupted" if result.interrupted else "done", results=summary)
    ctx.barrier()
    return {"budget": budget, **summary, "rundir": str(rundir), "rank": ctx.rank}


def _write_record(path, settings, budget, datasets, normalizer, gemnet, status, results=None):
    payload = {
        "kind": "fastcsi-pretrain",
        "status": status,
        "settings": settings.to_dict(),
        "budget": budget,
        "data": [{"path": str(Path(p).resolve()), "structures": len(d),
                  "fingerprint": getattr(d, "fingerprint", None), "units_note": d.units_note,
                  "skipped_unreadable": list(d.skipped)}
                 for p, d in zip(settings.data, datasets)],
        "model": {"name": settings.model, "hparams": gemnet.hparams,
                  "parameters": sum(p.numel() for p in gemnet.parameters())},
        "normalizer": normalizer.to_dict(),
        "results": results or {},
        "versions": versions(),
        "process": {"pid": os.getpid(), "host": platform.node()},
    }
    with atomic_write(path) as fh:
        json.dump(payload, fh, indent=1, default=str)


def _check_resume(record: Path, settings: PretrainSettings):
    try:
        previous = json.loads(record.read_text())
        old = previous["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise FastCSIError(f"{record}: not a readable pretrain.json; cannot resume from it") from None
    new = settings.to_dict()
    keys = ("data", "samples", "mix", "sampling", "model", "model_overrides", "forces", "selection")
    changed = [k for k in keys if old.get(k) != new.get(k)]
    changed += [f"train.{k}" for k in ("epochs", "batch_size", "seed", "lr") if old["train"].get(k) != new["train"].get(k)]
    if changed:
        raise FastCSIError(f"{record}: cannot resume with different settings ({', '.join(changed)}); "
                           "use the original command line plus --resume")
    return previous


def describe_source(source: dict) -> str:
    """One line on where the training structures came from (the budget printout)."""
    if source["kind"] == "selection":
        return (f"data: exactly the {source['budget']} structures of {source['file']} "
                f"({source['level']}-level CSI-optimal selection, fingerprints verified)")
    if source["kind"] == "csi":
        optimum = (source.get("csi") or {}).get("optimum")
        csi_text = f", analytic CSI {optimum:.4g}" if optimum is not None else ""
        return (f"data: fresh seeded draws with the {source['level']}-level CSI-optimal weights of "
                f"{source['file']}{csi_text}")
    return f"data: {source['sampling']} draws within datasets, mixture {source['mix']}"


def pretrain(data, samples: int, *, epochs: int = 2, rundir="runs/pretrain", resume: bool = False, log=print,
             **options) -> dict:
    """Pretrain GemNet-OC on energy and forces of ``samples`` structures of ``data`` (a path or a
    list of paths) for ``epochs`` epochs, as ``fastcsi pretrain`` does; returns its summary.

    ``options``: any :class:`PretrainSettings` field (``mix``, ``sampling``, ``model``, ``forces``,
    ``model_overrides``, ``device``, ...) or :class:`~fastcsi.train.config.TrainConfig` field
    (``lr``, ``batch_size``, ``seed``, ...; defaults: ``PRETRAIN_DEFAULTS``)."""
    from fastcsi.train.config import PRETRAIN_DEFAULTS

    train_fields = set(PRETRAIN_DEFAULTS.to_dict())
    train = PRETRAIN_DEFAULTS.replace(epochs=epochs, **{k: v for k, v in options.items() if k in train_fields})
    rest = {k: v for k, v in options.items() if k not in train_fields}
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    try:
        settings = PretrainSettings(data=paths, samples=samples, epochs=epochs, rundir=str(rundir), train=train, **rest)
    except TypeError as exc:
        raise FastCSIError(f"pretrain: {exc}") from None
    return run_pretrain(settings, resume=resume, log=log)

