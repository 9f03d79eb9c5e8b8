// Low-rank update kernels of ChunkWise: the two thin products of an unmerged LoRA update
// `y += B·(A·x)` and of a rank-ladder slice `y += (U·S)[:, :k] · (Vᵀ[:k, :] · x)`.
//
// Both factors are stored as `k` ROWS so that a rank-k slice of an ordered factorization is a
// prefix of rows (one contiguous block, no per-tier copies):
//   * the down factor A (or Vᵀ): `k × in`, row i at `a + i·lda`;
//   * the up factor B transposed (Bᵀ, or (U·S)ᵀ): `k × out`, row i at `bt + i·ldb`.
// The up product is then a sum of k scaled rows (axpy over `out`, no horizontal sums), which is
// what makes rank 1..64 updates cheap next to a quantized base matmul.
#ifndef LORA_KERNELS_H
#define LORA_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "ckernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Element types of a low-rank factor. CW_LORA_Q8: each row is `ceil(ld/32)` fp32 block scales
/// followed by `ld` int8 values (element c = q[c] · scale[c/32]); its row stride is
/// `cw_lora_row_bytes(CW_LORA_Q8, ld)` bytes, where `ld` is the `lda`/`ldb` argument.
enum cw_lora_type { CW_LORA_F32 = 0, CW_LORA_F16 = 1, CW_LORA_Q8 = 2 };

/// Bytes of one factor row of `ld` elements in `type`.
int64_t cw_lora_row_bytes(int type, int64_t ld);

/// Quantizes `n` floats to one CW_LORA_Q8 row (`dst` holds cw_lora_row_bytes(CW_LORA_Q8, n) bytes):
/// per block of 32, scale = max|x|/127 and q = round(x/scale).
void cw_lora_q8_row(const float *src, void *dst, int64_t n);

/// `u[t·ku + i] = Σ_c A[i·lda + c] · x[row(t)·ldx + c]` for `i < k`, `t < tokens`, where
/// `row(t) = xrows ? xrows[t] : t`. Returns 0, or -1 for a bad argument.
int cw_lora_down(int type, const void *a, int64_t lda, int64_t k, int64_t in,
                 const float *x, int64_t ldx, const int32_t *xrows, int64_t tokens,
                 float *u, int64_t ku, cw_pool *pool);

/// `y[row(t)·ldy + o] += Σ_i u[t·ku + i] · Bt[i·ldb + o]` for `i < k`, `o < out`, where
/// `row(t) = yrows ? yrows[t] : t`; the i-sum runs in order 0..k-1 from zero and is then added to y
/// (so `y + (sum into a zeroed buffer)` is bit-identical). Returns 0 or -1.
int cw_lora_up(int type, const void *bt, int64_t ldb, int64_t k, int64_t out,
               const float *u, int64_t ku, int64_t tokens, float *y, int64_t ldy,
               const int32_t *yrows, cw_pool *pool);

/// `cw_lora_up` for the columns `o` in [o0, o1) only, on the calling thread (no pool: it runs
/// inside another job, e.g. `cw_side.after`). Each output gets the same bits as from `cw_lora_up`.
int cw_lora_up_range(int type, const void *bt, int64_t ldb, int64_t k, int64_t out,
                     const float *u, int64_t ku, int64_t tokens, float *y, int64_t ldy,
                     const int32_t *yrows, int64_t o0, int64_t o1);

/// Rows [r0, r1) of a factor (`ld` elements a row) as fp32, row-major into `dst` — the values the
/// kernels multiply by (fp16 exactly, int8 times its block's scale). Returns 0 or -1.
int cw_lora_to_f32(int type, const void *f, int64_t ld, int64_t r0, int64_t r1, float *dst);

/// Converts `n` floats to fp16 (round to nearest even).
void cw_f32_to_f16_row(const float *src, uint16_t *dst, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
