// Streaming covariance moments of a feature chunk: count, float64 mean and the centred scatter
// (x - mean)^T (x - mean), by a native float64 SYRK that forms only the upper triangle.
//
// Algorithm (x: n x d rows, float32 or float64, any strides; everything below is float64):
//  * The rows are cut into up to kMaxPieces contiguous pieces, their number fixed by the input size
//    alone; threads take pieces from a shared counter, each piece has its own accumulator (count,
//    mean, upper-triangular scatter), and the pieces are merged at the end in row order by the Chan
//    et al. pairwise update. So the result is bitwise the same for any thread count and any
//    scheduling, and a thread slowed by another process leaves its remaining pieces to the others.
//  * Each piece is cut into blocks of `block_rows`. Per block: the column sums (float64) give the
//    block mean; the running accumulator absorbs the block by the Chan update (rank-one term on the
//    upper triangle, O(d^2)); then the block's centred scatter is added, `depth` rows at a time:
//    - pack: upcast + subtract the block mean, fused, into k-major micro-panels of 4 columns
//      (panel p holds, for each of the `depth` rows, columns 4p..4p+3; columns past d are zero),
//      so the float64 copy of the input that np.cov makes never exists;
//    - multiply: C tiles of 4 rows x 12 columns (3 panels) on or above the diagonal only; the
//      micro-kernel keeps the 12 accumulator vectors in registers (AVX2: 12 ymm + 3 for the B row
//      + 1 broadcast) and streams `depth` rows through them. Tiles that cross the diagonal compute a
//      few entries below it, which are ignored. For d = 256 this is 0.52 of a full GEMM's flops.
//  * The AVX2+FMA micro-kernel, packing and sums are compiled with __attribute__((target(...)))
//    and chosen at run time (__builtin_cpu_supports), next to a portable version (plain C++,
//    auto-vectorised for the build's baseline ISA), so the extension needs no -march flag and runs
//    on any x86-64 or aarch64 machine.
//
// Complexity: n d (d + 12) multiply-adds / 2 (plus O(n d) for sums and packing, O(d^2) per block
// for the merge); extra memory O(kMaxPieces d_pad^2 + threads depth d_pad) doubles (4.5 MiB at
// d = 256 on 2 threads), whatever n is.
// Accuracy: every product is float64 on data centred by its block mean, the blocks are combined
// exactly (Chan), so no raw sum of squares is formed and a large common offset costs no digits:
// relative error vs np.cov in float64 ~1e-15 (tests require <= 1e-12). NaN/inf in a column makes
// that column's mean and scatter diagonal non-finite (the caller's finiteness check relies on it).
//
// Why native: np.cov is an upcast float64 copy of x, a centring pass, then dot(X, X^T), which numpy
// already hands to OpenBLAS dsyrk (half the flops). This kernel runs its triangle at about the rate
// of that dsyrk (bench/covariance.py measures both) and fuses the upcast and centring into the packing, so the copy and its extra passes over memory are
// never paid.
#include "cpu_features.h"
#include "kernel_safety.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTCSI_SYRK_X86 1
#endif

namespace py = pybind11;

namespace fastcsi {
namespace {

constexpr int64_t kPanel = 4;       // columns per packed micro-panel (one AVX2 vector of doubles)
constexpr int64_t kTilePanels = 3;  // a C tile is kPanel rows x kTilePanels * kPanel columns
// Rows packed and multiplied at a time (`depth`): the packed panels (depth * d_pad doubles, 256 KiB
// at d = 256) stay in L2 while the tiles sweep them; the three B panels of a tile column (12 KiB) in L1.
constexpr int64_t kDefaultDepth = 128;
// Rows are cut into pieces of at least this many multiply-adds (~2-4 ms of one core): a thread that
// waits for a core on a busy machine costs more than a small chunk takes on one core.
constexpr int64_t kWorkPerPiece = int64_t(1) << 24;
// At most this many pieces (each with its own d_pad^2 accumulator), and so at most this many threads.
constexpr int64_t kMaxPieces = 8;

// Aligned float64 scratch (vector<double> gives no 32-byte alignment guarantee).
struct AlignedBuffer {
    double* data = nullptr;
    explicit AlignedBuffer(int64_t count) {
        const size_t bytes = ((static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(double) + 63) / 64) * 64;
        data = static_cast<double*>(std::aligned_alloc(64, bytes));
        if (!data) throw std::bad_alloc();
        std::memset(data, 0, bytes);
    }
    ~AlignedBuffer() { std::free(data); }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// A strided 2-D view of the caller's array (byte strides, as numpy gives them; may be negative).
struct Input {
    const char* base;
    int64_t rows, cols;
    int64_t row_stride, col_stride;  // bytes
    bool single;                     // float32 (else float64)
};

template <typename T>
inline const T* row_ptr(const Input& in, int64_t r) {
    return reinterpret_cast<const T*>(in.base + r * in.row_stride);
}

template <typename T>
inline double at(const Input& in, int64_t r, int64_t c) {
    return static_cast<double>(*reinterpret_cast<const T*>(in.base + r * in.row_stride + c * in.col_stride));
}

// --------------------------------------------------------------------------------------------------
// Column sums and packing. The portable bodies are always_inline templates, so each ISA wrapper
// below compiles them with its own target flags (the column sums auto-vectorise to 256 bits under
// AVX2); the AVX2 packing of contiguous rows is written with intrinsics further down.

template <typename T>
__attribute__((always_inline)) inline void column_sums_body(const Input& in, int64_t r0, int64_t r1, double* sums) {
    const int64_t d = in.cols;
    for (int64_t c = 0; c < d; ++c) sums[c] = 0.0;
    if (in.col_stride == static_cast<int64_t>(sizeof(T))) {
        for (int64_t r = r0; r < r1; ++r) {
            const T* row = row_ptr<T>(in, r);
            for (int64_t c = 0; c < d; ++c) sums[c] += static_cast<double>(row[c]);
        }
    } else {
        for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = 0; c < d; ++c) sums[c] += at<T>(in, r, c);
    }
}

// packed[p * stride + k * kPanel + lane] = x[r0 + k, p * kPanel + lane] - shift[...], zero past d,
// with stride = kPanel * depth_capacity. Columns are packed kGroup panels at a time (one 64-byte line
// of float32 input per row), so every store stream is sequential: writing all panels row by row
// scattered 32-byte stores 4 KiB apart and cost ~20% of the whole kernel.
constexpr int64_t kGroup = 4;
template <typename T>
__attribute__((always_inline)) inline void pack_body(const Input& in, int64_t r0, int64_t depth, const double* shift,
                                                     int64_t panels, int64_t stride, double* packed) {
    const int64_t d = in.cols;
    const int64_t full = d / kPanel;
    const bool contiguous = in.col_stride == static_cast<int64_t>(sizeof(T));
    for (int64_t p0 = 0; p0 < full; p0 += kGroup) {
        const int64_t group = std::min(kGroup, full - p0);
        if (contiguous && group == kGroup) {
            double* dst = packed + p0 * stride;
            const double* sh = shift + p0 * kPanel;
            for (int64_t k = 0; k < depth; ++k) {
                const T* src = row_ptr<T>(in, r0 + k) + p0 * kPanel;
                for (int64_t g = 0; g < kGroup; ++g)
                    for (int64_t lane = 0; lane < kPanel; ++lane)
                        dst[g * stride + k * kPanel + lane] =
                            static_cast<double>(src[g * kPanel + lane]) - sh[g * kPanel + lane];
            }
        } else {
            for (int64_t p = p0; p < p0 + group; ++p)
                for (int64_t k = 0; k < depth; ++k)
                    for (int64_t lane = 0; lane < kPanel; ++lane) {
                        const int64_t c = p * kPanel + lane;
                        packed[p * stride + k * kPanel + lane] = at<T>(in, r0 + k, c) - shift[c];
                    }
        }
    }
    for (int64_t p = full; p < panels; ++p)  // the ragged last panel (d % 4 columns), zero-padded
        for (int64_t k = 0; k < depth; ++k)
            for (int64_t lane = 0; lane < kPanel; ++lane) {
                const int64_t c = p * kPanel + lane;
                packed[p * stride + k * kPanel + lane] = c < d ? at<T>(in, r0 + k, c) - shift[c] : 0.0;
            }
}

// C[4 x 4*NB] (row stride ldc) += A_panel^T B_panels over `depth` packed rows; B panels `stride` apart.
template <int NB>
__attribute__((always_inline)) inline void micro_body_portable(int64_t depth, const double* a, const double* b,
                                                               int64_t stride, double* c, int64_t ldc) {
    double acc[kPanel][NB * kPanel] = {};
    for (int64_t k = 0; k < depth; ++k) {
        const double* ak = a + k * kPanel;
        for (int r = 0; r < kPanel; ++r)
            for (int j = 0; j < NB; ++j)
                for (int lane = 0; lane < kPanel; ++lane)
                    acc[r][j * kPanel + lane] += ak[r] * b[j * stride + k * kPanel + lane];
    }
    for (int r = 0; r < kPanel; ++r)
        for (int col = 0; col < NB * kPanel; ++col) c[r * ldc + col] += acc[r][col];
}

struct Kernels {
    void (*column_sums)(const Input&, int64_t, int64_t, double*);
    void (*pack)(const Input&, int64_t, int64_t, const double*, int64_t, int64_t, double*);
    void (*micro[kTilePanels + 1])(int64_t, const double*, const double*, int64_t, double*, int64_t);
};

void sums_portable(const Input& in, int64_t r0, int64_t r1, double* sums) {
    if (in.single)
        column_sums_body<float>(in, r0, r1, sums);
    else
        column_sums_body<double>(in, r0, r1, sums);
}
void pack_portable(const Input& in, int64_t r0, int64_t depth, const double* shift, int64_t panels, int64_t stride,
                   double* packed) {
    if (in.single)
        pack_body<float>(in, r0, depth, shift, panels, stride, packed);
    else
        pack_body<double>(in, r0, depth, shift, panels, stride, packed);
}
template <int NB>
void micro_portable(int64_t depth, const double* a, const double* b, int64_t stride, double* c, int64_t ldc) {
    micro_body_portable<NB>(depth, a, b, stride, c, ldc);
}

#ifdef FASTCSI_SYRK_X86
__attribute__((target("avx2,fma"))) void sums_avx2(const Input& in, int64_t r0, int64_t r1, double* sums) {
    if (in.single)
        column_sums_body<float>(in, r0, r1, sums);
    else
        column_sums_body<double>(in, r0, r1, sums);
}
// Explicit intrinsics for the contiguous case: GCC vectorised pack_body across rows (gathers and
// shuffles) instead of across the 4 lanes of a panel.
template <typename T>
__attribute__((target("avx2,fma"))) inline __m256d load4_as_double(const T* src);
template <>
__attribute__((target("avx2,fma"))) inline __m256d load4_as_double<float>(const float* src) {
    return _mm256_cvtps_pd(_mm_loadu_ps(src));
}
template <>
__attribute__((target("avx2,fma"))) inline __m256d load4_as_double<double>(const double* src) {
    return _mm256_loadu_pd(src);
}

template <typename T>
__attribute__((target("avx2,fma"))) void pack_avx2_typed(const Input& in, int64_t r0, int64_t depth,
                                                         const double* shift, int64_t panels, int64_t stride,
                                                         double* packed) {
    const int64_t full = in.cols / kPanel;
    if (in.col_stride != static_cast<int64_t>(sizeof(T)) || full == 0) {
        pack_body<T>(in, r0, depth, shift, panels, stride, packed);
        return;
    }
    int64_t p0 = 0;
    for (; p0 + kGroup <= full; p0 += kGroup) {
        const __m256d s0 = _mm256_loadu_pd(shift + p0 * kPanel);
        const __m256d s1 = _mm256_loadu_pd(shift + p0 * kPanel + 4);
        const __m256d s2 = _mm256_loadu_pd(shift + p0 * kPanel + 8);
        const __m256d s3 = _mm256_loadu_pd(shift + p0 * kPanel + 12);
        double* dst = packed + p0 * stride;
        for (int64_t k = 0; k < depth; ++k) {
            const T* src = row_ptr<T>(in, r0 + k) + p0 * kPanel;
            double* out = dst + k * kPanel;
            _mm256_store_pd(out, _mm256_sub_pd(load4_as_double<T>(src), s0));
            _mm256_store_pd(out + stride, _mm256_sub_pd(load4_as_double<T>(src + 4), s1));
            _mm256_store_pd(out + 2 * stride, _mm256_sub_pd(load4_as_double<T>(src + 8), s2));
            _mm256_store_pd(out + 3 * stride, _mm256_sub_pd(load4_as_double<T>(src + 12), s3));
        }
    }
    for (; p0 < full; ++p0) {
        const __m256d s0 = _mm256_loadu_pd(shift + p0 * kPanel);
        double* dst = packed + p0 * stride;
        for (int64_t k = 0; k < depth; ++k)
            _mm256_store_pd(dst + k * kPanel,
                            _mm256_sub_pd(load4_as_double<T>(row_ptr<T>(in, r0 + k) + p0 * kPanel), s0));
    }
    const int64_t d = in.cols;
    for (int64_t p = full; p < panels; ++p)  // ragged last panel, zero-padded
        for (int64_t k = 0; k < depth; ++k)
            for (int64_t lane = 0; lane < kPanel; ++lane) {
                const int64_t c = p * kPanel + lane;
                packed[p * stride + k * kPanel + lane] = c < d ? at<T>(in, r0 + k, c) - shift[c] : 0.0;
            }
}

__attribute__((target("avx2,fma"))) void pack_avx2(const Input& in, int64_t r0, int64_t depth, const double* shift,
                                                   int64_t panels, int64_t stride, double* packed) {
    if (in.single)
        pack_avx2_typed<float>(in, r0, depth, shift, panels, stride, packed);
    else
        pack_avx2_typed<double>(in, r0, depth, shift, panels, stride, packed);
}

// 4 x (4*NB) tile: 4*NB accumulators + NB B vectors + 1 broadcast <= 16 ymm registers for NB = 3.
// Per row: NB aligned loads, 4 broadcasts, 4*NB FMAs (12 FMAs per 7 loads at NB = 3).
template <int NB>
__attribute__((target("avx2,fma"))) void micro_avx2(int64_t depth, const double* a, const double* b, int64_t stride,
                                                    double* c, int64_t ldc) {
    // The C tile is read only after the loop; fetch its lines now so that read never waits on L3.
#pragma GCC unroll 4
    for (int r = 0; r < kPanel; ++r) {
        const char* row = reinterpret_cast<const char*>(c + r * ldc);
        _mm_prefetch(row, _MM_HINT_T0);
        _mm_prefetch(row + 64, _MM_HINT_T0);
        _mm_prefetch(row + NB * kPanel * sizeof(double) - 1, _MM_HINT_T0);
    }
    __m256d acc[kPanel][NB];
#pragma GCC unroll 4
    for (int r = 0; r < kPanel; ++r)
#pragma GCC unroll 3
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_setzero_pd();
#pragma GCC unroll 2
    for (int64_t k = 0; k < depth; ++k) {
        __m256d bv[NB];
#pragma GCC unroll 3
        for (int j = 0; j < NB; ++j) bv[j] = _mm256_load_pd(b + j * stride + k * kPanel);
        const double* ak = a + k * kPanel;
#pragma GCC unroll 4
        for (int r = 0; r < kPanel; ++r) {
            const __m256d av = _mm256_broadcast_sd(ak + r);
#pragma GCC unroll 3
            for (int j = 0; j < NB; ++j) acc[r][j] = _mm256_fmadd_pd(av, bv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < kPanel; ++r)
#pragma GCC unroll 3
        for (int j = 0; j < NB; ++j) {
            double* dst = c + r * ldc + j * kPanel;
            _mm256_storeu_pd(dst, _mm256_add_pd(_mm256_loadu_pd(dst), acc[r][j]));
        }
}

#endif

Kernels portable_kernels() {
    return {sums_portable, pack_portable, {nullptr, micro_portable<1>, micro_portable<2>, micro_portable<3>}};
}

Kernels select_kernels(const std::string& isa) {
    if (isa != "auto" && isa != "avx2" && isa != "portable")
        throw std::invalid_argument("kernel must be 'auto', 'avx2' or 'portable', got '" + isa + "'");
    if (isa == "portable") return portable_kernels();
    if (!cpu_has_avx2_fma()) {
        if (isa == "avx2") throw std::invalid_argument("this CPU (or build) has no AVX2+FMA kernel");
        return portable_kernels();
    }
#ifdef FASTCSI_SYRK_X86
    return {sums_avx2, pack_avx2, {nullptr, micro_avx2<1>, micro_avx2<2>, micro_avx2<3>}};
#else
    return portable_kernels();
#endif
}

// --------------------------------------------------------------------------------------------------
// The running moments of one piece (a contiguous row range).
struct Accumulator {
    int64_t count = 0;
    std::vector<double> mean;
    AlignedBuffer scatter;  // d_pad x d_pad row-major; only the upper triangle is meaningful
    int64_t d_pad;
    std::vector<double> delta;
    Accumulator(int64_t d, int64_t d_pad_) : mean(d, 0.0), scatter(d_pad_ * d_pad_), d_pad(d_pad_), delta(d) {}

    // Chan et al.: absorb `rows` rows with mean `rows_mean` whose scatter is added separately.
    void absorb_mean(int64_t rows, const double* rows_mean) {
        const int64_t d = static_cast<int64_t>(mean.size());
        if (count == 0) {
            std::copy(rows_mean, rows_mean + d, mean.begin());
            count = rows;
            return;
        }
        const int64_t total = count + rows;
        const double weight = static_cast<double>(count) * static_cast<double>(rows) / static_cast<double>(total);
        const double step = static_cast<double>(rows) / static_cast<double>(total);
        for (int64_t i = 0; i < d; ++i) delta[i] = rows_mean[i] - mean[i];
        for (int64_t i = 0; i < d; ++i) {
            const double wi = delta[i] * weight;
            double* row = scatter.data + i * d_pad;
            for (int64_t j = i; j < d; ++j) row[j] += wi * delta[j];
        }
        for (int64_t i = 0; i < d; ++i) mean[i] += delta[i] * step;
        count = total;
    }

    void absorb(const Accumulator& other) {
        if (other.count == 0) return;
        absorb_mean(other.count, other.mean.data());
        const int64_t d = static_cast<int64_t>(mean.size());
        for (int64_t i = 0; i < d; ++i)
            for (int64_t j = i; j < d; ++j) scatter.data[i * d_pad + j] += other.scatter.data[i * d_pad + j];
    }
};

// One thread's scratch, allocated on the calling thread so that no worker ever allocates (or throws).
struct Workspace {
    int64_t depth;
    AlignedBuffer packed;  // panels x depth x kPanel
    std::vector<double> block_mean;
    Workspace(int64_t d, int64_t d_pad, int64_t depth_) : depth(depth_), packed(d_pad * depth_), block_mean(d) {}
};

void accumulate_rows(const Input& in, int64_t r0, int64_t r1, int64_t block_rows, const Kernels& kernels,
                     Workspace& ws, Accumulator& acc) {
    const int64_t d = in.cols;
    const int64_t panels = (d + kPanel - 1) / kPanel;
    const int64_t d_pad = acc.d_pad;
    double* packed = ws.packed.data;
    const int64_t stride = ws.depth * kPanel;  // doubles between consecutive packed panels
    std::vector<double>& block_mean = ws.block_mean;
    for (int64_t b0 = r0; b0 < r1; b0 += block_rows) {
        const int64_t b1 = std::min(r1, b0 + block_rows);
        const int64_t rows = b1 - b0;
        kernels.column_sums(in, b0, b1, block_mean.data());
        for (int64_t c = 0; c < d; ++c) block_mean[c] /= static_cast<double>(rows);
        acc.absorb_mean(rows, block_mean.data());
        if (rows == 1) continue;  // a single row, centred by itself, scatters nothing
        for (int64_t k0 = b0; k0 < b1; k0 += ws.depth) {
            const int64_t depth = std::min(ws.depth, b1 - k0);
            kernels.pack(in, k0, depth, block_mean.data(), panels, stride, packed);
            // Column blocks of kTilePanels panels; the ragged one (panels % 3) goes first, where the
            // triangle gives it a single row tile, so narrow tiles cost almost nothing.
            for (int64_t q = 0; q < panels;) {
                const int64_t nb = q == 0 && panels % kTilePanels ? panels % kTilePanels : kTilePanels;
                const double* b = packed + q * stride;
                // Row panels p <= last column panel of the block: every tile on or above the diagonal.
                const int64_t last_p = q + nb - 1;
                for (int64_t p = 0; p <= last_p; ++p)
                    kernels.micro[nb](depth, packed + p * stride, b, stride,
                                      acc.scatter.data + p * kPanel * d_pad + q * kPanel, d_pad);
                q += nb;
            }
        }
    }
}

// Pieces depend on the input size only (never on the thread count), so the result is bitwise the
// same whatever the number of threads; enough of them (up to kMaxPieces) to keep every core busy
// when another process takes a core away for a while.
int64_t count_pieces(int64_t n, int64_t d_pad) {
    // in double: n d^2 overflows int64 for inputs that still fit in memory (n = 10^6, d = 10^7)
    const double work = static_cast<double>(n) * static_cast<double>(d_pad) *
                        static_cast<double>(d_pad + kTilePanels * kPanel) / 2.0;
    const int64_t by_work = static_cast<int64_t>(std::min(work / kWorkPerPiece, static_cast<double>(kMaxPieces)));
    const int64_t by_rows = std::max<int64_t>(1, n / 2);  // every piece gets >= 2 rows
    return std::max<int64_t>(1, std::min({by_work, kMaxPieces, by_rows}));
}

py::tuple covariance_moments(py::array x, int64_t block_rows, int num_threads, const std::string& kernel,
                             int64_t depth, int64_t max_bytes) {
    if (x.ndim() != 2) throw std::invalid_argument("covariance_moments: x must be 2-D (n, d)");
    const bool single = py::isinstance<py::array_t<float>>(x);
    if (!single && !py::isinstance<py::array_t<double>>(x))
        throw std::invalid_argument("covariance_moments: x must be float32 or float64");
    if (block_rows < 1) throw std::invalid_argument("covariance_moments: block_rows must be >= 1");
    if (depth < 1 || depth > 4096) throw std::invalid_argument("covariance_moments: depth must be in [1, 4096]");
    const Kernels kernels = select_kernels(kernel);
    const Input in{static_cast<const char*>(x.data()), x.shape(0), x.shape(1), x.strides(0), x.strides(1), single};
    const int64_t n = in.rows, d = in.cols;
    // Everything this call allocates, in double and before any of it: the d x d output, one padded
    // d_pad^2 accumulator per piece and one packing panel per thread. A wide feature matrix (d in
    // the tens of thousands) is refused here rather than killed by the OS halfway through.
    const int64_t panels = (d + kPanel - 1) / kPanel;
    const int64_t d_pad = panels * kPanel;  // whole panels: diagonal-crossing tiles stay in bounds
    const int64_t pieces = n == 0 || d == 0 ? 0 : count_pieces(n, d_pad);
    int64_t threads = num_threads;
    if (threads <= 0) {
        const unsigned hardware = std::thread::hardware_concurrency();
        threads = hardware > 0 ? hardware : 1;
    }
    threads = std::max<int64_t>(1, std::min(threads, pieces));
    const double dd = static_cast<double>(d), dp = static_cast<double>(d_pad);
    const double needed =
        8.0 * (dd * dd + 2.0 * dd + static_cast<double>(pieces) * (dp * dp + 2.0 * dd) +
               static_cast<double>(threads) * (dp * static_cast<double>(depth) + dd));
    MemoryBudget budget(max_bytes);
    if (!budget.charge(needed))
        throw InputError(std::to_string(d) + " features need " + gib(needed) + " for the d x d moments (budget " +
                         gib(static_cast<double>(budget.max_bytes())) + "): too many features per sample?");
    py::array_t<double> mean_out(d);
    py::array_t<double> scatter_out({d, d});
    double* mean_ptr = mean_out.mutable_data();
    double* scatter_ptr = scatter_out.mutable_data();
    std::fill(mean_ptr, mean_ptr + d, 0.0);
    std::fill(scatter_ptr, scatter_ptr + d * d, 0.0);
    if (n == 0 || d == 0) return py::make_tuple(n, mean_out, scatter_out);

    {
        py::gil_scoped_release release;
        std::vector<std::unique_ptr<Accumulator>> parts;
        for (int64_t i = 0; i < pieces; ++i) parts.push_back(std::make_unique<Accumulator>(d, d_pad));
        std::vector<std::unique_ptr<Workspace>> spaces;
        for (int64_t t = 0; t < threads; ++t) spaces.push_back(std::make_unique<Workspace>(d, d_pad, depth));
        // a thread that cannot start leaves its pieces to the others (run_workers_indexed)
        run_workers_indexed(threads, pieces, [&](int64_t t, int64_t i) {
            accumulate_rows(in, n * i / pieces, n * (i + 1) / pieces, block_rows, kernels, *spaces[t], *parts[i]);
        });
        Accumulator& total = *parts[0];
        for (int64_t i = 1; i < pieces; ++i) total.absorb(*parts[i]);  // fixed order: reproducible
        std::copy(total.mean.begin(), total.mean.end(), mean_ptr);
        for (int64_t i = 0; i < d; ++i)
            for (int64_t j = i; j < d; ++j) {
                const double value = total.scatter.data[i * d_pad + j];
                scatter_ptr[i * d + j] = value;
                scatter_ptr[j * d + i] = value;
            }
    }
    return py::make_tuple(n, mean_out, scatter_out);
}

std::string covariance_kernel_isa() { return cpu_has_avx2_fma() ? "avx2" : "portable"; }

}  // namespace

void register_covariance(py::module_& m) {
    m.def("covariance_moments", &covariance_moments, py::arg("x"), py::arg("block_rows") = 1024,
          py::arg("num_threads") = 0, py::arg("kernel") = "auto", py::arg("depth") = kDefaultDepth,
          py::arg("max_bytes") = 0,
          "Moments of the rows of x (n, d), float32 or float64, any strides: returns (count, mean (d,),\n"
          "centred scatter (d, d)), float64. Blocks of block_rows rows are centred by their own mean and\n"
          "merged exactly (Chan); the scatter is a one-triangle float64 SYRK. num_threads <= 0: all cores\n"
          "(fewer for small inputs). kernel: 'auto' | 'avx2' | 'portable'. depth: rows packed per pass (tuning).\n"
          "max_bytes (<= 0: half the physical memory): a call that would allocate more (~8 (pieces + 1) d^2\n"
          "bytes) raises fastcsi._C.InputError first. The GIL is released.");
    m.def("covariance_kernel_isa", &covariance_kernel_isa,
          "Which micro-kernel covariance_moments(kernel='auto') runs on this CPU: 'avx2' or 'portable'.");
}

}  // namespace fastcsi
