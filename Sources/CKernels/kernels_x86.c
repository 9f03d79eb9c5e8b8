// x86-64 instruction-set levels of the kernels (see kernels_impl.h). Each level is compiled with
// a function-level target attribute, so the package needs no -march flag and one binary runs on
// any x86-64; ckernels.c picks the level at run time from CPUID.
#if defined(__x86_64__) || defined(_M_X64)
#include "cw_internal.h"
#include <immintrin.h>

#define CW_STR2(x) #x
#define CW_STR(x) CW_STR2(x)

// AVX2 + FMA + F16C (Haswell / Zen 1 and later).
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define CW_ISA avx2
#define CW_VL 8
#define CW_MR 4
#define CW_NT 3
#define CW_X86 1
#define CW_VNNI 0
#include "kernels_impl.h"
#undef CW_ISA
#undef CW_VL
#undef CW_MR
#undef CW_NT
#undef CW_X86
#undef CW_VNNI
#pragma clang attribute pop

// AVX-512 F/BW/VL/DQ + VNNI (Ice Lake / Zen 4 and later): 512-bit fp32 micro-kernel, vpdpwssd
// (512-bit in the batched kernel, 256-bit in the per-token ones).
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), apply_to = function)
#define CW_ISA avx512
#define CW_VL 16
#define CW_MR 4
#define CW_NT 4
#define CW_X86 1
#define CW_VNNI 1
#include "kernels_impl.h"
#undef CW_ISA
#undef CW_VL
#undef CW_MR
#undef CW_NT
#undef CW_X86
#undef CW_VNNI
#pragma clang attribute pop

#endif
