"""One thread policy for the calculator, predict / evaluate and training (``threads=`` / ``--threads``):
``auto`` gives a small model one intra-op thread on CPU (torch's default threads stalled MD 5-700x on
a busy machine), and the CLI, whose process it owns, lets idle OpenMP workers sleep."""
import os
import subprocess
import sys

import pytest
import torch
from ase.build import molecule

from fastcsi.calculator import FastCSICalculator
from fastcsi.errors import FastCSIError
from fastcsi.threads import SMALL_MODEL_PARAMETERS, threads_for


@pytest.fixture(scope="module")
def tiny():
    from fastcsi._bench.calculator import tiny_model

    return tiny_model("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_rule(tiny):
    big = torch.nn.Linear(SMALL_MODEL_PARAMETERS, 1)
    assert threads_for(tiny.network, "cpu", None) == 1
    assert threads_for(big, "cpu", None) is None  # torch's own default
    assert threads_for(tiny.network, "cuda:0", None) is None
    assert threads_for(tiny.network, "cpu", 3) == 3


def _threads_seen_by_predict(model, monkeypatch):
    seen = []
    predict = type(model).predict
    monkeypatch.setattr(type(model), "predict",
                        lambda self, *a, **k: seen.append(torch.get_num_threads()) or predict(self, *a, **k))
    return seen


def test_calculator_auto_predicts_on_one_thread_and_leaves_the_host_setting(tiny, two_threads, monkeypatch):
    seen = _threads_seen_by_predict(tiny, monkeypatch)
    atoms = molecule("CH3CH2OH")
    atoms.calc = FastCSICalculator(tiny)  # threads="auto" by default
    atoms.get_forces()
    assert seen == [1] and torch.get_num_threads() == 2
    atoms.calc = FastCSICalculator(tiny, threads=2)
    atoms.get_potential_energy()
    assert seen == [1, 2]


@pytest.mark.parametrize("bad", ["many", 0, -1])
def test_a_bad_thread_count_is_a_user_error(tiny, bad):
    with pytest.raises(FastCSIError, match="--threads"):
        FastCSICalculator(tiny, threads=bad)


def test_predict_and_evaluate_load_with_the_policy(tiny, two_threads, monkeypatch):
    import fastcsi.inference
    from fastcsi.cli import inference as cli_inference

    monkeypatch.setattr(fastcsi.inference, "load_model", lambda *a, **k: tiny)
    cli_inference._load("run", "cpu", "float32", "auto")
    assert torch.get_num_threads() == 1
    cli_inference._load("run", "cpu", "float32", "2")
    assert torch.get_num_threads() == 2


def test_training_auto_runs_a_small_model_on_one_thread(two_threads, tmp_path):
    from fastcsi._bench.train_step import ethanol_structures
    from fastcsi.model import build_model
    from fastcsi.train.config import TrainConfig
    from fastcsi.train.loop import Trainer
    from fastcsi.train.normalization import NormalizedModel, Normalizer

    structures = ethanol_structures(2)
    model = NormalizedModel(build_model("gemnet-oc-tiny", direct_forces=True), Normalizer.fit(structures))
    seen = []
    step = Trainer.train_step
    cfg = TrainConfig(epochs=1, batch_size=2, amp=False)  # max_threads 0: auto, as --threads auto gives
    trainer = Trainer(model, cfg, structures, [], ("energy", "forces"), tmp_path, device="cpu", progress=False,
                      log=lambda *a, **k: None)
    trainer.train_step = lambda *a, **k: seen.append(torch.get_num_threads()) or step(trainer, *a, **k)
    trainer.fit()
    assert seen and set(seen) == {1}


PROBE = "import os, sys; from fastcsi.cli.app import main\ntry: main(['--version'])\nexcept SystemExit: pass\n" \
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_lets_idle_openmp_workers_sleep_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == f"{expected} False", out.stdout + out.stderr
