// Low-rank (LoRA / rank-ladder) kernels: drivers and per-ISA dispatch (see include/lora_kernels.h).
#include "cw_internal.h"
#include "include/lora_kernels.h"
#include <stdlib.h>

typedef struct {
    int type;
    const void *f;        // the factor (A, or Bᵀ)
    int64_t ldf, k;
    int64_t in;           // down: input features
    const float *x;
    int64_t ldx;
    const int32_t *xrows;
    float *u;
    int64_t ku, tokens;
    float *y;
    int64_t ldy;
    const int32_t *yrows;
} cw_lora_args;

typedef struct {
    void (*down)(const cw_lora_args *g, int64_t i0, int64_t i1, int64_t t0, int64_t t1);
    void (*up)(const cw_lora_args *g, int64_t o0, int64_t o1);
    void (*to_f32)(const cw_lora_args *g, int64_t r0, int64_t r1, float *dst);
} cw_lora_ops;

#define LK_ISA portable
#define LK_VL 4
#define LK_X86 0
#include "lora_kernels_impl.h"
#undef LK_ISA
#undef LK_VL
#undef LK_X86

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define LK_ISA avx2
#define LK_VL 8
#define LK_X86 1
#include "lora_kernels_impl.h"
#undef LK_ISA
#undef LK_VL
#undef LK_X86
#pragma clang attribute pop

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#define LK_ISA avx512
#define LK_VL 16
#define LK_X86 1
#include "lora_kernels_impl.h"
#undef LK_ISA
#undef LK_VL
#undef LK_X86
#pragma clang attribute pop
#endif

static const cw_lora_ops *cw_lora_ops_current(void) {
    switch (cw_kernel_path()) {
#if defined(__x86_64__) || defined(_M_X64)
    case CW_PATH_AVX2: return &lora_ops_avx2;
    case CW_PATH_AVX512: return &lora_ops_avx512;
#endif
    default: return &lora_ops_portable;
    }
}

typedef struct { const cw_lora_ops *ops; const cw_lora_args *g; } cw_lora_ctx;
static void cw_lora_down_tokens(void *c, int64_t s, int64_t e) {
    const cw_lora_ctx *m = (const cw_lora_ctx *)c;
    m->ops->down(m->g, 0, m->g->k, s, e);
}
static void cw_lora_down_rows(void *c, int64_t s, int64_t e) {
    const cw_lora_ctx *m = (const cw_lora_ctx *)c;
    m->ops->down(m->g, s, e, 0, m->g->tokens);
}
static void cw_lora_up_cols(void *c, int64_t s, int64_t e) {
    const cw_lora_ctx *m = (const cw_lora_ctx *)c;
    m->ops->up(m->g, s, e);
}

// Below this many multiply-adds a product runs on the calling thread: waking the pool costs more
// than the work (a decode-step rank-16 update of a 576-wide projection is ~9k).
#define CW_LORA_SERIAL_MACS 65536

int cw_lora_down(int type, const void *a, int64_t lda, int64_t k, int64_t in,
                 const float *x, int64_t ldx, const int32_t *xrows, int64_t tokens,
                 float *u, int64_t ku, cw_pool *pool) {
    if ((type != CW_LORA_F32 && type != CW_LORA_F16 && type != CW_LORA_Q8) || k < 0 || in <= 0 || lda < in || ldx < in || ku < k || tokens < 0) return -1;
    if (k == 0 || tokens == 0) return 0;
    if (!a || !x || !u) return -1;
    cw_lora_args g = {.type = type, .f = a, .ldf = lda, .k = k, .in = in, .x = x, .ldx = ldx, .xrows = xrows,
                      .u = u, .ku = ku, .tokens = tokens};
    cw_lora_ctx c = {cw_lora_ops_current(), &g};
    if (k * in * tokens < CW_LORA_SERIAL_MACS) c.ops->down(&g, 0, k, 0, tokens);
    else if (tokens >= 8) cw_pool_parallel_for(pool, tokens, 4, cw_lora_down_tokens, &c);
    else cw_pool_parallel_for(pool, k, 4, cw_lora_down_rows, &c);
    return 0;
}

// The checks and arguments of an up product over columns [o0, o1): 1 = run it, 0 = nothing to
// do, -1 = bad arguments.
static int cw_lora_up_args(int type, const void *bt, int64_t ldb, int64_t k, int64_t out, const float *u, int64_t ku,
                           int64_t tokens, float *y, int64_t ldy, const int32_t *yrows, int64_t o0, int64_t o1,
                           cw_lora_args *g) {
    if ((type != CW_LORA_F32 && type != CW_LORA_F16 && type != CW_LORA_Q8) || k < 0 || out <= 0 || ldb < out || ku < k || ldy < out || tokens < 0 ||
        o0 < 0 || o1 > out || o0 > o1) return -1;
    if (k == 0 || tokens == 0 || o0 == o1) return 0;
    if (!bt || !u || !y) return -1;
    *g = (cw_lora_args){.type = type, .f = bt, .ldf = ldb, .k = k, .u = (float *)u /* only read by up */, .ku = ku, .tokens = tokens,
                        .y = y, .ldy = ldy, .yrows = yrows};
    return 1;
}

int cw_lora_up(int type, const void *bt, int64_t ldb, int64_t k, int64_t out,
               const float *u, int64_t ku, int64_t tokens, float *y, int64_t ldy,
               const int32_t *yrows, cw_pool *pool) {
    cw_lora_args g;
    const int rc = cw_lora_up_args(type, bt, ldb, k, out, u, ku, tokens, y, ldy, yrows, 0, out, &g);
    if (rc <= 0) return rc;
    cw_lora_ctx c = {cw_lora_ops_current(), &g};
    if (k * out * tokens < CW_LORA_SERIAL_MACS) c.ops->up(&g, 0, out);
    else cw_pool_parallel_for(pool, out, 64, cw_lora_up_cols, &c);
    return 0;
}

int cw_lora_up_range(int type, const void *bt, int64_t ldb, int64_t k, int64_t out,
                     const float *u, int64_t ku, int64_t tokens, float *y, int64_t ldy,
                     const int32_t *yrows, int64_t o0, int64_t o1) {
    cw_lora_args g;
    const int rc = cw_lora_up_args(type, bt, ldb, k, out, u, ku, tokens, y, ldy, yrows, o0, o1, &g);
    if (rc <= 0) return rc;
    cw_lora_ops_current()->up(&g, o0, o1);
    return 0;
}

int cw_lora_to_f32(int type, const void *f, int64_t ld, int64_t r0, int64_t r1, float *dst) {
    if ((type != CW_LORA_F32 && type != CW_LORA_F16 && type != CW_LORA_Q8) || ld <= 0 || r0 < 0 || r1 < r0 || !f || !dst) return -1;
    const cw_lora_args g = {.type = type, .f = f, .ldf = ld};
    cw_lora_ops_current()->to_f32(&g, r0, r1, dst);
    return 0;
}

int64_t cw_lora_row_bytes(int type, int64_t ld) {
    switch (type) {
    case CW_LORA_F16: return 2 * ld;
    case CW_LORA_Q8: return 4 * ((ld + 31) / 32) + ld;
    default: return 4 * ld;
    }
}

void cw_lora_q8_row(const float *src, void *dst, int64_t n) {
    const int64_t nb = (n + 31) / 32;
    float *scales = (float *)dst;
    int8_t *q = (int8_t *)dst + 4 * nb;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t c0 = b * 32, c1 = c0 + 32 < n ? c0 + 32 : n;
        float amax = 0;
        for (int64_t c = c0; c < c1; c++) amax = fabsf(src[c]) > amax ? fabsf(src[c]) : amax;
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        float dv = d;
        memcpy(scales + b, &dv, 4);
        for (int64_t c = c0; c < c1; c++) {
            const float v = roundf(src[c] * inv);
            q[c] = (int8_t)(v > 127 ? 127 : (v < -127 ? -127 : v));
        }
    }
}

void cw_f32_to_f16_row(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = cw_fp32_to_fp16(src[i]);
}
