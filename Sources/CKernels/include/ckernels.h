// CKernels — the numeric core of ChunkWise, in C.
//
// Why C and not Swift: the hot loops need integer dot-product instructions (AVX2 maddubs,
// AVX-512 VNNI, NEON sdot) selected at run time for the CPU at hand, so that one binary runs
// fast on a Zen 4 and correctly on any x86-64 or arm64. Swift's SIMD types cannot express these
// instructions, and Swift has no per-function target attributes; C (clang) has both.
// Every entry point has a portable scalar path; fast paths are chosen once by cw_cpu_features().
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// GGML tensor type ids (as stored in GGUF files).
enum cw_type {
    CW_TYPE_F32 = 0,
    CW_TYPE_F16 = 1,
    CW_TYPE_Q4_0 = 2,
    CW_TYPE_Q4_1 = 3,
    CW_TYPE_Q5_0 = 6,
    CW_TYPE_Q5_1 = 7,
    CW_TYPE_Q8_0 = 8,
    CW_TYPE_Q8_1 = 9,
    CW_TYPE_Q4_K = 12,
    CW_TYPE_Q5_K = 13,
    CW_TYPE_Q6_K = 14,
    CW_TYPE_Q8_K = 15,
    CW_TYPE_BF16 = 30,
};

float cw_fp16_to_fp32(uint16_t h);
uint16_t cw_fp32_to_fp16(float f);
float cw_bf16_to_fp32(uint16_t h);

/// Dequantizes `n` consecutive elements (a multiple of the type's block size) starting at `src`.
/// Returns 0 on success, -1 for an unsupported type.
int cw_dequantize_row(int type, const void *src, float *dst, int64_t n);

/// Dot product of two float vectors.
float cw_dot_f32(const float *a, const float *b, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
