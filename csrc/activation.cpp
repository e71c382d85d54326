// Scaled SiLU, y = s * x * sigmoid(x), and its backward, for float32 tensors on CPU.
//
// GemNet-OC applies SiLU(x)/0.6 to nearly every dense layer's output; torch's CPU SiLU costs ten
// times a plain pass over memory on this kind of machine (its exp and division run at ~30 cycles per
// AVX2 vector), about 9% of a GemNet-OC-S training step. This kernel is one pass per tensor:
//  * sigmoid(x) = 1 / (1 + exp(-x)), exp by Cody-Waite range reduction (n = round(t log2 e),
//    r = t - n ln 2 in two parts) and the degree-5 minimax polynomial of Cephes' expf, scaled by 2^n
//    through the exponent bits. The argument is clamped to [-87, 88] first, so exp never overflows
//    and 2^n stays normal: sigmoid saturates to exactly 1 above, and is set to 0 below x = -88
//    (where x sigmoid(x) underflows anyway).
//  * backward: dL/dx = s g sigmoid(x) (1 + x (1 - sigmoid(x))), from x alone (nothing else saved).
//  * AVX2+FMA path compiled with __attribute__((target)) and chosen at run time, a portable one
//    (std::exp) beside it; rows of 8 floats, the tail done by the portable formula.
//  * Threads: an OpenMP team, i.e. the process's OpenMP pool that torch's own CPU ops run on (both
//    load libgomp.so.1 by soname and the loader keeps one), so no second set of threads competes for
//    the cores; inputs under kMinParallel elements run on the calling thread.
//
// Complexity: O(n), one read of x (and of g) and one write; no extra memory.
// Accuracy (tests/model/test_activation.py, against float64): relative error <= 4 float32 ulps where
// |y| is not tiny. NaN propagates, +inf -> +inf, -inf -> NaN, as torch.
#include "cpu_features.h"
#include "kernel_safety.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTCSI_ACT_X86 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace fastcsi {
namespace {

constexpr int64_t kMinParallel = int64_t(1) << 15;  // below this a team costs more than it saves
constexpr int64_t kBlock = int64_t(1) << 13;        // elements per scheduled block (32 KiB)
// exp's argument range: 2^n stays a normal float (n in [-126, 127]) and p 2^n below FLT_MAX
constexpr float kExpMin = -87.0f, kExpMax = 88.0f;

inline float sigmoid_scalar(float x) {
    if (x < -kExpMax) return 0.0f;  // as the vector path
    const float t = std::min(std::max(-x, kExpMin), kExpMax);
    return 1.0f / (1.0f + std::exp(t));
}

void forward_portable(const float* x, float* y, int64_t n, float scale) {
    for (int64_t i = 0; i < n; ++i) y[i] = scale * x[i] * sigmoid_scalar(x[i]);
}

void backward_portable(const float* g, const float* x, float* out, int64_t n, float scale) {
    for (int64_t i = 0; i < n; ++i) {
        const float s = sigmoid_scalar(x[i]);
        out[i] = scale * g[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

#ifdef FASTCSI_ACT_X86
// exp(t), t clamped to [kExpMin, kExpMax] (NaN stays NaN: see the operand order below).
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 t) {
    // _mm256_min/max_ps return the second operand when either is NaN: put t second to keep NaN
    t = _mm256_min_ps(_mm256_set1_ps(kExpMax), t);
    t = _mm256_max_ps(_mm256_set1_ps(kExpMin), t);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), t);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // 2^n through the exponent field (n in [-126, 127] after the clamp)
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

__attribute__((target("avx2,fma"))) inline __m256 sigmoid_avx2(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
    // below -kExpMax the clamped exp would leave sigmoid at ~6e-39 and x sigmoid(x) at -6e-39 x:
    // make it 0 there (the true value underflows), so -inf gives NaN as in torch
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-kExpMax), _CMP_LT_OQ), s);
}

__attribute__((target("avx2,fma"))) void forward_avx2(const float* x, float* y, int64_t n, float scale) {
    const __m256 s = _mm256_set1_ps(scale);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(v, s), sigmoid_avx2(v)));
    }
    forward_portable(x + i, y + i, n - i, scale);
}

__attribute__((target("avx2,fma"))) void backward_avx2(const float* g, const float* x, float* out, int64_t n,
                                                       float scale) {
    const __m256 s = _mm256_set1_ps(scale), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 sig = sigmoid_avx2(v);
        const __m256 slope = _mm256_mul_ps(sig, _mm256_fmadd_ps(v, _mm256_sub_ps(one, sig), one));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(g + i), s), slope));
    }
    backward_portable(g + i, x + i, out + i, n - i, scale);
}

#endif

bool use_avx2(const std::string& kernel) {
    if (kernel != "auto" && kernel != "avx2" && kernel != "portable")
        throw std::invalid_argument("kernel must be 'auto', 'avx2' or 'portable', got '" + kernel + "'");
    if (kernel == "portable") return false;
    if (!cpu_has_avx2_fma()) {
        if (kernel == "avx2") throw std::invalid_argument("this CPU (or build) has no AVX2+FMA kernel");
        return false;
    }
    return true;
}

float* contiguous_floats(py::array& a, const char* name, bool writeable) {
    if (!py::isinstance<py::array_t<float>>(a)) throw std::invalid_argument(std::string(name) + " must be float32");
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    if (writeable && !a.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
    return static_cast<float*>(a.mutable_data());
}

// Run body(i0, i1) over [0, n) in blocks, on the OpenMP team when n is large enough. Bodies neither
// allocate nor throw (an exception leaving an OpenMP region terminates the process).
template <typename Body>
void blocks(int64_t n, int num_threads, Body body) {
#ifdef _OPENMP
    if (n >= kMinParallel && num_threads != 1) {
        const int64_t count = (n + kBlock - 1) / kBlock;
        const int64_t wanted = num_threads > 0 ? num_threads : omp_get_max_threads();
        // never more than kMaxThreads (kernel_safety.h) nor one thread per block
        const int team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({wanted, count, kMaxThreads})));
#pragma omp parallel for schedule(static) num_threads(team)
        for (int64_t b = 0; b < count; ++b) body(b * kBlock, std::min(n, (b + 1) * kBlock));
        return;
    }
#endif
    body(0, n);
}

void silu_forward(py::array x, py::array out, float scale, int num_threads, const std::string& kernel) {
    const bool avx2 = use_avx2(kernel);
    const float* src = contiguous_floats(x, "x", false);
    float* dst = contiguous_floats(out, "out", true);
    if (x.size() != out.size()) throw std::invalid_argument("silu_forward: x and out differ in size");
    const int64_t n = x.size();
    py::gil_scoped_release release;
    blocks(n, num_threads, [&](int64_t i0, int64_t i1) {
#ifdef FASTCSI_ACT_X86
        if (avx2) return forward_avx2(src + i0, dst + i0, i1 - i0, scale);
#endif
        forward_portable(src + i0, dst + i0, i1 - i0, scale);
    });
}

void silu_backward(py::array grad, py::array x, py::array out, float scale, int num_threads, const std::string& kernel) {
    const bool avx2 = use_avx2(kernel);
    const float* g = contiguous_floats(grad, "grad", false);
    const float* src = contiguous_floats(x, "x", false);
    float* dst = contiguous_floats(out, "out", true);
    if (x.size() != out.size() || grad.size() != out.size())
        throw std::invalid_argument("silu_backward: grad, x and out differ in size");
    const int64_t n = x.size();
    py::gil_scoped_release release;
    blocks(n, num_threads, [&](int64_t i0, int64_t i1) {
#ifdef FASTCSI_ACT_X86
        if (avx2) return backward_avx2(g + i0, src + i0, dst + i0, i1 - i0, scale);
#endif
        backward_portable(g + i0, src + i0, dst + i0, i1 - i0, scale);
    });
}

std::string silu_kernel_isa() { return cpu_has_avx2_fma() ? "avx2" : "portable"; }

}  // namespace

void register_activation(py::module_& m) {
    m.def("silu_forward", &silu_forward, py::arg("x"), py::arg("out"), py::arg("scale") = 1.0f,
          py::arg("num_threads") = 0, py::arg("kernel") = "auto",
          "out = scale * x * sigmoid(x), float32, C-contiguous; out may be x (in place). num_threads <= 0:\n"
          "the OpenMP default. kernel: 'auto' | 'avx2' | 'portable'. The GIL is released.");
    m.def("silu_backward", &silu_backward, py::arg("grad"), py::arg("x"), py::arg("out"), py::arg("scale") = 1.0f,
          py::arg("num_threads") = 0, py::arg("kernel") = "auto",
          "out = scale * grad * d/dx[x sigmoid(x)], float32, C-contiguous; out may alias grad.");
    m.def("silu_kernel_isa", &silu_kernel_isa, "Which SiLU kernel 'auto' runs on this CPU: 'avx2' or 'portable'.");
}

}  // namespace fastcsi
