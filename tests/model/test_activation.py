"""The scaled-SiLU op family (activation.py dispatcher, activation_ref.py, activation_cpu.py with the
native CPU kernel csrc/activation.cpp) against float64 references.

Tolerances (float32 native kernel vs float64 torch, both kernels "avx2" and "portable"):
  forward   <= 4 ulps of the float32 result (relative) where |y| >= 1e-30, |y| <= 1e-29 below
  backward  <= 1e-6 * max |grad| absolute, and <= 1e-5 relative where |grad| >= 1e-3 * max
The float64 path of ``silu`` is torch's own (bitwise equal to silu_ref).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastcsi import _native
from fastcsi.errors import FastCSIError
from fastcsi.backend import override
from fastcsi.model.gemnet_oc import activation, activation_ref

needs_native = pytest.mark.skipif(not _native.has("silu_forward"), reason=f"extension not built: {_native.NATIVE_ERROR}")
KERNELS = ["portable"] + (["avx2"] if _native.has("silu_kernel_isa") and _native.native.silu_kernel_isa() == "avx2" else [])


def wide_values(n: int, seed: int = 0) -> torch.Tensor:
    """Normal values, a log-uniform spread over +-[1e-6, 1e2], and the exp clamp edges."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, generator=gen) * 3
    mags = torch.exp(torch.empty(n).uniform_(math.log(1e-6), math.log(100.0), generator=gen))
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    edges = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 86.9, -86.9, 87.0, -87.0, 87.9, -87.9, 88.1, -88.1, 15.9, -15.9])
    return torch.cat([normal, mags * signs, edges]).float()


def reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    x64 = x.double()
    return scale * x64 * torch.sigmoid(x64)


def ulps(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    spacing = torch.from_numpy(np.spacing(np.abs(ref.float().numpy()))).double()
    return (y.double() - ref).abs() / spacing


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [1.0, 1 / 0.6])
def test_forward_within_4_ulps_of_float64(kernel, scale):
    x = wide_values(50_000)
    y = torch.empty_like(x)
    _native.native.silu_forward(x.numpy(), y.numpy(), scale, 2, kernel)
    ref = reference(x, scale)
    big = ref.abs() >= 1e-30
    assert float(ulps(y, ref)[big].max()) <= 4.0
    assert float(y[~big].abs().max()) <= 1e-29  # underflowing tails stay tiny


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_backward_matches_float64_autograd(kernel):
    x = wide_values(40_000, seed=1)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = torch.empty_like(x)
    _native.native.silu_backward(g.numpy(), x.numpy(), out.numpy(), 1 / 0.6, 2, kernel)
    x64 = x.double().requires_grad_()
    (torch.nn.functional.silu(x64) / 0.6 * g.double()).sum().backward()
    ref = x64.grad
    err = (out.double() - ref).abs()
    assert float(err.max()) <= 1e-6 * float(ref.abs().max())
    big = ref.abs() >= 1e-3 * ref.abs().max()
    assert float((err[big] / ref[big].abs()).max()) <= 1e-5


@needs_native
@pytest.mark.parametrize("kernel", KERNELS)
def test_special_values_follow_torch(kernel):
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 100.0, -100.0, 0.0, -0.0])
    y = torch.empty_like(x)
    _native.native.silu_forward(x.numpy(), y.numpy(), 1.0, 1, kernel)
    expected = torch.nn.functional.silu(x)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    finite = ~torch.isnan(expected)
    assert torch.allclose(y[finite], expected[finite], rtol=1e-6, atol=1e-30)


@needs_native
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 31, (1 << 15) + 3, (1 << 17) + 5])
def test_every_length_and_thread_count_give_the_same_bits(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 4
    results = []
    for threads in (1, 2, 3):
        y = torch.empty_like(x)
        _native.native.silu_forward(x.numpy(), y.numpy(), 1.0, threads)
        results.append(y)
    assert all(torch.equal(results[0], r) for r in results[1:])
    if n:
        assert float(ulps(results[0], reference(x, 1.0))[reference(x, 1.0).abs() >= 1e-30].max()) <= 4.0


@needs_native
def test_dispatch_inplace_and_autograd():
    x = torch.randn(300, 70)
    ref = activation_ref.silu_ref(x.clone(), 2.0)
    out = activation.silu(x, 2.0, backend="cpu")
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7) and out.data_ptr() != x.data_ptr()
    with torch.no_grad():
        y = x.clone()
        same = activation.silu(y, 2.0, inplace=True, backend="cpu")
    assert same.data_ptr() == y.data_ptr() and torch.equal(same, out)
    # autograd: the native backward against torch's float32 one
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    g = torch.randn_like(x)
    (activation.silu(a, 2.0, backend="cpu") * g).sum().backward()
    (activation_ref.silu_ref(b, 2.0) * g).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(FastCSIError, match="inplace"):
        activation.silu(x.clone().requires_grad_(), inplace=True, backend="cpu")


def test_float64_and_strided_inputs_use_torch_exactly():
    x = torch.randn(64, 9, dtype=torch.float64)
    assert torch.equal(activation.silu(x, 1 / 0.6), activation_ref.silu_ref(x, 1 / 0.6))
    strided = torch.randn(20, 30)[:, ::3]
    assert torch.equal(activation.silu(strided, 1.5), activation_ref.silu_ref(strided, 1.5))


def test_explicit_backend_errors_are_user_errors():
    with pytest.raises(FastCSIError, match="unknown backend"):
        activation.silu(torch.randn(3), backend="gpu")
    if _native.has("silu_forward"):
        with pytest.raises(FastCSIError, match="float32"):
            activation.silu(torch.randn(3, dtype=torch.float64), backend="cpu")


@needs_native
def test_gemnet_features_same_with_native_and_reference_silu():
    from ase.build import molecule

    from fastcsi.data import batch_from_atoms
    from fastcsi.model import build_model, extract_features

    torch.manual_seed(0)
    model = build_model("gemnet-oc-tiny").float()
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("H2O")])
    native = extract_features(model, batch)
    with override(activation="ref"):
        ref = extract_features(model, batch)
    assert float((native - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_override_reaches_the_dispatcher_and_an_explicit_backend_wins():
    x = torch.randn(40, 30)
    with override(activation="ref"):
        assert torch.equal(activation.silu(x, 1.5), activation_ref.silu_ref(x, 1.5))
        if _native.has("silu_forward"):
            from fastcsi.model.gemnet_oc.activation_cpu import silu_cpu

            assert torch.equal(activation.silu(x, 1.5, backend="cpu"), silu_cpu(x, 1.5))
    with override(activation="cpu"), pytest.raises(FastCSIError, match="float32|unavailable"):
        activation.silu(x.double())  # an overridden backend that cannot run is an error, as an explicit one
