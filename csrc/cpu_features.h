// Run-time CPU feature checks shared by the kernels that carry an AVX2+FMA path next to a portable one.
#pragma once

namespace fastcsi {

inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

}  // namespace fastcsi
