// Radius-graph pair search with periodic boundaries, for a whole batch of structures in one call.
//
// Algorithm (per structure; positions wrapped into the cell along periodic axes, float64 throughout):
//  * small structures (n <= kBruteForceAtoms) or cells where every axis holds a single bin: all pairs,
//    with the image range of each pair cut to |frac(j) - frac(i) + n_a| <= cutoff / plane_spacing_a.
//    O(n^2 * images_per_pair). Visits edges in the canonical order (target, source, shift) directly.
//  * otherwise a cell list in fractional coordinates: bins at least `cutoff` wide measured along each
//    lattice-plane normal (so triclinic cells need no special case), periodic axes wrap onto images,
//    non-periodic axes span the atoms' extent. Each centre scans the (2k+1)^3 neighbouring bins
//    (k = 1, or more when the cell is thinner than the cutoff); by symmetry of the full list its
//    neighbours are its incoming edges, sorted per centre (~80 8-byte keys) into canonical order.
//    O(n * density * cutoff^3) time.
//  Two passes, no intermediate edge list: pass A counts (brute force) or searches and keeps the
//  sorted 8-byte blocks (cell list); then the exact output size is allocated uninitialised and pass B
//  writes every edge (indices, shift, vector, distance; 56 bytes in float32) once, sequentially, into
//  the final arrays. Per-edge memory traffic, not the distance tests, dominated the previous design.
//  Parallelism (std::thread, see parallel_for): over structures for batches of small structures (one
//  call, no per-structure Python), over bins (pass A) and targets (pass B) within large ones. Every
//  task writes a range fixed by the counts, so the output never depends on the thread count.
//
// Inputs and outputs are numpy buffers (no torch headers: builds in seconds, and the pair search
// needs no autograd). Why C++ over numba: the kernel needs per-structure growable buffers, nested
// structure/centre parallelism with deterministic output ranges, and numba's JIT adds seconds of
// first-call latency to every process.
#include "kernel_safety.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace fastcsi {
namespace {

constexpr int64_t kBruteForceAtoms = 48;
// Each extra thread must get at least this many candidate pair tests (~1-2 ms of work): a thread
// that waits for a core on a busy machine costs more wall time than a small batch takes on one core.
constexpr int64_t kWorkPerThread = int64_t(1) << 20;
// Candidate tests per atom assumed for cell-list structures (27 bins of ~20 atoms for metals at 6 A).
constexpr int64_t kCellWorkPerAtom = 512;
// Bins one cutoff wide (3x3x3 scan). Half-cutoff bins (5x5x5, 1.7x fewer distance tests) measured no
// faster here: the per-bin overhead ate the saving.
constexpr double kBinsPerCutoff = 1.0;
// Relative widening of every geometric bound so rounding never drops a candidate; the final
// |v|^2 <= cutoff^2 test alone decides membership.
constexpr double kMargin = 1e-6;
// Input limits (the same numbers as fastcsi.graph.periodic, which checks them before any backend;
// tests/graph/test_kernel_limits.py keeps the two in step). Positions and cell entries beyond
// kMaxCoordinate (100 micrometres) come from a wrong unit, not from an atomistic model; inside it
// every bin and image count below is exact in double and small in int64.
constexpr double kMaxCoordinate = 1e6;
// Periodic images a pair may need, prod_a (2 (ceil(cutoff / plane_spacing_a) + 1) + 1) over the
// periodic axes: 2^20 is a cell ~50x thinner than the cutoff along all three axes. Real cells stay
// below ~10^4 (a one-atom metal cell at a 12 A cutoff: ~7000).
constexpr double kMaxImages = double(int64_t(1) << 20);
// Bytes one edge costs while it is being found: the output row (indices 16, shift 24, vector and
// distance 32 or 16) and the 8-byte sort key of the cell list.
inline int64_t bytes_per_edge(bool single) { return 16 + 24 + (single ? 16 : 32) + 8; }

// Where the edges go: the caller's final arrays, written once per edge (no intermediate edge list).
// Vectors use the exact formula pos[source] + shift @ cell - pos[target] on the caller's positions.
struct Output {
    int64_t* source;
    int64_t* target;
    int64_t* shift;  // (E, 3)
    void* vectors;   // (E, 3) float or double
    void* distances;
    bool single;
    const double* pos;  // the caller's positions (not wrapped)

    inline void write(int64_t k, int64_t s, int64_t t, int64_t n0, int64_t n1, int64_t n2, const double* cell) const {
        source[k] = s;
        target[k] = t;
        shift[3 * k] = n0;
        shift[3 * k + 1] = n1;
        shift[3 * k + 2] = n2;
        const double* pj = pos + 3 * s;
        const double* pi = pos + 3 * t;
        double v[3] = {pj[0] - pi[0], pj[1] - pi[1], pj[2] - pi[2]};
        if (n0 | n1 | n2)
            for (int q = 0; q < 3; ++q) v[q] += n0 * cell[q] + n1 * cell[3 + q] + n2 * cell[6 + q];
        const double d = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
        if (single) {
            float* vo = static_cast<float*>(vectors) + 3 * k;
            vo[0] = static_cast<float>(v[0]);
            vo[1] = static_cast<float>(v[1]);
            vo[2] = static_cast<float>(v[2]);
            static_cast<float*>(distances)[k] = static_cast<float>(d);
        } else {
            double* vo = static_cast<double*>(vectors) + 3 * k;
            vo[0] = v[0];
            vo[1] = v[1];
            vo[2] = v[2];
            static_cast<double*>(distances)[k] = d;
        }
    }
};

// One neighbour x of a cell-list centre, 8 bytes: (local index of x) << 32 | code of the bin-wrap
// image m of x (see Prepared::image_half), so that sorting the integers sorts by (x, m); the shift is
// rebuilt when the edge is written.
using Entry = uint64_t;

std::string format_number(double value) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.3g", value);
    return text;
}

// One structure, prepared for searching: wrapped positions, fractional coordinates, bins.
struct Prepared {
    int64_t n = 0;
    int64_t offset = 0;  // global index of atom 0
    int64_t index = 0;   // the structure's index in the batch (for messages)
    // The call's budget and what one edge costs; every edge found is charged before it is stored.
    MemoryBudget* budget = nullptr;
    double edge_bytes = 0.0;
    void charge_edges(int64_t count) const {
        if (budget->charge(static_cast<double>(count) * edge_bytes)) return;
        throw InputError("structure " + std::to_string(index) + " of the batch takes the batch past " +
                         format_number(static_cast<double>(budget->used()) / edge_bytes) + " edges (" +
                         gib(static_cast<double>(budget->used())) + " of a " +
                         gib(static_cast<double>(budget->max_bytes())) +
                         " memory budget): atoms at the same position, a cutoff far too large, or too many "
                         "atoms per batch?");
    }
    double cell[3][3];
    double plane_spacing[3];
    bool pbc[3];
    std::vector<double> wrapped;  // (n, 3)
    std::vector<double> frac;     // (n, 3), wrapped coordinates
    std::vector<int32_t> wrap_shift;  // (n, 3): wrapped = pos + wrap_shift @ cell
    // cell list (empty when brute force is used)
    bool brute_force = true;
    int64_t nbins[3] = {1, 1, 1};
    int64_t reach[3] = {0, 0, 0};  // bins scanned on either side
    int64_t image_half[3] = {0, 0, 0};  // |m_a| <= image_half[a]: m is coded in a (2h+1)^3 box
    std::vector<int64_t> bin_of;     // (n,)
    std::vector<int64_t> bin_start;  // (nbins + 1,)
    std::vector<int64_t> bin_atoms;  // atoms sorted by bin (stable: ascending index inside a bin)
    std::vector<double> bin_pos;     // wrapped positions in bin order
};

// body(task) for every task in [0, tasks) on `threads` threads (the caller is one of them); which
// thread runs a task never changes the output. Plain std::thread, joined at the end, rather than
// OpenMP: libgomp keeps idle workers spinning for milliseconds after every region, and on a busy
// machine that spinning costs more CPU than a short search; starting a thread (tens of
// microseconds) is negligible beside the millisecond-scale passes. An exception in a body (an
// InputError from the budget, std::bad_alloc) is rethrown here on the calling thread
// (run_workers, kernel_safety.h).
template <class Body>
void parallel_for(int threads, int64_t tasks, Body&& body) {
    run_workers(threads, tasks, std::forward<Body>(body));
}

bool invert3(const double m[3][3], double inv[3][3]) {
    double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
                 m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                 m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if (!(std::fabs(det) > 0.0) || !std::isfinite(det)) return false;
    double id = 1.0 / det;
    inv[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) * id;
    inv[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) * id;
    inv[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) * id;
    inv[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) * id;
    inv[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) * id;
    inv[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) * id;
    inv[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) * id;
    inv[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) * id;
    inv[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) * id;
    return true;
}

inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

const char* const kAxis[3] = {"x", "y", "z"};

std::string structure_name(int64_t index) { return "structure " + std::to_string(index) + " of the batch"; }

// Everything that sizes an allocation or an integer below is checked first, in double (a product
// of hostile counts cannot wrap around in it), so that no input reaches undefined behaviour.
void prepare(Prepared& p, const double* pos, int64_t n, int64_t offset, int64_t index, const double* cell_in,
             const bool* pbc, double cutoff) {
    p.n = n;
    p.offset = offset;
    p.index = index;
    for (int a = 0; a < 3; ++a) {
        p.pbc[a] = pbc[a];
        for (int b = 0; b < 3; ++b) p.cell[a][b] = cell_in[3 * a + b];
    }
    for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b)
            if (!(std::fabs(p.cell[a][b]) <= kMaxCoordinate))
                throw InputError(structure_name(index) + " has a cell entry of " + format_number(p.cell[a][b]) +
                                 " A (limit " + format_number(kMaxCoordinate) + " A): cell in the wrong unit?");
    double inv[3][3];
    if (!invert3(p.cell, inv)) throw InputError(structure_name(index) + " has a singular cell");
    double images = 1.0;
    for (int a = 0; a < 3; ++a) {
        double norm = std::sqrt(inv[0][a] * inv[0][a] + inv[1][a] * inv[1][a] + inv[2][a] * inv[2][a]);
        p.plane_spacing[a] = 1.0 / norm;
        if (p.pbc[a]) images *= 2.0 * (std::ceil(cutoff * norm) + 1.0) + 1.0;
    }
    if (!(images <= kMaxImages))
        throw InputError(structure_name(index) + " needs " + format_number(images) +
                         " periodic images per atom pair (the limit is " +
                         std::to_string(static_cast<int64_t>(kMaxImages)) + "): its cell is far thinner than the cutoff");
    p.wrapped.resize(3 * n);
    p.frac.resize(3 * n);
    p.wrap_shift.assign(3 * n, 0);
    double fmin[3] = {INFINITY, INFINITY, INFINITY}, fmax[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t i = 0; i < n; ++i) {
        const double* r = pos + 3 * i;
        for (int a = 0; a < 3; ++a)
            if (!(std::fabs(r[a]) <= kMaxCoordinate))
                throw InputError(structure_name(index) + ": atom " + std::to_string(i) + " is at " +
                                 format_number(r[a]) + " A along " + kAxis[a] + " (limit " +
                                 format_number(kMaxCoordinate) + " A): coordinates in the wrong unit?");
        double f[3];
        for (int a = 0; a < 3; ++a) {
            f[a] = r[0] * inv[0][a] + r[1] * inv[1][a] + r[2] * inv[2][a];
            if (!std::isfinite(f[a]))  // a cell so close to singular that its inverse overflows
                throw InputError(structure_name(index) + " has a nearly singular cell");
        }
        int32_t s[3] = {0, 0, 0};
        for (int a = 0; a < 3; ++a) {
            if (p.pbc[a]) {
                const double cells_away = -std::floor(f[a]);
                // the shift is stored in int32 (and an atom 2^30 cells out has no digits left anyway)
                if (!(std::fabs(cells_away) < double(int64_t(1) << 30)))
                    throw InputError(structure_name(index) + ": atom " + std::to_string(i) + " lies " +
                                     format_number(cells_away) + " cells away along cell vector " +
                                     std::to_string(a) + ": coordinates or cell in the wrong unit?");
                s[a] = static_cast<int32_t>(cells_away);
                f[a] += s[a];
            }
            p.frac[3 * i + a] = f[a];
            p.wrap_shift[3 * i + a] = s[a];
            fmin[a] = std::min(fmin[a], f[a]);
            fmax[a] = std::max(fmax[a], f[a]);
        }
        for (int b = 0; b < 3; ++b)
            p.wrapped[3 * i + b] = r[b] + s[0] * p.cell[0][b] + s[1] * p.cell[1][b] + s[2] * p.cell[2][b];
    }
    // bins: along periodic axes the whole cell, along the others the atoms' extent; never more bins
    // than ~2 per atom (sparse boxes, molecules in vacuum, stay O(n) in memory). Each axis is capped
    // at that limit in double before it becomes an integer, so the product fits easily in int64.
    double width_needed = cutoff * (1.0 + kMargin);
    double extent[3], origin[3];
    const int64_t limit = std::max<int64_t>(8, 2 * n);
    for (int a = 0; a < 3; ++a) {
        if (p.pbc[a]) {
            origin[a] = 0.0;
            extent[a] = 1.0;
        } else {
            origin[a] = n ? fmin[a] : 0.0;
            extent[a] = n ? fmax[a] - fmin[a] : 0.0;
        }
        const double bins = std::floor(kBinsPerCutoff * extent[a] * p.plane_spacing[a] / width_needed);
        p.nbins[a] = bins >= 1.0 ? static_cast<int64_t>(std::min(bins, static_cast<double>(limit))) : 1;
    }
    while (static_cast<double>(p.nbins[0]) * p.nbins[1] * p.nbins[2] > limit) {
        for (int a = 0; a < 3; ++a) p.nbins[a] = std::max<int64_t>(1, p.nbins[a] / 2);
    }
    const int64_t total = p.nbins[0] * p.nbins[1] * p.nbins[2];  // <= limit now
    p.brute_force = n <= kBruteForceAtoms || total == 1;
    if (p.brute_force) return;
    for (int a = 0; a < 3; ++a) {
        if (p.nbins[a] == 1 && !p.pbc[a]) {
            p.reach[a] = 0;
            continue;
        }
        double bin_frac = extent[a] / p.nbins[a];
        // bounded: bin_frac * nbins = extent, so reach <= nbins * (images along a) (periodic) or is
        // capped at nbins - 1 (non-periodic, where extent spans > one cutoff per bin)
        const double reach = std::ceil(cutoff * (1.0 + kMargin) / p.plane_spacing[a] / bin_frac);
        p.reach[a] = static_cast<int64_t>(std::min(reach, static_cast<double>(limit) * kMaxImages));
        if (!p.pbc[a]) p.reach[a] = std::min<int64_t>(p.reach[a], p.nbins[a] - 1);
    }
    double codes = 1.0;
    for (int a = 0; a < 3; ++a) {
        p.image_half[a] = p.pbc[a] ? p.reach[a] / p.nbins[a] + 1 : 0;
        codes *= 2.0 * p.image_half[a] + 1.0;
    }
    // image codes are stored in 32 bits (the low half of an Entry); the image limit above keeps
    // them far below, this only guards the invariant
    if (!(codes < 2147483647.0))
        throw InputError(structure_name(index) + ": cell far thinner than the cutoff (too many images)");
    p.bin_of.resize(n);
    p.bin_start.assign(total + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        int64_t b[3];
        for (int a = 0; a < 3; ++a) {
            double t = extent[a] > 0 ? (p.frac[3 * i + a] - origin[a]) / extent[a] : 0.0;
            const double k = std::floor(t * p.nbins[a]);  // in [0, nbins] up to rounding
            b[a] = !(k > 0.0) ? 0 : std::min<int64_t>(static_cast<int64_t>(std::min(k, 1e18)), p.nbins[a] - 1);
        }
        int64_t id = (b[0] * p.nbins[1] + b[1]) * p.nbins[2] + b[2];
        p.bin_of[i] = id;
        p.bin_start[id + 1]++;
    }
    for (int64_t b = 0; b < total; ++b) p.bin_start[b + 1] += p.bin_start[b];
    p.bin_atoms.resize(n);
    p.bin_pos.resize(3 * n);
    std::vector<int64_t> fill(p.bin_start.begin(), p.bin_start.end() - 1);
    for (int64_t i = 0; i < n; ++i) {
        int64_t slot = fill[p.bin_of[i]]++;
        p.bin_atoms[slot] = i;
        for (int a = 0; a < 3; ++a) p.bin_pos[3 * slot + a] = p.wrapped[3 * i + a];
    }
}

// Targets [begin, end) by all pairs with per-pair image ranges, in canonical order by construction:
// emit(local source j, local target i, n0, n1, n2) for every edge.
template <class Emit>
void search_brute(const Prepared& p, double cutoff, int64_t begin, int64_t end, Emit&& emit) {
    const double cutoff_sq = cutoff * cutoff;
    double reach[3];
    for (int a = 0; a < 3; ++a) reach[a] = p.pbc[a] ? cutoff * (1.0 + kMargin) / p.plane_spacing[a] + kMargin : 0.0;
    const bool periodic = p.pbc[0] || p.pbc[1] || p.pbc[2];
    for (int64_t i = begin; i < end; ++i) {
        const double* wi = &p.wrapped[3 * i];
        const double* fi = &p.frac[3 * i];
        const int32_t* si = &p.wrap_shift[3 * i];
        for (int64_t j = 0; j < p.n; ++j) {
            const double* wj = &p.wrapped[3 * j];
            double base[3] = {wj[0] - wi[0], wj[1] - wi[1], wj[2] - wi[2]};
            if (!periodic) {
                if (j == i) continue;
                double d2 = base[0] * base[0] + base[1] * base[1] + base[2] * base[2];
                if (d2 <= cutoff_sq) emit(j, i, 0, 0, 0);
                continue;
            }
            const double* fj = &p.frac[3 * j];
            const int32_t* sj = &p.wrap_shift[3 * j];
            int64_t lo[3], hi[3];
            for (int a = 0; a < 3; ++a) {
                if (p.pbc[a]) {
                    double df = fj[a] - fi[a];
                    lo[a] = static_cast<int64_t>(std::ceil(-reach[a] - df));
                    hi[a] = static_cast<int64_t>(std::floor(reach[a] - df));
                } else {
                    lo[a] = hi[a] = 0;
                }
            }
            for (int64_t n0 = lo[0]; n0 <= hi[0]; ++n0) {
                double v0[3];
                for (int b = 0; b < 3; ++b) v0[b] = base[b] + n0 * p.cell[0][b];
                for (int64_t n1 = lo[1]; n1 <= hi[1]; ++n1) {
                    double v1[3];
                    for (int b = 0; b < 3; ++b) v1[b] = v0[b] + n1 * p.cell[1][b];
                    for (int64_t n2 = lo[2]; n2 <= hi[2]; ++n2) {
                        if (j == i && n0 == 0 && n1 == 0 && n2 == 0) continue;
                        double x = v1[0] + n2 * p.cell[2][0];
                        double y = v1[1] + n2 * p.cell[2][1];
                        double z = v1[2] + n2 * p.cell[2][2];
                        if (x * x + y * y + z * z <= cutoff_sq)
                            emit(j, i, n0 + sj[0] - si[0], n1 + sj[1] - si[1], n2 + sj[2] - si[2]);
                    }
                }
            }
        }
    }
}

// Counting pass: in-degrees of targets [begin, end) into degree (global indices); returns their sum.
int64_t count_brute(const Prepared& p, double cutoff, int64_t begin, int64_t end, int64_t* degree) {
    int64_t total = 0;
    for (int64_t i = begin; i < end; ++i) {  // row by row, so that the budget stops a runaway count early
        degree[p.offset + i] = 0;
        search_brute(p, cutoff, i, i + 1,
                     [&](int64_t, int64_t t, int64_t, int64_t, int64_t) { ++degree[p.offset + t]; });
        p.charge_edges(degree[p.offset + i]);
        total += degree[p.offset + i];
    }
    return total;
}

// Writing pass: the edges of targets [begin, end) straight into the output from edge k on.
void write_brute(const Prepared& p, double cutoff, int64_t begin, int64_t end, const Output& out, int64_t k) {
    const double* cell = &p.cell[0][0];
    search_brute(p, cutoff, begin, end, [&](int64_t j, int64_t i, int64_t n0, int64_t n1, int64_t n2) {
        out.write(k++, p.offset + j, p.offset + i, n0, n1, n2, cell);
    });
}

struct NeighbourBin {
    int64_t first, last;  // slice of bin_atoms / bin_pos
    double shift[3];      // -(m @ cell): the source's wrapped shift n = -m, target image m
    int32_t image;        // code of m
    bool zero_image;
};

// The bins scanned from bin (b0, b1, b2), in DESCENDING (d0, d1, d2) order: for a fixed target
// atom the image index m grows with d per axis, so descending order emits n = -m lexicographically
// ascending, the canonical order for the images of one (source, target) pair.
void neighbour_bins(const Prepared& p, int64_t b0, int64_t b1, int64_t b2, std::vector<NeighbourBin>& out) {
    out.clear();
    const int64_t w1 = 2 * p.image_half[1] + 1, w2 = 2 * p.image_half[2] + 1;
    for (int64_t d0 = p.reach[0]; d0 >= -p.reach[0]; --d0) {
        int64_t t0 = b0 + d0, m0 = 0;
        if (p.pbc[0]) {
            m0 = floor_div(t0, p.nbins[0]);
            t0 -= m0 * p.nbins[0];
        } else if (t0 < 0 || t0 >= p.nbins[0]) {
            continue;
        }
        for (int64_t d1 = p.reach[1]; d1 >= -p.reach[1]; --d1) {
            int64_t t1 = b1 + d1, m1 = 0;
            if (p.pbc[1]) {
                m1 = floor_div(t1, p.nbins[1]);
                t1 -= m1 * p.nbins[1];
            } else if (t1 < 0 || t1 >= p.nbins[1]) {
                continue;
            }
            for (int64_t d2 = p.reach[2]; d2 >= -p.reach[2]; --d2) {
                int64_t t2 = b2 + d2, m2 = 0;
                if (p.pbc[2]) {
                    m2 = floor_div(t2, p.nbins[2]);
                    t2 -= m2 * p.nbins[2];
                } else if (t2 < 0 || t2 >= p.nbins[2]) {
                    continue;
                }
                const int64_t bin = (t0 * p.nbins[1] + t1) * p.nbins[2] + t2;
                if (p.bin_start[bin] == p.bin_start[bin + 1]) continue;
                NeighbourBin nb;
                nb.first = p.bin_start[bin];
                nb.last = p.bin_start[bin + 1];
                for (int q = 0; q < 3; ++q)
                    nb.shift[q] = -(m0 * p.cell[0][q] + m1 * p.cell[1][q] + m2 * p.cell[2][q]);
                nb.image = static_cast<int32_t>(((m0 + p.image_half[0]) * w1 + m1 + p.image_half[1]) * w2 + m2 +
                                                p.image_half[2]);
                nb.zero_image = m0 == 0 && m1 == 0 && m2 == 0;
                out.push_back(nb);
            }
        }
    }
}

// A cell-list structure between its search pass (A) and its writing pass (B).
// Pass A visits centres bin by bin (neighbour bins set up once per bin, positions in cache) and
// stores each centre's neighbours as one block of 8-byte entries, sorted by (neighbour index, image)
// while the block is still in L1. The full list is symmetric (edge x->c with shift n iff c->x with
// -n; distances are computed antisymmetrically, (w_c - w_x) + shift, so the pair test agrees both
// ways bit for bit), so centre c's neighbours are exactly its INCOMING edges, already in canonical
// order (source x, then shift = m + s_x - s_c, lexicographic in m). Pass B then streams the blocks
// in target order into the final arrays: every output byte written sequentially, once; threads split
// the targets into contiguous ranges with known row starts.
struct CellSearch {
    Prepared p;
    struct Block {
        int32_t part = 0, count = 0;
        int64_t begin = 0;
    };
    std::vector<std::vector<Entry>> parts;
    std::vector<Block> blocks;
    std::vector<int64_t> row_start;  // (n + 1,) relative to the structure's first edge
    std::vector<int32_t> image_m;    // (codes, 3): m decoded
};

// Edges a search_cells thread charges to the budget at a time: one atomic per ~4096 edges instead of
// one per neighbour bin, each charge made before the entries it stands for are pushed; what is left
// of the last reservation is released at the end, so the total charged is exactly the edges found.
constexpr int64_t kChargeChunk = 4096;

void search_cells(CellSearch& cs, double cutoff, int64_t bin_begin, int64_t bin_end, int32_t part) {
    const Prepared& p = cs.p;
    const double cutoff_sq = cutoff * cutoff;
    std::vector<Entry>& out = cs.parts[part];
    std::vector<NeighbourBin> around;
    std::vector<int32_t> accepted(64);
    int64_t reserved = 0;  // edges charged to the budget and not pushed yet
    for (int64_t bin = bin_begin; bin < bin_end; ++bin) {
        if (p.bin_start[bin] == p.bin_start[bin + 1]) continue;
        const int64_t b0 = bin / (p.nbins[1] * p.nbins[2]);
        const int64_t b1 = (bin / p.nbins[2]) % p.nbins[1];
        const int64_t b2 = bin % p.nbins[2];
        neighbour_bins(p, b0, b1, b2, around);
        for (int64_t c = p.bin_start[bin]; c < p.bin_start[bin + 1]; ++c) {
            const int64_t centre = p.bin_atoms[c];
            const double* wc = &p.bin_pos[3 * c];
            const size_t begin = out.size();
            for (const NeighbourBin& nb : around) {
                // branch-free compaction: about a quarter of candidates pass, unpredictably, and a
                // mispredicted branch per candidate cost more than the distance itself
                const int64_t size = nb.last - nb.first;
                if (static_cast<int64_t>(accepted.size()) < size) accepted.resize(size);
                int64_t count = 0;
                const double* wx = &p.bin_pos[3 * nb.first];
                for (int64_t s = 0; s < size; ++s) {
                    // antisymmetric on purpose: the reverse edge gets exactly -x, -y, -z
                    const double x = (wc[0] - wx[3 * s]) + nb.shift[0];
                    const double y = (wc[1] - wx[3 * s + 1]) + nb.shift[1];
                    const double z = (wc[2] - wx[3 * s + 2]) + nb.shift[2];
                    accepted[count] = static_cast<int32_t>(s);
                    count += (x * x + y * y + z * z <= cutoff_sq);
                }
                // the centre itself (distance 0, always accepted) is the one candidate not stored
                const int64_t pushed = count - (nb.zero_image && nb.first <= c && c < nb.last);
                if (pushed > reserved) {  // charged before `out` grows for them
                    const int64_t more = std::max(pushed - reserved, kChargeChunk);
                    const bool whole_chunk = p.budget->charge(static_cast<double>(more) * p.edge_bytes);
                    if (!whole_chunk) p.charge_edges(pushed - reserved);  // throws when even that is too much
                    reserved += whole_chunk ? more : pushed - reserved;
                }
                const size_t before = out.size();
                for (int64_t a = 0; a < count; ++a) {
                    const int64_t x = p.bin_atoms[nb.first + accepted[a]];
                    if (nb.zero_image && x == centre) continue;
                    out.push_back(static_cast<Entry>(x) << 32 | static_cast<uint32_t>(nb.image));
                }
                reserved -= static_cast<int64_t>(out.size() - before);
            }
            const int64_t found = static_cast<int64_t>(out.size() - begin);
            // a block counts its entries in int32 (half the block table): no centre has 2^31 neighbours
            if (found > INT32_MAX)
                throw InputError("structure " + std::to_string(p.index) + " of the batch: an atom has " +
                                 std::to_string(found) + " neighbours (limit 2^31 - 1)");
            std::sort(out.begin() + begin, out.end());
            CellSearch::Block& block = cs.blocks[centre];
            block.part = part;
            block.begin = static_cast<int64_t>(begin);
            block.count = static_cast<int32_t>(out.size() - begin);
        }
    }
    p.budget->release(static_cast<int64_t>(static_cast<double>(reserved) * p.edge_bytes));
}

// Pass A over the whole structure with `threads` threads (each a contiguous range of bins), then
// row starts and in-degrees (into degree, global indices). Returns the number of edges.
int64_t count_cells(CellSearch& cs, double cutoff, int threads, int64_t* degree) {
    const Prepared& p = cs.p;
    const int64_t n = p.n;
    cs.blocks.assign(n, CellSearch::Block{});
    cs.parts.assign(threads, {});
    const int64_t num_bins = static_cast<int64_t>(p.bin_start.size()) - 1;
    if (threads == 1) {
        search_cells(cs, cutoff, 0, num_bins, 0);
    } else {
        parallel_for(threads, threads, [&](int64_t t) {
            search_cells(cs, cutoff, num_bins * t / threads, num_bins * (t + 1) / threads, static_cast<int32_t>(t));
        });
    }
    cs.row_start.resize(n + 1);
    cs.row_start[0] = 0;
    for (int64_t i = 0; i < n; ++i) {
        cs.row_start[i + 1] = cs.row_start[i] + cs.blocks[i].count;
        degree[p.offset + i] = cs.blocks[i].count;
    }
    const int64_t w1 = 2 * p.image_half[1] + 1, w2 = 2 * p.image_half[2] + 1;
    const int64_t codes = (2 * p.image_half[0] + 1) * w1 * w2;  // < 2^31, checked in prepare
    if (!p.budget->charge(12.0 * static_cast<double>(codes)))
        throw InputError("structure " + std::to_string(p.index) + " of the batch: the memory budget is spent");
    cs.image_m.resize(3 * codes);
    for (int64_t c = 0; c < codes; ++c) {
        cs.image_m[3 * c] = static_cast<int32_t>(c / (w1 * w2) - p.image_half[0]);
        cs.image_m[3 * c + 1] = static_cast<int32_t>((c / w2) % w1 - p.image_half[1]);
        cs.image_m[3 * c + 2] = static_cast<int32_t>(c % w2 - p.image_half[2]);
    }
    return cs.row_start[n];
}

// Pass B for targets [begin, end); the structure's edges start at output edge `first`.
void write_cells(const CellSearch& cs, const Output& out, int64_t first, int64_t begin, int64_t end) {
    const Prepared& p = cs.p;
    const double* cell = &p.cell[0][0];
    int64_t k = first + cs.row_start[begin];
    for (int64_t c = begin; c < end; ++c) {
        const CellSearch::Block& block = cs.blocks[c];
        const Entry* e = cs.parts[block.part].data() + block.begin;
        const int32_t* sc = &p.wrap_shift[3 * c];
        for (int32_t q = 0; q < block.count; ++q) {
            const int64_t x = static_cast<int64_t>(e[q] >> 32);
            const int32_t* m = &cs.image_m[3 * static_cast<int64_t>(e[q] & 0xffffffffu)];
            const int32_t* sx = &p.wrap_shift[3 * x];
            out.write(k++, p.offset + x, p.offset + c, m[0] + sx[0] - sc[0], m[1] + sx[1] - sc[1],
                      m[2] + sx[2] - sc[2], cell);
        }
    }
}

// Requests beyond kMaxThreads (kernel_safety.h) are capped; the work-based cap in radius_batch allows
// one thread per ~10^6 candidate tests anyway.
int max_threads(int requested) {
    if (requested > 0) return std::min(requested, kMaxThreads);
    const unsigned hardware = std::thread::hardware_concurrency();
    return hardware > 0 ? static_cast<int>(hardware) : 1;
}

// The hidden cap: one thread per kWorkPerThread estimated candidate tests (n^2 for small structures,
// n * kCellWorkPerAtom for cell lists), so about atoms * 512 / 2^20 threads for dense structures.
int thread_count(const int64_t* ptr, int64_t num_structures, int num_threads) {
    int64_t work = 0;  // estimated candidate pair tests (n < 2^31, so n * n and the sum fit)
    for (int64_t s = 0; s < num_structures; ++s) {
        const int64_t n = ptr[s + 1] - ptr[s];
        work += std::min(n * n, n * kCellWorkPerAtom);
    }
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(num_threads), work / kWorkPerThread)));
}

int radius_threads(py::array_t<int64_t, py::array::c_style | py::array::forcecast> ptr_arr, int num_threads) {
    const int64_t num_structures = ptr_arr.shape(0) - 1;
    const int64_t* ptr = ptr_arr.data();
    for (int64_t s = 0; s < num_structures; ++s)
        if (ptr[s + 1] < ptr[s] || ptr[s + 1] - ptr[s] >= (int64_t(1) << 31))
            throw std::invalid_argument("ptr must be non-decreasing, under 2^31 atoms per structure");
    return thread_count(ptr, num_structures, num_threads);
}

// Contiguous runs of structures: a big one alone (threads inside it) or many small ones (threads
// over structures). The same runs serve both passes.
struct Run {
    int64_t begin, end;
    bool big;
};

py::tuple radius_batch(py::array_t<double, py::array::c_style | py::array::forcecast> pos_arr,
                          py::array_t<double, py::array::c_style | py::array::forcecast> cell_arr,
                          py::array_t<bool, py::array::c_style | py::array::forcecast> pbc_arr,
                          py::array_t<int64_t, py::array::c_style | py::array::forcecast> ptr_arr,
                          double cutoff, int num_threads, bool single, int64_t max_bytes) {
    if (pos_arr.ndim() != 2 || pos_arr.shape(1) != 3) throw std::invalid_argument("pos must be (N, 3)");
    const int64_t num_structures = ptr_arr.shape(0) - 1;
    if (cell_arr.size() != 9 * num_structures || pbc_arr.size() != 3 * num_structures)
        throw std::invalid_argument("cell must be (B, 3, 3) and pbc (B, 3) with B = len(ptr) - 1");
    if (!(cutoff > 0.0) || !std::isfinite(cutoff)) throw std::invalid_argument("cutoff must be positive");
    const double* pos = pos_arr.data();
    const double* cell = cell_arr.data();
    const bool* pbc = pbc_arr.data();
    const int64_t* ptr = ptr_arr.data();
    const int64_t num_atoms = pos_arr.shape(0);
    if (num_atoms >= (int64_t(1) << 31)) throw std::invalid_argument("more than 2^31 atoms in one batch");
    if (num_structures < 0 || ptr[0] != 0 || ptr[num_structures] != num_atoms)
        throw std::invalid_argument("ptr must run from 0 to the number of atoms");
    for (int64_t s = 0; s < num_structures; ++s)
        if (ptr[s + 1] < ptr[s]) throw std::invalid_argument("ptr must be non-decreasing");
    const int threads = thread_count(ptr, num_structures, num_threads);

    py::array_t<int64_t> degree(static_cast<py::ssize_t>(num_atoms));
    int64_t* degree_out = degree.mutable_data();
    // structures big enough to split over threads are searched one at a time; the rest in chunks
    const int64_t big = threads > 1 ? 512 : INT64_MAX;
    std::vector<Run> runs;
    for (int64_t s = 0; s < num_structures;) {
        if (ptr[s + 1] - ptr[s] >= big) {
            runs.push_back({s, s + 1, true});
            ++s;
            continue;
        }
        int64_t stop = s;
        while (stop < num_structures && ptr[stop + 1] - ptr[stop] < big) ++stop;
        runs.push_back({s, stop, false});
        s = stop;
    }
    // cell-list structures keep their pass-A state until pass B; brute-force ones are recomputed
    std::vector<std::unique_ptr<CellSearch>> cells(num_structures);
    std::vector<int64_t> edges_of(num_structures + 1, 0);
    MemoryBudget budget(max_bytes);
    const double edge_bytes = static_cast<double>(bytes_per_edge(single));

    // ---- pass A: counts (and cell-list blocks) of every structure
    {
        py::gil_scoped_release release;
        for (const Run& r : runs) {
            if (r.big) {
                const int64_t s = r.begin, n = ptr[s + 1] - ptr[s];
                auto cs = std::make_unique<CellSearch>();
                cs->p.budget = &budget;
                cs->p.edge_bytes = edge_bytes;
                prepare(cs->p, pos + 3 * ptr[s], n, ptr[s], s, cell + 9 * s, pbc + 3 * s, cutoff);
                if (cs->p.brute_force) {
                    std::vector<int64_t> totals(threads, 0);
                    parallel_for(threads, threads, [&](int64_t t) {
                        totals[t] = count_brute(cs->p, cutoff, n * t / threads, n * (t + 1) / threads, degree_out);
                    });
                    for (int64_t count : totals) edges_of[s] += count;
                } else {
                    edges_of[s] = count_cells(*cs, cutoff, threads, degree_out);
                }
                cells[s] = std::move(cs);
                continue;
            }
            const int64_t run = r.end - r.begin;
            const int chunks = static_cast<int>(std::min<int64_t>(run, static_cast<int64_t>(threads) * 8));
            parallel_for(threads, chunks, [&](int64_t c) {
                Prepared p;
                for (int64_t k = r.begin + run * c / chunks; k < r.begin + run * (c + 1) / chunks; ++k) {
                    const int64_t m = ptr[k + 1] - ptr[k];
                    if (m == 0) continue;
                    p.budget = &budget;
                    p.edge_bytes = edge_bytes;
                    prepare(p, pos + 3 * ptr[k], m, ptr[k], k, cell + 9 * k, pbc + 3 * k, cutoff);
                    if (p.brute_force) {
                        edges_of[k] = count_brute(p, cutoff, 0, m, degree_out);
                    } else {
                        auto cs = std::make_unique<CellSearch>();
                        cs->p = std::move(p);
                        edges_of[k] = count_cells(*cs, cutoff, 1, degree_out);
                        cells[k] = std::move(cs);
                    }
                }
            });
        }
    }

    // edges_of becomes each structure's first edge
    int64_t total = 0;
    for (int64_t s = 0; s < num_structures; ++s) {
        const int64_t count = edges_of[s];
        edges_of[s] = total;
        total += count;
    }
    edges_of[num_structures] = total;
    const auto E = static_cast<py::ssize_t>(total);
    // uninitialised (np.empty): every slot is written exactly once below
    py::array_t<int64_t> edge_index({static_cast<py::ssize_t>(2), E});
    py::array_t<int64_t> shifts({E, static_cast<py::ssize_t>(3)});
    py::array vectors = single ? py::array(py::array_t<float>({E, static_cast<py::ssize_t>(3)}))
                               : py::array(py::array_t<double>({E, static_cast<py::ssize_t>(3)}));
    py::array distances = single ? py::array(py::array_t<float>(E)) : py::array(py::array_t<double>(E));
    Output out;
    out.source = edge_index.mutable_data();
    out.target = out.source + total;
    out.shift = shifts.mutable_data();
    out.vectors = vectors.mutable_data();
    out.distances = distances.mutable_data();
    out.single = single;
    out.pos = pos;

    // ---- pass B: every edge written once, in place
    {
        py::gil_scoped_release release;
        for (const Run& r : runs) {
            if (r.big) {
                const int64_t s = r.begin, n = ptr[s + 1] - ptr[s];
                CellSearch& cs = *cells[s];
                if (cs.p.brute_force) {
                    std::vector<int64_t> first(threads + 1, edges_of[s]);
                    for (int t = 0; t < threads; ++t) {
                        first[t + 1] = first[t];
                        for (int64_t i = n * t / threads; i < n * (t + 1) / threads; ++i)
                            first[t + 1] += degree_out[ptr[s] + i];
                    }
                    parallel_for(threads, threads, [&](int64_t t) {
                        write_brute(cs.p, cutoff, n * t / threads, n * (t + 1) / threads, out, first[t]);
                    });
                } else {
                    parallel_for(threads, threads, [&](int64_t t) {
                        write_cells(cs, out, edges_of[s], n * t / threads, n * (t + 1) / threads);
                    });
                }
                cells[s].reset();
                continue;
            }
            const int64_t run = r.end - r.begin;
            const int chunks = static_cast<int>(std::min<int64_t>(run, static_cast<int64_t>(threads) * 8));
            parallel_for(threads, chunks, [&](int64_t c) {
                Prepared p;
                for (int64_t k = r.begin + run * c / chunks; k < r.begin + run * (c + 1) / chunks; ++k) {
                    const int64_t m = ptr[k + 1] - ptr[k];
                    if (m == 0) continue;
                    if (cells[k]) {
                        write_cells(*cells[k], out, edges_of[k], 0, m);
                        cells[k].reset();
                    } else {  // succeeded in pass A, so only an allocation can fail here
                        p.budget = &budget;
                        p.edge_bytes = edge_bytes;
                        prepare(p, pos + 3 * ptr[k], m, ptr[k], k, cell + 9 * k, pbc + 3 * k, cutoff);
                        write_brute(p, cutoff, 0, m, out, edges_of[k]);
                    }
                }
            });
        }
    }
    return py::make_tuple(edge_index, shifts, vectors, distances, degree);
}

}  // namespace

void register_radius(py::module_& m) {
    m.def("radius_batch", &radius_batch, py::arg("pos"), py::arg("cell"), py::arg("pbc"), py::arg("ptr"),
          py::arg("cutoff"), py::arg("num_threads") = 0, py::arg("single") = false, py::arg("max_bytes") = 0,
          "Radius-graph pair search over a batch (float64 positions (N,3), completed cells (B,3,3), pbc (B,3),\n"
          "atom offsets ptr (B+1,)). Returns (edge_index (2,E) int64 [source; target], shifts (E,3) int64,\n"
          "vectors (E,3), distances (E,) in float32 when single else float64, in-degree (N,) int64)\n"
          "in canonical order: target, then source, then shift lexicographically. Cutoff inclusive.\n"
          "Threads: at most num_threads (<= 0: all cores; capped at 256), and at most one per ~2^20\n"
          "estimated candidate tests, i.e. about atoms * 512 / 2^20 for dense structures (2048 atoms per\n"
          "thread), so small batches run on one thread whatever num_threads says (see radius_threads).\n"
          "max_bytes (<= 0: half the physical memory) bounds what the edges may take (output arrays and\n"
          "search keys, ~80 bytes per edge); inputs beyond it, beyond |coordinate| <= 1e6 A or needing\n"
          "more than 2^20 periodic images per pair raise fastcsi._C.InputError (a ValueError), before\n"
          "the allocation they would need.");
    m.def("radius_threads", &radius_threads, py::arg("ptr"), py::arg("num_threads") = 0,
          "The number of threads radius_batch uses for a batch with atom offsets ptr (B+1,).");
    py::dict limits;
    limits["max_coordinate"] = kMaxCoordinate;
    limits["max_images"] = kMaxImages;
    limits["bytes_per_edge_float32"] = bytes_per_edge(true);
    limits["bytes_per_edge_float64"] = bytes_per_edge(false);
    m.attr("radius_limits") = limits;
}

}  // namespace fastcsi
