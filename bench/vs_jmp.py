"""Benchmark: fastcsi's GemNet-OC-S against JMP's own GemNet-OC-S code, same inputs, same run.

Two workloads, each timed on the identical batch by bench/harness.py, JMP and ours round-robin (one
call of each per round; the machine is shared, so only same-run ratios mean anything):
  extract  per-atom features: graph construction + backbone forward, inference (ours:
           ``extract_features(layer="final")``; JMP: ``generate_graphs`` per structure, collate,
           embedding + backbone under no_grad)
  train    one AdamW step with direct forces: graphs + forward + (energy L1 + force L2) loss +
           backward + AdamW (ours: GemNetOC in train mode; JMP: its MD22 fine-tuning module)
Cases: 32 rattled ethanol molecules (non-periodic, 12 Å) and 8 rattled Cu(111) 3x3x9 slabs
(81 atoms, periodic); --quick: 4 molecules and 1 slab. JMP runs in its own environment
(``/tmp/gemnet_ref``, see tools/make_gemnet_reference.py for its stand-ins) as a worker subprocess;
it builds the model with seeded weights and random non-zero scale factors, and ours loads that very
state_dict (``load_backbone``). Reference: ours with every op on its plain reference path
(bench.harness.REFERENCE_PATH), same weights: extract compares final node features, train the
loss of the first step (every method's check call is its first step, from the same weights);
tolerance 1e-3 relative (float32, model.py's float32 row). JMP's features are fetched from the
worker after its call, outside the timing. On a lattice the float32 max-neighbour cut can differ
by an edge between the two codes: a JMP row that then fails its check is reported FAILED, not
timed. Without the JMP environment (CI) the JMP rows are skipped with a note and ours is still timed.

Ours runs as the CLI runs it, with fastcsi.utils.tune_allocator() (--no-malloc-tuning: plain glibc).

    python bench/vs_jmp.py [--quick] [--threads 2] [--cases ethanol32,cu_slab8] [--ops extract,train]
                           [--no-malloc-tuning] [--out x.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastcsi._bench.harness import REFERENCE_PATH, Case, Method, relative_error, script_main

KERNEL = "vs_jmp"
REPO = Path(__file__).resolve().parent.parent
JMP_ROOT = Path(os.environ.get("FASTCSI_JMP_REF", "/tmp/gemnet_ref"))
CUTOFF = 12.0
FEATURE_RTOL = 1e-3  # float32, relative to the largest feature magnitude (model.py's float32 row)


# --------------------------------------------------------------------------------------
# Inputs (plain numpy: both environments read them)
# --------------------------------------------------------------------------------------
def make_case(name: str, quick: bool) -> list[dict]:
    from ase.build import fcc111, molecule

    rng = np.random.default_rng(0)
    out = []
    if name == "ethanol32":
        for _ in range(4 if quick else 32):
            a = molecule("CH3CH2OH")
            out.append(dict(numbers=a.numbers, pos=a.positions + rng.normal(0, 0.05, a.positions.shape),
                            cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), tags=np.full(len(a), 2)))
    elif name == "cu_slab8":
        for _ in range(1 if quick else 8):
            slab = fcc111("Cu", size=(3, 3, 9), a=3.61, vacuum=7.0)
            z = slab.positions[:, 2]
            tags = np.where(z > z.max() - 0.5, 1, 0)  # OC20: surface layer 1, sub-surface 0
            # the rattle breaks the lattice's distance ties at the max-neighbour cut
            out.append(dict(numbers=slab.numbers, pos=slab.positions + rng.normal(0, 0.05, slab.positions.shape),
                            cell=slab.cell.array.copy(), pbc=np.ones(3, bool), tags=tags))
    else:
        raise SystemExit(f"unknown case {name!r}; use ethanol32 or cu_slab8")
    return out


# --------------------------------------------------------------------------------------
# The JMP worker (runs inside JMP's venv; never imports fastcsi)
# --------------------------------------------------------------------------------------
def _jmp_worker(args) -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # JMP prints to stdout; keep the protocol channel clean
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "tools"))
    import make_gemnet_reference as ref

    ref.install_stand_ins()
    sys.path.insert(0, str(args.jmp_src / "src"))
    import jmp.utils.goc_graph as goc_graph
    from jmp.models.gemnet.config import BackboneConfig
    from jmp.modules.scaling.scale_factor import ScaleFactor
    from jmp.tasks.config import AdamWConfig
    from jmp.tasks.finetune import md22
    from jmp.tasks.finetune.base import FinetuneConfigBase, PrimaryMetricConfig
    from torch_geometric.data import Batch

    goc_graph.radius_graph = ref._radius_graph_all_pairs
    ref.CUTOFF = CUTOFF

    FinetuneConfigBase.set_seed(0)
    config = md22.MD22Config.draft()
    config.molecule = "DHA"  # names the task only
    config.backbone = BackboneConfig.base()  # JMP-S
    config.embedding.embedding_size = config.backbone.emb_size_atom
    config.optimizer = AdamWConfig(lr=1e-5, amsgrad=False, betas=(0.9, 0.95), weight_decay=0.1)
    config.primary_metric = PrimaryMetricConfig(name="force_mae", mode="min")
    config.batch_size = 1
    config = config.finalize()
    torch.manual_seed(0)
    model = md22.MD22Model(config).float()
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, ScaleFactor):  # fitted-looking values, so the multiply is exercised
            module.scale_factor.fill_(float(0.5 + torch.rand((), generator=gen)))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.state_out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)

    cases = torch.load(args.cases, weights_only=False)

    def datas(structures):
        out = []
        for s in structures:
            d = ref.make_data(s, requires_grad=False)
            d.pos = d.pos.float()
            out.append((d, bool(s["pbc"].any())))
        return out

    prepared = {name: datas(structs) for name, structs in cases.items()}

    def graphs(name):
        return Batch.from_data_list([ref.with_graphs(model, d.clone(), p) for d, p in prepared[name]])

    def features(name):
        model.eval()
        with torch.no_grad():
            batch = graphs(name)
            return model.backbone(batch, h=model.embedding(batch.atomic_numbers - 1))["energy"]

    def train(name):
        model.train()
        batch = graphs(name)
        preds = model(batch)
        n = batch.pos.shape[0]
        loss = preds["y"].abs().mean() + (preds["force"] - 0.01 * torch.ones(n, 3)).pow(2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    reply.write(json.dumps({"ready": True}) + "\n")
    last = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "fetch":  # the last features, for the check (outside the timed calls)
            torch.save(last["features"], cmd["save"])
            reply.write(json.dumps({"saved": cmd["save"]}) + "\n")
            continue
        loss = None
        if cmd["op"] == "extract":
            last["features"] = features(cmd["case"])
        else:
            loss = train(cmd["case"])
        reply.write(json.dumps({"loss": loss}) + "\n")


class JMPWorker:
    def __init__(self, cases_path: str, state_path: str, threads: int):
        python = JMP_ROOT / "venv" / "bin" / "python"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("TRITON_INTERPRET", None)
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--jmp-worker", "--jmp-src", str(JMP_ROOT / "jmp"),
             "--cases", cases_path, "--state-out", state_path, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("JMP worker exited (run it by hand with --jmp-worker to see why)")
        return json.loads(line)

    def call(self, op: str, case: str = "", save: str | None = None) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "case": case, "save": save}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


# --------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------
def our_batch(structures):
    from fastcsi.data.batch import collate
    from fastcsi.data.structure import Structure

    return collate([Structure(s["numbers"], s["pos"], cell=s["cell"],
                              pbc=s["pbc"], tags=s["tags"], id=str(i)) for i, s in enumerate(structures)],
                   dtype=torch.float32)


class Ours:
    def __init__(self, state_path: str | None):
        from fastcsi.model import build_model, load_backbone
        from fastcsi.train.loop import make_adamw

        if state_path is not None:
            self.model = load_backbone(state_path, base="gemnet-oc-s", cutoff=CUTOFF).float()
        else:
            torch.manual_seed(0)
            self.model = build_model("gemnet-oc-s", cutoff=CUTOFF).float()
        # Our training loop's optimizer (fused AdamW where torch has it): the step users get.
        self.optimizer = make_adamw(self.model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)

    def features(self, batch):
        from fastcsi.model import extract_features

        return extract_features(self.model, batch)

    def train(self, batch):
        self.model.train()
        pred = self.model(batch)
        loss = pred["energy"].abs().mean() + (pred["forces"] - 0.01).pow(2).sum(-1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


class JMPFeatures:
    """JMP's features of its last extract call, fetched from the worker only when the check reads
    them (``np.asarray``), so the timed call is the worker's call alone."""

    def __init__(self, worker: "JMPWorker", path: str):
        self.worker, self.path = worker, path

    def __array__(self, dtype=None, copy=None):
        self.worker.call("fetch", save=self.path)
        return torch.load(self.path).double().numpy().astype(dtype or np.float64)


def jmp_available() -> bool:
    return (JMP_ROOT / "venv" / "bin" / "python").exists() and (JMP_ROOT / "jmp" / "src" / "jmp").is_dir()


def cases(quick: bool = False, device: str = "cpu", sizes=None, names=("ethanol32", "cu_slab8"),
          ops=("extract", "train"), malloc_tuning: bool = True):
    """The cases; the JMP worker lives as long as this generator (closed when it is exhausted)."""
    from fastcsi.utils import tune_allocator

    if device != "cpu":
        raise SystemExit("vs_jmp compares CPU code paths; use --device cpu")
    if malloc_tuning:
        tune_allocator()  # ours as the CLI runs it; JMP's worker is a separate process
    names = tuple(names.split(",")) if isinstance(names, str) else tuple(names)
    ops = tuple(ops.split(",")) if isinstance(ops, str) else tuple(ops)
    threads = torch.get_num_threads()
    data = {name: make_case(name, quick) for name in names}
    skip = None if jmp_available() else f"JMP reference environment {JMP_ROOT} absent: JMP not timed"
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, state_path = f"{tmp}/cases.pt", f"{tmp}/jmp_state.pt"
        torch.save(data, cases_path)
        jmp = JMPWorker(cases_path, state_path, threads) if skip is None else None
        try:
            state = state_path if jmp else None
            for op in ops:
                for name in names:
                    # fresh models per case: every method's first (check) call starts from the same weights
                    ours, oracle = Ours(state), Ours(state)

                    def inputs(name=name):
                        return our_batch(data[name])

                    if op == "extract":
                        def reference(batch, oracle=oracle):
                            with torch.no_grad(), override_all():
                                return oracle.features(batch)

                        mine = Method("fastcsi", "ours", lambda b, ours=ours: ours.features(b), "float32", FEATURE_RTOL)
                        theirs = Method("JMP", "baseline", (lambda b, name=name: (
                            jmp.call("extract", name), JMPFeatures(jmp, f"{tmp}/f_{name}.pt"))[1]) if jmp else None,
                            "float32", FEATURE_RTOL, skip=skip)
                    else:
                        def reference(batch, oracle=oracle):
                            with override_all():
                                return oracle.train(batch)

                        mine = Method("fastcsi", "ours", lambda b, ours=ours: ours.train(b), "float32", FEATURE_RTOL)
                        theirs = Method("JMP", "baseline", (lambda b, name=name: jmp.call("train", name)["loss"])
                                        if jmp else None, "float32", FEATURE_RTOL, skip=skip)
                    atoms = int(sum(len(s["numbers"]) for s in data[name]))
                    yield Case(KERNEL, f"{op} {name}, GemNet-OC-S float32, 12 Å, {threads} threads", len(data[name]),
                               "structures", atoms, "atoms", inputs, reference, relative_error, [mine, theirs],
                               repeats=1 if quick else 5)
        finally:
            if jmp:
                jmp.close()


def override_all():
    from fastcsi.backend import override

    return override(**REFERENCE_PATH)


def _arguments(parser):
    parser.add_argument("--cases", dest="names", default="ethanol32,cu_slab8")
    parser.add_argument("--ops", default="extract,train")
    parser.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                        help="leave glibc malloc as it is in our process (the CLI tunes it: fastcsi.utils.tune_allocator)")
    return ["names", "ops", "malloc_tuning"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--jmp-worker" in argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--jmp-worker", action="store_true")
        parser.add_argument("--jmp-src", type=Path)
        parser.add_argument("--cases")
        parser.add_argument("--state-out")
        parser.add_argument("--threads", type=int, default=2)
        return _jmp_worker(parser.parse_args(argv)) or 0
    if "--threads" not in argv:
        argv += ["--threads", "2"]
    return script_main(KERNEL, cases, __doc__, argv, _arguments)


if __name__ == "__main__":
    sys.exit(main())
