// Paged KV attention and KV format conversions (see include/kv_kernels.h).
#include "cw_internal.h"
#include "include/kv_kernels.h"
#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *q;
    float *out;
    int64_t tokens, base, blocks;
    int heads, kv_heads, head_dim, sub;
    const kv_slab *slabs;
    float scale;
    float *mass;
    int64_t splits; // fast path: splits of each query's entries
    float *part;    // fast path with splits > 1: (max, sum, output[head_dim]) per item and head
    int64_t tq;     // fast path: tokens per item (a tile; 1 with splits or `mass`)
    int zigzag;     // fast path: tiles in the order 0, last, 1, last − 1, … (see kv_attn_fast)
} kv_attn_args;

// The fast path's most queries (tokens × query heads of one KV head) per pass over a chunk of rows.
#define KV_QMAX 8

// Item j of n in zigzag order: 0, n − 1, 1, n − 2, … — a later token reads more cached rows, and the
// pool hands each thread a contiguous range of items, which this order keeps equal in work.
static inline int64_t kv_zigzag(int64_t j, int64_t n) { return j % 2 ? n - 1 - j / 2 : j / 2; }

#define KV_ISA portable
#define KV_VL 4
#define KV_X86 0
#include "kv_attention_impl.h"
#undef KV_ISA
#undef KV_VL
#undef KV_X86

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define KV_ISA avx2
#define KV_VL 8
#define KV_X86 1
#include "kv_attention_impl.h"
#undef KV_ISA
#undef KV_VL
#undef KV_X86
#pragma clang attribute pop

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), apply_to = function)
#define KV_ISA avx512
#define KV_VL 16
#define KV_X86 1
#include "kv_attention_impl.h"
#undef KV_ISA
#undef KV_VL
#undef KV_X86
#pragma clang attribute pop
#endif

typedef void (*kv_attn_fn)(const kv_attn_args *, int64_t, int64_t);
typedef struct { kv_attn_fn fn; const kv_attn_args *a; } kv_attn_ctx;
static void kv_attn_task(void *c, int64_t s, int64_t e) { kv_attn_ctx *x = (kv_attn_ctx *)c; x->fn(x->a, s, e); }

int kv_attention(const float *q, float *out, int64_t tokens, int64_t base, int heads, int kv_heads,
                 int head_dim, const kv_slab *slabs, int64_t blocks, float scale, float *mass,
                 int fast, cw_pool *pool) {
    if (tokens <= 0) return 0;
    if (heads <= 0 || kv_heads <= 0 || head_dim <= 0 || heads % kv_heads || heads / kv_heads > 64 || base < 0) return -1;
    kv_attn_args a = {.q = q, .out = out, .tokens = tokens, .base = base, .blocks = blocks, .heads = heads,
                      .kv_heads = kv_heads, .head_dim = head_dim, .slabs = slabs, .scale = scale, .mass = mass};
    // All-fp32 caches take the kernel that matches cw_attention bit for bit; any fp16/int8 block
    // selects the fast path (all heads of a group per pass, online softmax, splits for decode).
    int all_f32 = !fast;
    for (int64_t i = 0; i < blocks * kv_heads && all_f32; i++)
        all_f32 = slabs[i].k_fmt == KV_FMT_F32 && slabs[i].v_fmt == KV_FMT_F32;
    kv_attn_fn fn = all_f32 ? kv_attn_portable : kv_attn_fast_portable;
#if defined(__x86_64__) || defined(_M_X64)
    switch (cw_kernel_path()) {
    case CW_PATH_AVX2: fn = all_f32 ? kv_attn_avx2 : kv_attn_fast_avx2; break;
    case CW_PATH_AVX512: fn = all_f32 ? kv_attn_avx512 : kv_attn_fast_avx512; break;
    default: break;
    }
#endif
    const int group = heads / kv_heads, threads = pool ? cw_pool_threads(pool) : 1;
    kv_attn_ctx c = {fn, &a};
    if (!all_f32) {
        // Split each query's entries when there are too few (KV head, token) items to give every
        // thread an equal share (decode): the smallest count that does, at least 64 entries each.
        // With `mass`, no splits, and one thread owns all tokens of a KV head (one writer per row).
        const int64_t units = tokens * kv_heads;
        int64_t S = 1;
        if (!mass && threads > 1 && units < 4 * threads && units % threads) {
            while ((units * S) % threads) S++;
            const int64_t most = (base + 1) / 64 > 1 ? (base + 1) / 64 : 1;
            if (S > most) S = most;
        }
        a.splits = S;
        // Prefill: tiles of several tokens per item, so each cached row read (and widened) serves
        // all their queries — as many tokens as fill KV_QMAX queries, fewer when that would leave
        // fewer than two items per thread.
        a.tq = 1;
        if (S == 1 && !mass) {
            int64_t tq = KV_QMAX / group > 1 ? KV_QMAX / group : 1;
            while (tq > 1 && kv_heads * ((tokens + tq - 1) / tq) < 2 * threads) tq--;
            a.tq = tq;
            a.zigzag = 1;
        }
        if (S > 1) {
            a.part = (float *)malloc((size_t)(units * S * group * (head_dim + 2)) * sizeof(float));
            if (!a.part) { a.splits = 1; S = 1; }
        }
        cw_pool_parallel_for(pool, kv_heads * ((tokens + a.tq - 1) / a.tq) * S, mass ? tokens : 1, kv_attn_task, &c);
        if (S > 1) {
            // Merge the splits: o = Σ_s e^(m_s − M)·o_s / Σ_s e^(m_s − M)·l_s.
            const int64_t stride = (int64_t)group * (head_dim + 2), qstride = (int64_t)heads * head_dim;
            for (int64_t u = 0; u < units; u++) {
                const int kvh = (int)(u / tokens);
                const int64_t t = u % tokens;
                for (int g = 0; g < group; g++) {
                    float M = -INFINITY, L = 0;
                    for (int64_t sp = 0; sp < S; sp++) {
                        const float ms = a.part[(u * S + sp) * stride + (int64_t)g * (head_dim + 2)];
                        M = ms > M ? ms : M;
                    }
                    float *dst = out + t * qstride + (int64_t)(kvh * group + g) * head_dim;
                    for (int d = 0; d < head_dim; d++) dst[d] = 0;
                    for (int64_t sp = 0; sp < S; sp++) {
                        const float *pp = a.part + (u * S + sp) * stride + (int64_t)g * (head_dim + 2);
                        if (pp[0] == -INFINITY) continue;
                        const float w = expf(pp[0] - M);
                        L += w * pp[1];
                        for (int d = 0; d < head_dim; d++) dst[d] += w * pp[2 + d];
                    }
                    const float inv = L > 0 ? 1.0f / L : 0;
                    for (int d = 0; d < head_dim; d++) dst[d] *= inv;
                }
            }
            free(a.part);
        }
        return 0;
    }
    // Query heads per item: the whole group, unless that leaves threads idle (decode).
    a.sub = group;
    while (tokens * kv_heads * (group / a.sub) < 2 * threads && a.sub > 1) {
        int s = a.sub - 1;
        while (s > 1 && group % s) s--;
        a.sub = s;
    }
    // With `mass`, one thread owns all tokens of a (KV head, subgroup), so its rows of `mass` have one writer.
    a.zigzag = 1;  // (kv_zigzag)
    cw_pool_parallel_for(pool, tokens * kv_heads * (group / a.sub), mass ? tokens : 1, kv_attn_task, &c);
    return 0;
}

void kv_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = cw_fp32_to_fp16(src[i]);
}

void kv_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = cw_h2f_portable(src[i]);
}

// Round to nearest (ties to even) by the 1.5·2²³ trick after clamping to ±127: plain adds, so the
// loops below vectorize even at the baseline ISA this file is compiled for (roundf was a libm call
// per element, ~1% of a `balanced` prefill's samples).
static inline int8_t kv_q8(float x, float inv) {
    float r = x * inv;
    r = r > 127 ? 127 : (r < -127 ? -127 : r);
    r = (r + 12582912.0f) - 12582912.0f;
    return (int8_t)(int)r;
}

enum { KV_Q_CHANNELS = 256 };

// Row by row (contiguous), with one running max and one reciprocal per channel, for up to
// KV_Q_CHANNELS channels at a time.
void kv_quantize_per_channel(const float *src, int64_t n, int head_dim, int8_t *dst, float *scale) {
    float amax[KV_Q_CHANNELS], inv[KV_Q_CHANNELS];
    for (int d0 = 0; d0 < head_dim; d0 += KV_Q_CHANNELS) {
        const int w = head_dim - d0 < KV_Q_CHANNELS ? head_dim - d0 : KV_Q_CHANNELS;
        for (int d = 0; d < w; d++) amax[d] = 0;
        for (int64_t j = 0; j < n; j++) {
            const float *row = src + j * head_dim + d0;
            for (int d = 0; d < w; d++) { const float v = fabsf(row[d]); amax[d] = v > amax[d] ? v : amax[d]; }
        }
        for (int d = 0; d < w; d++) {
            scale[d0 + d] = amax[d] / 127.0f;
            inv[d] = amax[d] > 0 ? 127.0f / amax[d] : 0;
        }
        for (int64_t j = 0; j < n; j++) {
            const float *row = src + j * head_dim + d0;
            int8_t *out = dst + j * head_dim + d0;
            for (int d = 0; d < w; d++) out[d] = kv_q8(row[d], inv[d]);
        }
    }
}

void kv_quantize_per_row(const float *src, int64_t n, int head_dim, int8_t *dst, float *scale) {
    for (int64_t j = 0; j < n; j++) {
        float amax = 0;
        for (int d = 0; d < head_dim; d++) { const float v = fabsf(src[j * head_dim + d]); amax = v > amax ? v : amax; }
        const float inv = amax > 0 ? 127.0f / amax : 0;
        scale[j] = amax / 127.0f;
        for (int d = 0; d < head_dim; d++) dst[j * head_dim + d] = kv_q8(src[j * head_dim + d], inv);
    }
}

void kv_widen(int fmt, int per_channel, const void *src, const float *scale, int64_t n, int head_dim, float *dst) {
    const int64_t total = n * head_dim;
    if (fmt == KV_FMT_F32) { memcpy(dst, src, (size_t)total * sizeof(float)); return; }
    if (fmt == KV_FMT_F16) { kv_f16_to_f32((const uint16_t *)src, dst, total); return; }
    const int8_t *p = (const int8_t *)src;
    for (int64_t j = 0; j < n; j++)
        for (int d = 0; d < head_dim; d++)
            dst[j * head_dim + d] = (float)p[j * head_dim + d] * (per_channel ? scale[d] : scale[j]);
}
