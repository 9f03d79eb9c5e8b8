// Private declarations shared by the CKernels translation units (not part of the module's API).
#ifndef CW_INTERNAL_H
#define CW_INTERNAL_H

#include "include/ckernels.h"
#include <string.h>
#include <math.h>

// Activations quantized (fast mode) for the 32-element block types: int16 quants with one fp32
// scale per block (amax/32767) and d·Σq, the block's (quantized) sum, for the offset/min terms
// of Q4_0, Q4_1, Q5_0 and Q5_1.
typedef struct {
    float d;
    float sd;
    int16_t qs[32];
} cw_q16b;

// Activations quantized for the 256-element K-quants: one scale per 256, integer sums per 16
// quants (for the sub-block mins of Q4_K/Q5_K and the -32 offset of Q6_K).
typedef struct {
    float d;
    int32_t bsums[16];
    int16_t qs[256];
} cw_q16k;

// One matrix product, as seen by the per-ISA row workers.
typedef struct {
    int type;
    const uint8_t *w;
    int64_t rows, cols, row_bytes;
    const float *x;       // tokens × cols
    int64_t tokens;
    float *y;             // tokens × rows
    uint8_t *xq;          // fast mode: quantized activations, one row per token
    int64_t xq_row_bytes;
    // Fast mode, batched kernel (32-element block types): activations in groups of 8 tokens,
    // block-major, each element pair of the group's tokens side by side (layout: FN(tb_x) in
    // kernels_impl.h; cw_ops.tq_block int16 per group and block); td/tsd: scale and scaled sum
    // per (group, block, lane).
    int16_t *tq;
    float *td, *tsd;
    // Batched kernel: spans prefetched while rows compute; this matrix's rows are rows
    // [pf_row0, pf_row0 + rows) of pf_rows in all (see cw_matmul_many_side).
    const cw_span *pf;
    const int64_t *pf_cum; // cache lines of spans [0, k) (npf + 1 entries; the last: all of them)
    int npf;
    int64_t pf_row0, pf_rows;
    // After rows × tokens of this matrix are written (cw_side.after; NULL: none). The batched
    // kernel calls it per chunk of tokens, so that what the hook reads and writes of y is still in
    // cache; the others once per row range with all tokens.
    const cw_side *after;
    int after_m;
} cw_mm;

typedef struct {
    const float *q, *k, *v;
    float *out;
    int64_t tokens, start_pos, kv_stride;
    int heads, kv_heads, head_dim;
    float scale;
} cw_attn;

// Per-instruction-set entry points (one table per compiled level).
typedef struct {
    const char *name;
    void (*dequant)(int type, const uint8_t *src, float *dst, int64_t n);
    void (*exact_rows)(const cw_mm *a, int64_t r0, int64_t r1);
    void (*fast_rows)(const cw_mm *a, int64_t r0, int64_t r1);
    void (*quantize)(const cw_mm *a, int64_t t0, int64_t t1);
    void (*tiled_rows)(const cw_mm *a, int64_t r0, int64_t r1);
    void (*quantize_tiled)(const cw_mm *a, int64_t t0, int64_t t1);
    int tq_block;  // int16 per (group, block) of the batched kernel's activation layout (tq)
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*dots_group)(int g, const float *q, int64_t qstride, const float *k, int64_t stride, int64_t nk, int64_t n, float scale,
                       float *out);
    float (*sum)(const float *a, int64_t n);
    void (*attn)(const cw_attn *a, int64_t i0, int64_t i1);
    void (*silu_mul)(float *gate, const float *up, int64_t n);
    double (*exp_weights)(const float *x, int64_t n, float shift, float div, float *w);
    void (*entropy_sums)(const float *x, int64_t n, float m, double *z, double *ez);
} cw_ops;

extern const cw_ops cw_ops_portable;
#if defined(__x86_64__) || defined(_M_X64)
extern const cw_ops cw_ops_avx2;
extern const cw_ops cw_ops_avx512;
#endif

// Per-thread scratch (grown on demand, kept for the thread's life). Slots are independent.
enum { CW_TLS_DEQUANT = 0, CW_TLS_XQ = 1, CW_TLS_SCORES = 2, CW_TLS_SLOTS = 3 };
void *cw_tls_scratch(int slot, size_t bytes);

// Exact fp16 -> fp32 without F16C (branch-free, vectorizable; Maratos' FP16 method).
static inline float cw_h2f_portable(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    uint32_t sign = w & 0x80000000u;
    uint32_t two_w = w + w;
    uint32_t nb = (two_w >> 4) + (0xE0u << 23);
    float nf; memcpy(&nf, &nb, 4);
    nf *= 0x1.0p-112f;
    uint32_t db = (two_w >> 17) | (126u << 23);
    float df; memcpy(&df, &db, 4);
    df -= 0.5f;
    uint32_t nbits, dbits;
    memcpy(&nbits, &nf, 4); memcpy(&dbits, &df, 4);
    uint32_t r = sign | (two_w < (1u << 27) ? dbits : nbits);
    float f; memcpy(&f, &r, 4);
    return f;
}

static inline uint16_t cw_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

// Q4_K / Q5_K 6-bit scales and mins, 8 sub-blocks, packed in 12 bytes.
static inline void cw_kscales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static inline int cw_block_elems(int type) {
    switch (type) {
    case CW_TYPE_F32: case CW_TYPE_F16: case CW_TYPE_BF16: return 1;
    case CW_TYPE_Q4_0: case CW_TYPE_Q4_1: case CW_TYPE_Q5_0: case CW_TYPE_Q5_1: case CW_TYPE_Q8_0: return 32;
    case CW_TYPE_Q4_K: case CW_TYPE_Q5_K: case CW_TYPE_Q6_K: return 256;
    default: return 0;
    }
}

static inline int cw_block_bytes(int type) {
    switch (type) {
    case CW_TYPE_F32: return 4;
    case CW_TYPE_F16: case CW_TYPE_BF16: return 2;
    case CW_TYPE_Q4_0: return 18;
    case CW_TYPE_Q4_1: return 20;
    case CW_TYPE_Q5_0: return 22;
    case CW_TYPE_Q5_1: return 24;
    case CW_TYPE_Q8_0: return 34;
    case CW_TYPE_Q4_K: return 144;
    case CW_TYPE_Q5_K: return 176;
    case CW_TYPE_Q6_K: return 210;
    default: return 0;
    }
}

static inline int cw_is_kquant(int type) {
    return type == CW_TYPE_Q4_K || type == CW_TYPE_Q5_K || type == CW_TYPE_Q6_K;
}

#endif
