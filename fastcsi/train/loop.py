"""The one training loop behind ``pretrain`` and ``finetune``.

Per optimizer step: take the next global batch of the epoch's seeded order, this rank's share of
it, collate, forward (bf16 autocast on CUDA), loss normalised by the global counts, backward,
all-reduce gradients (data parallel), clip, AdamW step at the scheduled learning rate, EMA update.
Per epoch: validation with the EMA weights, a metrics row, a checkpoint, early stopping.

Resume is exact because every source of state is either a pure function of (seed, epoch, step)
(data order, learning rate) or stored in the checkpoint (weights, optimizer moments, EMA shadow,
RNG states, the partial epoch's running sums, metric rows, early-stopping counters).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastcsi.data import atom_chunks, collate
from fastcsi.errors import FastCSIError
from fastcsi.profiling import Profiler, torch_trace
from fastcsi.threads import apply_threads
from fastcsi.train import checkpoint as ckpt
from fastcsi.train import layer_lr
from fastcsi.train.config import TrainConfig
from fastcsi.train.distributed import DistContext, all_reduce_gradients, rank_share
from fastcsi.train.ema import EMA
from fastcsi.train.losses import combine, loss_terms, normalized_labels
from fastcsi.train.metrics import MetricsLogger, format_epoch_line
from fastcsi.train.normalization import NormalizedModel
from fastcsi.train.schedule import warmup_cosine_factor


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded visiting order of the training set in ``epoch`` (same on every rank)."""
    return np.random.default_rng([int(seed), int(epoch), 0x7A1]).permutation(n)


def make_adamw(groups, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each tensor, on CPU since torch 2.4, instead of
    the default per-parameter loop of small ops); the default where unsupported."""
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def primary_metric(targets) -> str:
    """What early stopping and model selection watch: forces when trained, else the first target."""
    return "forces" if "forces" in targets else list(targets)[0]


@dataclass
class FitResult:
    steps: int
    epochs_done: int
    interrupted: bool
    stopped_early: bool
    best_val: float
    best_epoch: int
    history: list


class Trainer:
    """Train a :class:`NormalizedModel` on in-memory structures.

    ``train_set`` / ``val_set``: sequences of :class:`fastcsi.data.Structure` (already validated).
    ``targets``: ("energy", "forces") or ("energy",) or a graph-level target name.
    """

    def __init__(self, model: NormalizedModel, config: TrainConfig, train_set, val_set, targets,
                 rundir, device="cpu", ctx: DistContext | None = None, profiler: Profiler | None = None,
                 progress: bool = True, log=print, settings: dict | None = None, trace: bool = False,
                 dtype=torch.float32):
        self.model = model.to(device)
        self.config = config
        self.train_set = list(train_set)
        self.val_set = list(val_set)
        self.targets = tuple(targets)
        self.rundir = Path(rundir)
        self.device = torch.device(device)
        self.ctx = ctx or DistContext()
        self.profiler = profiler or Profiler(device=self.device)
        self.progress = progress and self.ctx.is_main
        self.log = log if self.ctx.is_main else (lambda *a, **k: None)
        self.settings = dict(settings or {})
        self.trace = trace
        self.dtype = dtype
        self.normalizer = model.normalizer
        if not self.train_set:
            raise FastCSIError("the training set is empty")
        self.train_atoms = np.array([s.n_atoms for s in self.train_set], dtype=np.int64)
        # atoms whose forces count in the loss (structures without force labels are masked out)
        self.train_force_atoms = np.array([s.n_atoms if s.forces is not None else 0 for s in self.train_set],
                                          dtype=np.int64)
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(round(config.warmup_fraction * self.total_steps))
        self.optimizer = make_adamw(self._param_groups(), lr=config.lr, betas=config.betas)
        self.ema = EMA(self.model, config.ema_decay)
        self.weights = {"energy": config.energy_weight, "forces": config.force_weight}
        for t in self.targets:
            self.weights.setdefault(t, config.target_weight)
        self.metric_name = primary_metric(self.targets)
        if self.metric_name == "forces" and self.val_set and all(s.forces is None for s in self.val_set):
            self.metric_name = "energy"  # pretraining validation on structures without forces (ANI-1)
        self.metrics = MetricsLogger(self.rundir, enabled=self.ctx.is_main)
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best_val = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self._running = self._zero_running()

    def _param_groups(self) -> list:
        """AdamW groups: decayed (matrices) vs not (biases, scalar scales, standard AdamW practice),
        times the layer-wise learning-rate scales of ``config.layer_lr`` (see layer_lr.py)."""
        cfg = self.config
        scales = {}
        backbone = getattr(self.model, "backbone", None)
        if not layer_lr.is_off(cfg.layer_lr):
            if "num_blocks" not in getattr(backbone, "hparams", {}):
                raise FastCSIError("layer-wise learning rates (--layer-lr) need a GemNet-OC backbone")
            spec = layer_lr.parse_spec(cfg.layer_lr, int(backbone.hparams["num_blocks"]))
            scales = layer_lr.parameter_scales(backbone, spec, prefix="backbone.")
        groups = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            decayed = p.ndim >= 2
            scale = scales.get(name, 1.0)
            group = groups.setdefault((decayed, scale), {
                "params": [], "weight_decay": cfg.weight_decay if decayed else 0.0, "lr_scale": scale,
                "min_lr_factor": layer_lr.floor_factor(cfg.min_lr_factor, scale)})
            group["params"].append(p)
        return [groups[k] for k in sorted(groups, key=lambda k: (-k[1], not k[0]))]

    # ------------------------------------------------------------------ state
    def _zero_running(self) -> dict:
        return {"loss_sum": 0.0, "steps": 0, **{f"{t}_abs": 0.0 for t in self.targets},
                **{f"{t}_n": 0 for t in self.targets}, "structures": 0, "atoms": 0, "seconds": 0.0}

    def state_dict(self) -> dict:
        return {
            "kind": "fastcsi-train-state",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "running": dict(self._running),
            "metrics_rows": list(self.metrics.rows),
            "rng": ckpt.rng_state(),
            "config": self.config.to_dict(),
            "normalizer": self.normalizer.to_dict(),
            "targets": list(self.targets),
            "settings": self.settings,
            "n_train": len(self.train_set),
        }

    def load_state_dict(self, state: dict):
        if state.get("kind") != "fastcsi-train-state":
            raise FastCSIError("checkpoint is not a fastcsi training state; cannot resume from it")
        if state["n_train"] != len(self.train_set) or state["config"]["batch_size"] != self.config.batch_size \
                or state["config"]["seed"] != self.config.seed:
            raise FastCSIError(
                "cannot resume: the run directory's checkpoint was made with another training set size, "
                "batch size or seed"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_val = float(state["best_val"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self._running = dict(state["running"])
        self.metrics.restore(state["metrics_rows"])
        ckpt.set_rng_state(state["rng"])

    def save_last(self):
        if self.ctx.is_main:
            with self.profiler.stage("checkpoint"):
                ckpt.save(self.rundir / ckpt.LAST, self.state_dict())
        self.ctx.barrier()

    # ------------------------------------------------------------------ batches
    def _batch(self, structures):
        batch = collate(structures, dtype=self.dtype, device=self.device)
        labels = {
            k: torch.as_tensor(v, dtype=torch.float32, device=self.device)
            for k, v in normalized_labels(structures, self.normalizer, self.targets).items()
        }
        return batch, labels

    def _autocast(self):
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _global_counts(self, global_idx) -> dict:
        counts = {}
        for t in self.targets:
            counts[t] = int(self.train_force_atoms[global_idx].sum()) if t == "forces" else len(global_idx)
        return counts

    # ------------------------------------------------------------------ training
    def _forward_backward(self, structures, counts) -> float:
        with self.profiler.stage("data"):
            batch, labels = self._batch(structures)
        with self.profiler.stage("forward"), self._autocast():
            pred = self.model(batch)
            terms = loss_terms(pred, labels, self.normalizer, self.targets)
            loss = combine(terms, self.weights, counts)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.step} (epoch {self.epoch})")
        with self.profiler.stage("backward"):
            loss.backward()
        for t, (_, abs_sum, _, n_err) in terms.items():
            self._running[f"{t}_abs"] += float(abs_sum)
            self._running[f"{t}_n"] += int(n_err)
        self._running["structures"] += batch.num_structures
        self._running["atoms"] += batch.num_atoms
        self.profiler.count(structures=batch.num_structures, atoms=batch.num_atoms)
        return float(loss.detach())

    def train_step(self, global_idx) -> float:
        cfg = self.config
        local_idx = rank_share(global_idx, self.ctx)
        for group in self.optimizer.param_groups:
            factor = warmup_cosine_factor(self.step, self.total_steps, self.warmup_steps,
                                          cfg.warmup_start_factor, group["min_lr_factor"])
            group["lr"] = cfg.lr * group["lr_scale"] * factor
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        if len(local_idx):
            with self.profiler.stage("data"):
                structures = [self.train_set[i] for i in local_idx]
            counts = self._global_counts(global_idx)
            # the loss is a sum over structures divided by global counts: chunks add up to the whole
            for chunk in atom_chunks(structures, cfg.max_atoms_per_batch):
                loss_value += self._forward_backward(chunk, counts)
        with self.profiler.stage("optimizer"):
            if self.ctx.enabled:
                all_reduce_gradients(self.model.parameters(), self.ctx)
            if cfg.clip_algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_value)
            elif cfg.clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.model.parameters(), cfg.clip_value)
            self.optimizer.step()
            if cfg.ema_decay > 0:
                self.ema.update(self.model)
        self._running["loss_sum"] += loss_value
        self._running["steps"] += 1
        self.step += 1
        return loss_value

    def fit(self, resume: bool = False) -> FitResult:
        cfg = self.config
        # the one thread policy of every command (a tiny model on a busy CPU stalls with torch's default)
        apply_threads(self.model, self.device, cfg.max_threads or None)
        last = self.rundir / ckpt.LAST
        if resume and not last.is_file():
            # an interrupt before the first checkpoint leaves nothing to continue: the same run from step 0
            self.log(f"nothing to resume in {self.rundir} (no {ckpt.LAST} yet: the run stopped before its first "
                     "checkpoint); starting from scratch")
            resume = False
        if resume:
            self.load_state_dict(ckpt.load(last, kind="fastcsi-train-state"))
            self.log(f"resuming at step {self.step} (epoch {self.epoch + 1}, step {self.step_in_epoch} of it)")
        else:
            torch.manual_seed(cfg.seed)
        interrupted = stopped_early = False
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True, leave=True)
        try:
            with torch_trace(self.rundir, enabled=self.trace and self.ctx.is_main) as tracer:
                while self.epoch < cfg.epochs and not (interrupted or stopped_early):
                    self.model.train()
                    order = epoch_order(len(self.train_set), cfg.seed, self.epoch)
                    while self.step_in_epoch < self.steps_per_epoch:
                        k = self.step_in_epoch
                        global_idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                        t0 = time.perf_counter()
                        loss = self.train_step(global_idx)
                        self._running["seconds"] += time.perf_counter() - t0
                        self.step_in_epoch += 1
                        tracer.step()
                        if bar is not None:
                            rate = self._running["structures"] / max(self._running["seconds"], 1e-9)
                            bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", struct_s=f"{rate:.1f}")
                            bar.update(1)
                        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                            self.save_last()
                        if cfg.stop_after_steps and self.step >= cfg.stop_after_steps \
                                and self.step < self.total_steps:
                            interrupted = True
                            break
                    if interrupted:
                        self.save_last()
                        break
                    stopped_early = self._end_epoch()
                    self.save_last()
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        return FitResult(self.step, self.epoch, interrupted, stopped_early, self.best_val, self.best_epoch,
                         list(self.metrics.rows))

    def _end_epoch(self) -> bool:
        """Validate, log, keep the best weights; True when early stopping triggers."""
        run = self._running
        sums = torch.tensor([run["loss_sum"], run["structures"], run["atoms"],
                             *[run[f"{t}_abs"] for t in self.targets], *[run[f"{t}_n"] for t in self.targets]],
                            dtype=torch.float64)
        self.ctx.all_reduce_sum(sums)
        n_t = len(self.targets)
        row = {"epoch": self.epoch + 1, "step": self.step,
               "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": run["loss_sum"] / max(run["steps"], 1),
               "train_structures_per_s": float(sums[1]) / max(run["seconds"], 1e-9),
               "train_atoms_per_s": float(sums[2]) / max(run["seconds"], 1e-9)}
        for j, t in enumerate(self.targets):
            row[f"train_{t}_mae"] = float(sums[3 + j]) / max(float(sums[3 + n_t + j]), 1)
        with self.profiler.stage("validation"):
            val = self.evaluate(self.val_set) if self.val_set else {}
        for t, v in val.items():
            row[f"val_{t}_mae"] = v
        self.metrics.log(row)
        self.log(self._format_row(row))
        self.epoch += 1
        self.step_in_epoch = 0
        self._running = self._zero_running()
        current = val.get(self.metric_name, row[f"train_{self.metric_name}_mae"])
        if current < self.best_val - 1e-12:
            self.best_val, self.best_epoch, self.bad_epochs = current, self.epoch, 0
            if self.ctx.is_main:
                with self.profiler.stage("checkpoint"):
                    ckpt.save(self.rundir / ckpt.BEST, {"kind": "fastcsi-best", "epoch": self.epoch,
                                                         "val": current, "weights": self.ema_weights()})
        else:
            self.bad_epochs += 1
        patience = self.config.early_stopping_patience
        if patience and self.bad_epochs >= patience:
            self.log(f"early stopping: no validation improvement in {patience} epochs "
                     f"(best {self.metric_name} MAE {self.best_val:.6g} at epoch {self.best_epoch})")
            return True
        return False

    @staticmethod
    def _format_row(row: dict) -> str:
        return format_epoch_line(row)  # MAEs in meV / meV/Å with their units, as results.json

    def ema_weights(self) -> dict:
        """State dict of the model with the EMA weights in place (what we release and test)."""
        with self.ema.applied(self.model):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, structures, use_ema: bool = True, batch_size: int | None = None) -> dict:
        """MAE per target in physical units (eV, eV/Å, native) over ``structures``, all ranks."""
        batch_size = batch_size or max(self.config.batch_size, 16)
        sums = torch.zeros(2 * len(self.targets), dtype=torch.float64)
        indices = rank_share(np.arange(len(structures)), self.ctx)
        needs_grad = bool(getattr(self.model, "gradient_forces", False)) and "forces" in self.targets
        was_training = self.model.training
        self.model.eval()
        ctx = self.ema.applied(self.model) if use_ema else nullcontext()
        with ctx:
            for start in range(0, len(indices), batch_size):
                chunk = [structures[i] for i in indices[start:start + batch_size]]
                batch, labels = self._batch(chunk)
                with torch.set_grad_enabled(needs_grad), self._autocast():
                    pred = self.model(batch)
                    terms = loss_terms(pred, labels, self.normalizer, self.targets)
                for j, t in enumerate(self.targets):
                    sums[j] += float(terms[t][1])
                    sums[len(self.targets) + j] += terms[t][3]
        self.model.train(was_training)
        self.ctx.all_reduce_sum(sums)
        n_t = len(self.targets)
        # a target that none of these structures has a label for (forces of ANI-1) has no error to report
        return {t: float(sums[j]) / max(float(sums[n_t + j]), 1.0) for j, t in enumerate(self.targets)
                if sums[n_t + j] > 0 or not structures}
