"""Every timed row of every case of every bench script is checked against the op's reference on the
inputs it is timed on, before it is timed: each method of each script's cases, baselines and
controls included, is made to return a perturbed output and must then be FAILED, called once (the
check) and never timed."""
import math

import numpy as np
import pytest
import torch

from fastcsi._bench import harness, suite

# the smallest case of each script (the sizes argument of its cases())
SMALLEST = {"radius": (2,), "gemnet_indices": (1,), "covariance": (512,), "frechet": (16,), "activation": (64,),
            "interaction": (1,), "gemnet": (1,), "train": (1,)}


def perturbed(value):
    """``value`` changed by far more than any tolerance (1% of its scale, or +1 for integers)."""
    if isinstance(value, dict):
        return {k: perturbed(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(perturbed(v) for v in value)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return value + 0.01 * (float(value.abs().max()) if value.numel() else 1.0) + 0.01
        return value + 1
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return value + 0.01 * (float(np.abs(value).max()) if value.size else 1.0) + 0.01
        return value + 1
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return value + 0.01 * abs(value) + 0.01
    raise TypeError(f"no perturbation for {type(value).__name__}")


def test_the_suite_collects_every_op_script():
    assert set(SMALLEST) == set(suite.KERNELS)
    for kernel in suite.KERNELS:
        assert callable(suite.module(kernel).cases), kernel


@pytest.mark.parametrize("kernel", list(SMALLEST))
def test_a_wrong_output_of_any_method_is_failed_and_never_timed(kernel):
    cases = list(suite.module(kernel).cases(True, "cpu", SMALLEST[kernel]))
    assert cases, kernel
    calls = {}
    for case in cases:
        for method in case.methods:
            if method.skip:
                continue

            def wrong(inputs, fn=method.fn, key=(case.name, method.name)):
                calls[key] = calls.get(key, 0) + 1
                return perturbed(fn(inputs))

            method.fn = wrong
    rows = [row for case in cases for row in harness.run_case(case, "cpu", log=lambda *a, **k: None)]
    run = [r for r in rows if r["status"] != "skipped"]
    assert {r["role"] for r in run} >= {"ours", "baseline"}, kernel
    for row in run:
        assert row["status"] == "failed", (kernel, row["case"], row["method"], row["error"], row.get("note"))
        assert row["seconds"] is None and row["times"] == [], (kernel, row["method"])
        assert not math.isfinite(row["error"]) or row["error"] > row["tolerance"]
    assert sorted(calls.values()) == [1] * len(run)  # each ran once: the check, no warm-up, no timing
