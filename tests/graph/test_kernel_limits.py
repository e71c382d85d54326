"""Issue 26: no input crashes the compiled kernels or makes them allocate without bound.

Each limit is tested where it is enforced: the reproduction (bin counts whose product overflowed
int64) and the other refused geometries give one FastCSIError on every CPU backend and dtype; the
byte budgets refuse before allocating, from worker threads too, and never change a result they
allow; absurd thread counts are capped; a process whose threads or memory run out gets a Python
exception, not an abort (a child process under RLIMIT_AS).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest
import torch

from fastcsi._native import has as native_has
from fastcsi._native import native
from fastcsi.data.batch import batch_from_atoms
from fastcsi.errors import FastCSIError
from fastcsi.graph import radius_graph
from fastcsi.graph import periodic
from hostile_geometries import _atoms, repro_structure, same_edges

NATIVE = native_has("radius_batch")
BACKENDS = ["ref"] + (["cpu"] if NATIVE else [])
needs_native = pytest.mark.skipif(not NATIVE, reason="fastcsi._C not built")


@needs_native
def test_python_and_kernel_limits_are_the_same_numbers():
    assert native.radius_limits["max_coordinate"] == periodic.MAX_COORDINATE
    assert native.radius_limits["max_images"] == periodic.MAX_IMAGES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_issue_26_reproduction_is_one_error(backend, dtype):
    batch = batch_from_atoms([repro_structure(), repro_structure()], dtype=dtype)
    with pytest.raises(FastCSIError, match=r"structure 0 of the batch \(id '0'\): atoms span 2\.6e\+10 Å along x"
                                           r".*wrong unit"):
        radius_graph(batch, 6.0, backend=backend)


@needs_native
def test_kernel_refuses_the_reproduction_without_the_python_checks():
    far = repro_structure().positions
    pos = np.concatenate([far, far])
    with pytest.raises(native.InputError, match="structure 0 of the batch: atom 58 is at 2.58e\\+10 A along x"):
        native.radius_batch(pos, np.repeat(np.eye(3)[None], 2, 0), np.zeros((2, 3), bool),
                            np.array([0, 60, 120]), 6.0, 2, False, 0)
    assert issubclass(native.InputError, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_box_inside_the_limits_matches_the_reference(backend):
    """The reproduction's shape at 9.9e5 Å (inside the limit): the bins of each axis are capped
    before their product is formed, and the result is the reference's."""
    positions = [[float(i), 0, 0] for i in range(58)] + [[9.9e5, 0, 0], [0, 9.9e5, 0]]
    batch = batch_from_atoms([_atoms(positions)], dtype=torch.float64)
    graph = radius_graph(batch, 6.0, backend=backend)
    assert same_edges(graph, radius_graph(batch, 6.0, backend="ref"), 6.0) is None
    assert graph.num_edges == 2 * sum(58 - k for k in range(1, 7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_far_thinner_than_the_cutoff_is_one_error(backend):
    cell = np.diag([5.0, 6.0, 1e-4])
    batch = batch_from_atoms([_atoms([[1, 1, 0], [2, 2, 0]], cell=cell, pbc=True)], dtype=torch.float64)
    with pytest.raises(FastCSIError, match=r"needs 4\.2e\+06 periodic images per atom pair \(the limit is 1048576\): its cell is far thinner"):
        radius_graph(batch, 6.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_atom_billions_of_cells_away_is_one_error(backend):
    """A tiny cell and a tiny cutoff (few images) but an atom 5e9 cells out: the wrap shift would
    not fit the kernel's int32."""
    cell = np.diag([1e-4, 5.0, 5.0])
    batch = batch_from_atoms([_atoms([[5e5, 1, 1], [0, 2, 2]], cell=cell, pbc=True)], dtype=torch.float64)
    with pytest.raises(FastCSIError, match="cells away"):
        radius_graph(batch, 1e-5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_periodic_cell_in_the_wrong_unit_is_one_error(backend):
    cell = np.eye(3) * 5e10
    batch = batch_from_atoms([_atoms([[1, 1, 1]], cell=cell, pbc=True)], dtype=torch.float64)
    with pytest.raises(FastCSIError, match="cell entries up to 5e\\+10 Å"):
        radius_graph(batch, 6.0, backend=backend)


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_edge_budget_refuses_before_allocating_even_from_worker_threads(threads):
    """5000 coincident atoms want 25M edges (1.6 GB): over a 64 MiB budget the search stops with one
    error (raised inside the worker threads of the one big structure, rethrown on the caller)."""
    from fastcsi.graph.radius_cpu import search_cpu, threads_used

    batch = batch_from_atoms([_atoms(np.ones((5000, 3)))], dtype=torch.float32)
    assert threads_used([5000], threads) == min(threads, 2)
    with pytest.raises(FastCSIError, match="past .* edges .* memory budget\\): atoms at the same position"):
        search_cpu(batch, 0.5, num_threads=threads, single=True, max_bytes=64 << 20)


@needs_native
def test_a_budget_that_suffices_never_changes_the_result():
    from fastcsi.graph.radius_cpu import search_cpu

    rng = np.random.default_rng(0)
    cell = np.eye(3) * 14.0
    atoms = [_atoms(rng.uniform(0, 14, (700, 3)), cell=cell, pbc=True), _atoms(rng.uniform(0, 5, (30, 3)))]
    batch = batch_from_atoms(atoms, dtype=torch.float64)
    full = search_cpu(batch, 4.0, num_threads=2)
    exact = full[0].shape[1] * native.radius_limits["bytes_per_edge_float64"] + 12 * 27
    for budget in (exact, 10 * exact):
        tight = search_cpu(batch, 4.0, num_threads=2, max_bytes=budget)
        for a, b in zip(full, tight):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(FastCSIError):
        search_cpu(batch, 4.0, num_threads=2, max_bytes=exact // 2)


@needs_native
def test_thread_cap_is_about_atoms_times_512_over_2_to_the_20():
    from fastcsi.graph.radius_cpu import threads_used

    assert threads_used([100] * 40, 8) == 1  # 40 molecules: 400k candidate tests, one thread
    assert threads_used([4096], 8) == 2
    assert threads_used([20000], 8) == 8
    assert threads_used([20000], 10**6) == 9  # the request is capped, then the work decides


@needs_native
def test_absurd_thread_counts_give_the_same_results():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 40, (6000, 3))
    args = (pos, np.eye(3)[None] * 40, np.ones((1, 3), bool), np.array([0, 6000]), 4.0)
    one = native.radius_batch(*args, 1)
    many = native.radius_batch(*args, 10**6)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    x = rng.normal(size=(500, 24))
    np.testing.assert_allclose(native.covariance_moments(x, num_threads=10**6)[2],
                               native.covariance_moments(x, num_threads=1)[2], rtol=1e-12, atol=1e-12)
    if native_has("silu_forward"):
        v = rng.normal(size=(1 << 16) + 5).astype(np.float32)
        y1, y2 = np.empty_like(v), np.empty_like(v)
        native.silu_forward(v, y1, 1.0, 1)
        native.silu_forward(v, y2, 1.0, 10**6)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.skipif(not native_has("covariance_moments"), reason="fastcsi._C not built")
def test_covariance_refuses_a_feature_width_beyond_the_budget():
    from fastcsi.stats import covariance_cpu

    with pytest.raises(native.InputError, match="20000 features need .* GiB"):
        native.covariance_moments(np.zeros((4, 20000), np.float32), max_bytes=1 << 24)
    with mock.patch.object(covariance_cpu._native, "memory_budget_bytes", lambda: 1 << 20):
        with pytest.raises(FastCSIError, match="covariance: 2000 features need"):
            covariance_cpu.chunk_moments_cpu(np.zeros((3, 2000)))


def test_triplet_and_quadruplet_walks_check_their_size_first():
    pytest.importorskip("numba")
    from fastcsi.graph import gemnet_indices_cpu as walks

    n = 200  # every ordered pair an edge: 39800 edges, 7.88M triplets
    s, t = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = s != t
    graph = {"edge_index": torch.stack([s[keep], t[keep]]), "cell_offset": torch.zeros((int(keep.sum()), 3),
                                                                                         dtype=torch.long)}
    from fastcsi import _native

    with mock.patch.object(_native, "memory_budget_bytes", lambda: 1 << 20):
        with pytest.raises(FastCSIError, match="7.88e\\+06 triplets needs 0.176 GiB"):
            walks.triplets_cpu(graph, n)
        with pytest.raises(FastCSIError, match="mixed triplets"):
            walks.mixed_triplets_cpu(graph, graph, n)
    # the torch ("cuda") backend, run on CPU tensors here, checks the same sizes against its device
    from fastcsi.graph import gemnet_indices_cuda

    with mock.patch.object(_native, "memory_budget_bytes", lambda: 1 << 20):
        with pytest.raises(FastCSIError, match="gemnet_indices: 7.88e\\+06 triplets needs .* GiB"):
            gemnet_indices_cuda.triplets_cuda(graph, n)
        with pytest.raises(FastCSIError, match="row entries"):
            gemnet_indices_cuda.quadruplets_cuda(graph, graph, n)


def test_quadruplet_walks_check_their_own_size_first():
    """A budget that holds both mixed-triplet passes (~25k triplets) but not the ~6.8e5 quadruplet
    candidates: the quadruplet size check itself refuses, on the numba and the torch backend."""
    pytest.importorskip("numba")
    from fastcsi import _native
    from fastcsi.graph import gemnet_indices_cpu as walks
    from fastcsi.graph import gemnet_indices_cuda

    n = 30  # every ordered pair an edge: 870 edges, 24360 triplets, 6.82e5 quadruplet candidates
    s, t = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = s != t
    graph = {"edge_index": torch.stack([s[keep], t[keep]]), "cell_offset": torch.zeros((int(keep.sum()), 3),
                                                                                         dtype=torch.long)}
    with mock.patch.object(_native, "memory_budget_bytes", lambda: 1 << 22):
        assert walks.mixed_triplets_cpu(graph, graph, n)["in"].numel() == 24360  # fits
        with pytest.raises(FastCSIError, match="gemnet_indices: 6.82e\\+05 quadruplets needs 0.0203 GiB"):
            walks.quadruplets_cpu(graph, graph, n)
        assert gemnet_indices_cuda.mixed_triplets_cuda(graph, graph, n)["in"].numel() == 24360
        with pytest.raises(FastCSIError, match="gemnet_indices: 6.82e\\+05 quadruplets needs .* GiB"):
            gemnet_indices_cuda.quadruplets_cuda(graph, graph, n)
    # and without the budget both compute the same quadruplets
    assert torch.equal(walks.quadruplets_cpu(graph, graph, n)["out"],
                       gemnet_indices_cuda.quadruplets_cuda(graph, graph, n)["out"])


CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from fastcsi._native import native
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 60, (48000, 3))
    args = (pos, np.eye(3)[None] * 60, np.ones((1, 3), bool), np.array([0, 48000]), 6.0, 8, True, 1 << 40)
    def vm_bytes():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmSize")) * 1024
    # address space for a few 8 MiB thread stacks, not for the ~1.2 GB of edges
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (24 << 20), resource.RLIM_INFINITY))
    try:
        native.radius_batch(*args)
        print("ok")
    except MemoryError:
        print("MemoryError")
""")


@needs_native
def test_out_of_memory_in_worker_threads_is_a_memory_error_not_an_abort():
    """Under RLIMIT_AS, thread starts fail (std::system_error: the started workers carry on) and
    the workers' allocations fail (std::bad_alloc, rethrown on the caller: MemoryError)."""
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "MemoryError", result.stdout + result.stderr[-3000:]


def test_triton_covariance_feeds_rows_in_slices_its_32_bit_offsets_can_address():
    """Inputs of 2^31 elements or more are fed in row slices (their scatters about one mean add
    up); shown here with the threshold lowered, under the interpreter."""
    pytest.importorskip("triton")
    from fastcsi.stats import covariance_triton

    x = torch.from_numpy(np.random.default_rng(3).normal(size=(200, 9)))
    whole = covariance_triton.chunk_moments_triton(x)
    with mock.patch.object(covariance_triton, "_MAX_OFFSET", 9 * 37):
        sliced = covariance_triton.chunk_moments_triton(x)
        with pytest.raises(FastCSIError, match="20 features are beyond the Triton kernel"):
            covariance_triton.chunk_moments_triton(torch.zeros((3, 20)))
    assert sliced[0] == whole[0]
    np.testing.assert_allclose(sliced[2], whole[2], rtol=1e-5, atol=1e-5)


def test_radius_bench_skips_our_rows_when_the_extension_is_missing(monkeypatch):
    """bench/radius.py builds its cases without fastcsi._C: no threads note, our rows skipped with
    the reason (they used to raise AttributeError on ``native.radius_threads``)."""
    from fastcsi import _native
    from fastcsi._bench import radius as bench

    monkeypatch.setattr(_native, "native", None)
    assert bench.threads_note([100]) is None
    (case,) = bench.cases(True, sizes=(2,))
    ours = [m for m in case.methods if m.name.startswith("fastcsi")]
    assert len(ours) == 2 and all(m.skip and m.note is None for m in ours)
