// Body of the paged KV attention kernel, compiled once per instruction-set level (like
// kernels_impl.h). The including file defines KV_ISA, KV_VL, KV_X86 and wraps the include in a
// target attribute. The fp32 path repeats kernels_impl.h's `dot`, `hsum` and axpy instruction for
// instruction so that an all-fp32 cache gives bit-identical results to cw_attention.

#define KV_CAT2(a, b) a##_##b
#define KV_CAT(a, b) KV_CAT2(a, b)
#define KFN(name) KV_CAT(name, KV_ISA)

typedef float KFN(vf) __attribute__((ext_vector_type(KV_VL)));
#define KVF KFN(vf)
#define KV_INLINE static inline __attribute__((always_inline))
#define KV_FMA(a, b, c) ((a) * (b) + (c))

#define SC_VF KVF
#define SC_FN KFN
#define SC_VL KV_VL
#define SC_X86 KV_X86
#define SC_INLINE KV_INLINE
#include "simd_common.h"

KV_INLINE float KFN(dot)(const float *a, const float *b, int64_t n) {
    float s = KFN(hsum)(KFN(dot_lanes)(a, b, n));
    for (int64_t i = n - n % KV_VL; i < n; i++) s += a[i] * b[i];
    return s;
}

KV_INLINE void KFN(axpy)(float *o, float p, const float *vr, int hd) {
    int d = 0;
    const KVF pv = p;
    for (; d + KV_VL <= hd; d += KV_VL) KFN(vstore)(o + d, KV_FMA(pv, KFN(vload)(vr + d), KFN(vload)(o + d)));
    for (; d < hd; d++) o[d] += p * vr[d];
}

// Widens one row of `hd` elements in `fmt` to fp32 (int8: times `rs`, a per-row scale, or 1).
KV_INLINE void KFN(widen_row)(int fmt, const void *src, int hd, float rs, float *dst) {
    int d = 0;
    if (fmt == KV_FMT_F16) {
        const uint16_t *p = (const uint16_t *)src;
#if KV_X86 && KV_VL == 16
        for (; d + 16 <= hd; d += 16) _mm512_storeu_ps(dst + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + d))));
#elif KV_X86
        for (; d + 8 <= hd; d += 8) _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + d))));
#endif
        for (; d < hd; d++) dst[d] = cw_h2f_portable(p[d]);
    } else {
        const int8_t *p = (const int8_t *)src;
#if KV_X86 && KV_VL == 16
        const __m512 sv = _mm512_set1_ps(rs);
        for (; d + 16 <= hd; d += 16)
            _mm512_storeu_ps(dst + d, _mm512_mul_ps(sv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + d))))));
#elif KV_X86
        const __m256 sv = _mm256_set1_ps(rs);
        for (; d + 8 <= hd; d += 8)
            _mm256_storeu_ps(dst + d, _mm256_mul_ps(sv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + d))))));
#endif
        for (; d < hd; d++) dst[d] = rs * (float)p[d];
    }
}

// One item = (kv head, subgroup, token): `sub` of the query heads sharing that KV head (normally
// all of them, so each cached row is read from memory once per group; fewer when there are too few
// items to keep every thread busy, e.g. one decode token). Items are ordered kv head, subgroup,
// token: item = (kvh·nsub + sg)·tokens + j, token t = j, or kv_zigzag(j, tokens) with `a->zigzag`.
static void KFN(kv_attn)(const kv_attn_args *a, int64_t i0, int64_t i1) {
    const int hd = a->head_dim, group = a->sub, nsub = a->heads / a->kv_heads / a->sub;
    const int64_t qstride = (int64_t)a->heads * hd, total = a->base + a->tokens;
    // Scratch: scores [group][total], widened row [hd], scaled queries [group][hd].
    float *sc = (float *)cw_tls_scratch(CW_TLS_SCORES, (size_t)(group * total + hd + group * hd + 64) * sizeof(float));
    if (!sc) return;
    float *row = sc + group * total, *qk = row + hd;
    for (int64_t item = i0; item < i1; item++) {
        const int kvsg = (int)(item / a->tokens);
        const int kvh = kvsg / nsub, q0 = kvh * nsub * group + (kvsg % nsub) * group;
        const int64_t j = item % a->tokens, t = a->zigzag ? kv_zigzag(j, a->tokens) : j;
        const int64_t n = a->base + t + 1;
        float m[64], sum[64];
        const int G = group < 64 ? group : 64;
        for (int g = 0; g < G; g++) m[g] = -INFINITY;
        // Scores.
        int64_t j0 = 0;
        for (int64_t b = 0; b < a->blocks && j0 < n; b++) {
            const kv_slab *s = a->slabs + b * a->kv_heads + kvh;
            const int64_t cnt = s->n < n - j0 ? s->n : n - j0;
            if (s->k_fmt == KV_FMT_F32) {
                const float *kb = (const float *)s->k;
                for (int64_t j = 0; j < cnt; j++)
                    for (int g = 0; g < G; g++) {
                        const float *qr = a->q + t * qstride + (int64_t)(q0 + g) * hd;
                        const float v = KFN(dot)(qr, kb + j * hd, hd) * a->scale;
                        sc[g * total + j0 + j] = v;
                        m[g] = v > m[g] ? v : m[g];
                    }
            } else if (s->k_fmt == KV_FMT_F16) {
                const uint16_t *kb = (const uint16_t *)s->k;
                for (int64_t j = 0; j < cnt; j++) {
                    KFN(widen_row)(KV_FMT_F16, kb + j * hd, hd, 1, row);
                    for (int g = 0; g < G; g++) {
                        const float *qr = a->q + t * qstride + (int64_t)(q0 + g) * hd;
                        const float v = KFN(dot)(qr, row, hd) * a->scale;
                        sc[g * total + j0 + j] = v;
                        m[g] = v > m[g] ? v : m[g];
                    }
                }
            } else {
                // int8 keys, per-channel scales: q·k = Σ_d (q[d]·scale[d])·k8[d].
                const int8_t *kb = (const int8_t *)s->k;
                for (int g = 0; g < G; g++) {
                    const float *qr = a->q + t * qstride + (int64_t)(q0 + g) * hd;
                    for (int d = 0; d < hd; d++) qk[g * hd + d] = qr[d] * s->k_scale[d];
                }
                for (int64_t j = 0; j < cnt; j++) {
                    KFN(widen_row)(KV_FMT_I8, kb + j * hd, hd, 1, row);
                    for (int g = 0; g < G; g++) {
                        const float v = KFN(dot)(qk + g * hd, row, hd) * a->scale;
                        sc[g * total + j0 + j] = v;
                        m[g] = v > m[g] ? v : m[g];
                    }
                }
            }
            j0 += cnt;
        }
        // Softmax (same order as cw_attention).
        for (int g = 0; g < G; g++) {
            float *sg = sc + g * total;
            float s = 0;
            for (int64_t j = 0; j < n; j++) { const float e = expf(sg[j] - m[g]); sg[j] = e; s += e; }
            sum[g] = 1.0f / s;
            float *o = a->out + t * qstride + (int64_t)(q0 + g) * hd;
            for (int d = 0; d < hd; d++) o[d] = 0;
        }
        // Weighted sum of values.
        j0 = 0;
        for (int64_t b = 0; b < a->blocks && j0 < n; b++) {
            const kv_slab *s = a->slabs + b * a->kv_heads + kvh;
            const int64_t cnt = s->n < n - j0 ? s->n : n - j0;
            for (int64_t j = 0; j < cnt; j++) {
                const float *vr;
                if (s->v_fmt == KV_FMT_F32) {
                    vr = (const float *)s->v + j * hd;
                } else if (s->v_fmt == KV_FMT_F16) {
                    KFN(widen_row)(KV_FMT_F16, (const uint16_t *)s->v + j * hd, hd, 1, row);
                    vr = row;
                } else {
                    KFN(widen_row)(KV_FMT_I8, (const int8_t *)s->v + j * hd, hd, s->v_scale[j], row);
                    vr = row;
                }
                for (int g = 0; g < G; g++) {
                    const float p = sc[g * total + j0 + j] * sum[g];
                    KFN(axpy)(a->out + t * qstride + (int64_t)(q0 + g) * hd, p, vr, hd);
                }
            }
            j0 += cnt;
        }
        if (a->mass) {
            for (int g = 0; g < G; g++) {
                float *mrow = a->mass + (int64_t)(q0 + g) * total;
                const float *sg = sc + g * total;
                for (int64_t j = 0; j < n; j++) mrow[j] += sg[j] * sum[g];
            }
        }
    }
}


// ---- Fast path: caches holding fp16 or int8 blocks ----------------------------------------------
//
// One item = (KV head, tile of `a->tq` tokens, split): the queries of all query heads of the group
// for every token of the tile (up to KV_GM per pass) over the entries [r0, r1) of one split of the
// sequence, so each cached row is read from memory once per pass and widened once for all of them.
// Rows are taken `KV_CH` at a time: the scores of a chunk are computed for all queries (one vector
// accumulator per row and query, reduced `KV_VL` rows at a time by a transposing add tree), then
// per query an online-softmax step (vectorized exp) over the rows it sees, and the weighted sum of
// the chunk's values. A tile's later tokens see more rows: for an earlier one the rows past its own
// last get probability 0 exactly (its softmax step runs on its own rows, in the same chunks and
// order as alone; the extra terms add 0·v): each query's result is the one a tile of one token gives.
// The softmax scale (and for int8 keys the block's per-channel key scales) is folded into the
// query; for int8 values the per-token scale is folded into the probability. With one split per
// item the result is normalized into `out` directly; with more (decode, tiles of one token), each
// split leaves (max, sum, unnormalized output) in `a->part` for kv_attention to merge.

#define KV_GM KV_QMAX
#define KV_CH 64
#define KV_NV 4
// Vectors of columns per pass of the weighted value sum: G·NV accumulators stay in registers.
#if KV_VL == 16
#define KV_NVG(G) ((G) <= 6 ? 4 : 2)
#else
#define KV_NVG(G) ((G) <= 3 ? 4 : (G) <= 6 ? 2 : 1)
#endif

typedef int8_t KFN(vi8) __attribute__((ext_vector_type(KV_VL)));
typedef int32_t KFN(vi32) __attribute__((ext_vector_type(KV_VL)));

// `KV_VL` elements of a row in `fmt` from element index `i`, widened to fp32 (int8 unscaled).
KV_INLINE KVF KFN(ldv)(const int fmt, const void *base, int64_t i) {
    if (fmt == KV_FMT_F32) return KFN(vload)((const float *)base + i);
    if (fmt == KV_FMT_I8) {
        KFN(vi8) x;
        memcpy(&x, (const int8_t *)base + i, sizeof x);
        return __builtin_convertvector(x, KVF);
    }
    return KFN(h16load)((const uint16_t *)base + i);
}

KV_INLINE float KFN(ld1)(const int fmt, const void *base, int64_t i) {
    if (fmt == KV_FMT_F32) return ((const float *)base)[i];
    if (fmt == KV_FMT_I8) return (float)((const int8_t *)base)[i];
    return cw_h2f_portable(((const uint16_t *)base)[i]);
}

// e^x for x ≤ 0 (x < -87 gives ~1e-38 instead of a denormal or 0): 2^n · p(r), |r| ≤ ln2/2,
// degree-6 Taylor polynomial (relative error < 2e-7).
KV_INLINE KVF KFN(vexp)(KVF x) {
    x = x < -87.0f ? (KVF)-87.0f : x;
    const KVF n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const KVF r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    KVF p = r * (1.0f / 720) + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const KFN(vi32) e = (__builtin_convertvector(n, KFN(vi32)) + 127) << 23;
    return p * (KVF)e;
}

// s[g·KV_CH + j] = Σ_d qs[g·hd + d]·k[j][d], rows j < cnt from element index `row0·hd` of `kb`.
KV_INLINE void KFN(kscores)(const int G, const int fmt, const void *kb, int64_t row0, int cnt, int hd, const float *qs, float *s) {
    const int dv = hd - hd % KV_VL;
    for (int jb = 0; jb < cnt; jb += KV_VL) {
        const int nr = cnt - jb < KV_VL ? cnt - jb : KV_VL;
        KVF acc[KV_GM][KV_VL];
        // Rows in pairs where the registers allow (2·G accumulators): each query vector loaded
        // feeds two FMAs (one row at a time loaded G + 1 vectors per G FMAs: bound by the loads).
        // Each row's sum is the same sequence of FMAs either way.
        const int pairs = KV_VL >= 16 || G <= 6;
        for (int r = 0; r < KV_VL; r += 1 + pairs) {
            KVF a0[KV_GM], a1[KV_GM];
            for (int g = 0; g < G; g++) { a0[g] = 0; a1[g] = 0; }
            if (pairs && r + 1 < nr) {
                const int64_t e = (row0 + jb + r) * hd;
                for (int d = 0; d < dv; d += KV_VL) {
                    const KVF x0 = KFN(ldv)(fmt, kb, e + d), x1 = KFN(ldv)(fmt, kb, e + hd + d);
                    for (int g = 0; g < G; g++) {
                        const KVF qv = KFN(vload)(qs + g * hd + d);
                        a0[g] = KV_FMA(qv, x0, a0[g]);
                        a1[g] = KV_FMA(qv, x1, a1[g]);
                    }
                }
            } else if (r < nr) {
                const int64_t e = (row0 + jb + r) * hd;
                for (int d = 0; d < dv; d += KV_VL) {
                    const KVF x = KFN(ldv)(fmt, kb, e + d);
                    for (int g = 0; g < G; g++) a0[g] = KV_FMA(KFN(vload)(qs + g * hd + d), x, a0[g]);
                }
            }
            for (int g = 0; g < G; g++) acc[g][r] = a0[g];
            if (pairs)
                for (int g = 0; g < G; g++) acc[g][r + 1] = a1[g];
        }
        for (int g = 0; g < G; g++) {
            const KVF v = KFN(hsum_rows)(acc[g]);
            float *sg = s + g * KV_CH + jb;
            if (nr == KV_VL) {
                KFN(vstore)(sg, v);
            } else {
                float t[KV_VL];
                KFN(vstore)(t, v);
                for (int r = 0; r < nr; r++) sg[r] = t[r];
            }
            if (dv < hd)
                for (int r = 0; r < nr; r++) {
                    const int64_t e = (row0 + jb + r) * hd;
                    for (int d = dv; d < hd; d++) sg[r] += qs[g * hd + d] * KFN(ld1)(fmt, kb, e + d);
                }
        }
    }
}

// o[g·hd + d0 + ..] += Σ_j p[g·KV_CH + j]·v[j][d0 + ..] over NV vectors of columns.
KV_INLINE void KFN(vcols)(const int G, const int fmt, const int NV, const void *vb, int64_t row0, int cnt, int hd, int d0,
                          const float *p, float *o) {
    KVF acc[KV_GM][KV_NV];
    for (int g = 0; g < G; g++)
        for (int k = 0; k < NV; k++) acc[g][k] = KFN(vload)(o + g * hd + d0 + k * KV_VL);
    for (int j = 0; j < cnt; j++) {
        const int64_t e = (row0 + j) * hd + d0;
        KVF x[KV_NV];
        for (int k = 0; k < NV; k++) x[k] = KFN(ldv)(fmt, vb, e + k * KV_VL);
        for (int g = 0; g < G; g++) {
            const KVF w = p[g * KV_CH + j];
            for (int k = 0; k < NV; k++) acc[g][k] = KV_FMA(w, x[k], acc[g][k]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int k = 0; k < NV; k++) KFN(vstore)(o + g * hd + d0 + k * KV_VL, acc[g][k]);
}

KV_INLINE void KFN(vsum)(const int G, const int fmt, const void *vb, int64_t row0, int cnt, int hd, const float *p, float *o) {
    const int dv = hd - hd % KV_VL;
    int d0 = 0;
    const int NV = KV_NVG(G);
    for (; d0 + NV * KV_VL <= dv; d0 += NV * KV_VL) KFN(vcols)(G, fmt, NV, vb, row0, cnt, hd, d0, p, o);
    for (; d0 < dv; d0 += KV_VL) KFN(vcols)(G, fmt, 1, vb, row0, cnt, hd, d0, p, o);
    for (int d = dv; d < hd; d++)
        for (int j = 0; j < cnt; j++) {
            const float x = KFN(ld1)(fmt, vb, (row0 + j) * hd + d);
            for (int g = 0; g < G; g++) o[g * hd + d] += p[g * KV_CH + j] * x;
        }
}

// Blocks are separate allocations, too short for the hardware prefetcher to get going: fetch the
// next block's rows and scales while this one is processed.
static inline void KFN(prefetch_slab)(const kv_slab *sl, int hd) {
    static const int esz[3] = {4, 2, 1};
    const char *k = (const char *)sl->k, *v = (const char *)sl->v;
    const int64_t kb = (int64_t)sl->n * hd * esz[sl->k_fmt < 3 && sl->k_fmt >= 0 ? sl->k_fmt : 0];
    const int64_t vb = (int64_t)sl->n * hd * esz[sl->v_fmt < 3 && sl->v_fmt >= 0 ? sl->v_fmt : 0];
    for (int64_t i = 0; i < kb; i += 64) __builtin_prefetch(k + i);
    for (int64_t i = 0; i < vb; i += 64) __builtin_prefetch(v + i);
    if (sl->k_scale)
        for (int64_t i = 0; i < (int64_t)hd * 4; i += 64) __builtin_prefetch((const char *)sl->k_scale + i);
    if (sl->v_scale)
        for (int64_t i = 0; i < (int64_t)sl->n * 4; i += 64) __builtin_prefetch((const char *)sl->v_scale + i);
}

// G queries of KV head kvh: query i (of query head hv[i]) reads qv[i] (head_dim floats), sees entries
// [r0, min(r1, nv[i])) and writes ov[i] (or, with `part`, its split's partial result at
// part + i·(head_dim + 2)).
KV_INLINE void KFN(fast_queries)(const int G, const kv_attn_args *a, const float *const *qv, float *const *ov,
                                 const int64_t *nv, const int *hv, int kvh, int64_t r0, int64_t r1, float *part, float *ws) {
    const int hd = a->head_dim;
    const int64_t total = a->base + a->tokens;
    float *qb = ws, *qk = qb + KV_GM * hd, *o = qk + KV_GM * hd, *s = o + KV_GM * hd;
    float *raw = a->mass ? s + KV_GM * KV_CH : NULL;
    float m[KV_GM], l[KV_GM];
    int64_t lim[KV_GM], end = r0;
    for (int g = 0; g < G; g++) {
        const float *qr = qv[g];
        for (int d = 0; d < hd; d++) { qb[g * hd + d] = qr[d] * a->scale; o[g * hd + d] = 0; }
        m[g] = -INFINITY;
        l[g] = 0;
        lim[g] = nv[g] < r1 ? nv[g] : r1;
        end = lim[g] > end ? lim[g] : end;
    }
    r1 = end;
    int64_t j0 = 0;
    for (int64_t b = 0; b < a->blocks && j0 < r1; b++) {
        const kv_slab *sl = a->slabs + b * a->kv_heads + kvh;
        const int64_t bs = j0 > r0 ? j0 : r0, be = j0 + sl->n < r1 ? j0 + sl->n : r1;
        if (bs >= be) { j0 += sl->n; continue; }
        if (a->tq == 1 && b + 1 < a->blocks && j0 + sl->n < r1) KFN(prefetch_slab)(sl + a->kv_heads, hd);
        const float *qs = qb;
        if (sl->k_fmt == KV_FMT_I8) {
            for (int g = 0; g < G; g++)
                for (int d = 0; d < hd; d++) qk[g * hd + d] = qb[g * hd + d] * sl->k_scale[d];
            qs = qk;
        }
        for (int64_t c0 = bs; c0 < be; c0 += KV_CH) {
            const int cnt = (int)(be - c0 < KV_CH ? be - c0 : KV_CH);
            const int64_t row0 = c0 - j0;
            switch (sl->k_fmt) {
            case KV_FMT_F32: KFN(kscores)(G, KV_FMT_F32, sl->k, row0, cnt, hd, qs, s); break;
            case KV_FMT_F16: KFN(kscores)(G, KV_FMT_F16, sl->k, row0, cnt, hd, qs, s); break;
            default: KFN(kscores)(G, KV_FMT_I8, sl->k, row0, cnt, hd, qs, s); break;
            }
            // Online softmax step, per query over the rows it sees (the others get 0).
            for (int g = 0; g < G; g++) {
                float *sg = s + g * KV_CH;
                const int cg = lim[g] <= c0 ? 0 : (lim[g] - c0 < cnt ? (int)(lim[g] - c0) : cnt);
                for (int j = cg; j < cnt; j++) sg[j] = 0;
                if (cg == 0) continue;
                if (raw) memcpy(raw + g * total + c0, sg, (size_t)cg * sizeof(float));
                float mx = m[g];
                {
                    KVF mv = mx;
                    int j = 0;
                    for (; j + KV_VL <= cg; j += KV_VL) {
                        const KVF x = KFN(vload)(sg + j);
                        mv = x > mv ? x : mv;
                    }
                    float t[KV_VL];
                    memcpy(t, &mv, sizeof mv);
                    for (int k = 0; k < KV_VL; k++) mx = t[k] > mx ? t[k] : mx;
                    for (; j < cg; j++) mx = sg[j] > mx ? sg[j] : mx;
                }
                if (mx > m[g]) {
                    const float alpha = expf(m[g] - mx);
                    l[g] *= alpha;
                    for (int d = 0; d < hd; d++) o[g * hd + d] *= alpha;
                    m[g] = mx;
                }
                const KVF mv = m[g];
                KVF acc = 0;
                int j = 0;
                for (; j + KV_VL <= cg; j += KV_VL) {
                    const KVF e = KFN(vexp)(KFN(vload)(sg + j) - mv);
                    acc += e;
                    KFN(vstore)(sg + j, e);
                }
                float sum = KFN(hsum)(acc);
                if (j < cg) {
                    float t8[KV_VL];
                    for (int k = 0; k < KV_VL; k++) t8[k] = j + k < cg ? sg[j + k] - m[g] : -INFINITY;
                    const KVF e = KFN(vexp)(KFN(vload)(t8));
                    float te[KV_VL];
                    memcpy(te, &e, sizeof e);
                    for (int k = 0; j + k < cg; k++) { sg[j + k] = te[k]; sum += te[k]; }
                }
                l[g] += sum;
                if (sl->v_fmt == KV_FMT_I8) {
                    int k = 0;
                    for (; k + KV_VL <= cg; k += KV_VL) KFN(vstore)(sg + k, KFN(vload)(sg + k) * KFN(vload)(sl->v_scale + row0 + k));
                    for (; k < cg; k++) sg[k] *= sl->v_scale[row0 + k];
                }
            }
            switch (sl->v_fmt) {
            case KV_FMT_F32: KFN(vsum)(G, KV_FMT_F32, sl->v, row0, cnt, hd, s, o); break;
            case KV_FMT_F16: KFN(vsum)(G, KV_FMT_F16, sl->v, row0, cnt, hd, s, o); break;
            default: KFN(vsum)(G, KV_FMT_I8, sl->v, row0, cnt, hd, s, o); break;
            }
        }
        j0 += sl->n;
    }
    for (int g = 0; g < G; g++) {
        if (part) {
            float *pp = part + (int64_t)g * (hd + 2);
            pp[0] = m[g];
            pp[1] = l[g];
            memcpy(pp + 2, o + g * hd, (size_t)hd * sizeof(float));
            continue;
        }
        const float inv = l[g] > 0 ? 1.0f / l[g] : 0;
        float *dst = ov[g];
        for (int d = 0; d < hd; d++) dst[d] = o[g * hd + d] * inv;
        if (raw) {
            float *mrow = a->mass + (int64_t)hv[g] * total;
            for (int64_t j = r0; j < lim[g]; j++) mrow[j] += expf(raw[g * total + j] - m[g]) * inv;
        }
    }
}

// Items i0 ..< i1, item = (kvh·tiles + j)·splits + split. Tile j is tokens [tile·tq, tile·tq + tq)
// with tile = j, or kv_zigzag(j, tiles) with `a->zigzag`.
static void KFN(kv_attn_fast)(const kv_attn_args *a, int64_t i0, int64_t i1) {
    const int hd = a->head_dim, group = a->heads / a->kv_heads;
    const int64_t total = a->base + a->tokens, S = a->splits, TQ = a->tq, NT = (a->tokens + TQ - 1) / TQ;
    const int64_t qstride = (int64_t)a->heads * hd;
    const size_t ws_floats = (size_t)(3 * KV_GM * hd + KV_GM * KV_CH) + (a->mass ? (size_t)(KV_GM * total) : 0) + 64;
    float *ws = (float *)cw_tls_scratch(CW_TLS_SCORES, ws_floats * sizeof(float));
    if (!ws) return;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t split = item % S, j = (item / S) % NT;
        const int kvh = (int)(item / S / NT);
        const int64_t tile = a->zigzag ? kv_zigzag(j, NT) : j;
        const int64_t t0 = tile * TQ, t1 = t0 + TQ < a->tokens ? t0 + TQ : a->tokens;
        // One split (S > 1 only for tiles of one token): entries [r0, r1) of that token's.
        const int64_t n = a->base + t0 + 1, r0 = S > 1 ? n * split / S : 0, r1 = S > 1 ? n * (split + 1) / S : a->base + t1;
        // Queries in (token, head) order, in passes of 8, 6, 4, 3, 2 or 1 (the sizes compiled: each
        // size is a copy of the pass unrolled for it, and compile time grows with their sum).
        const int64_t nq = (t1 - t0) * group;
        for (int64_t q0 = 0, G = 0; q0 < nq; q0 += G) {
            const int64_t rest = nq - q0;
            G = rest >= 8 ? 8 : rest >= 6 ? 6 : rest >= 4 ? 4 : rest;
            const float *qv[KV_GM];
            float *ov[KV_GM];
            int64_t nv[KV_GM];
            int hv[KV_GM];
            for (int g = 0; g < G; g++) {
                const int64_t t = t0 + (q0 + g) / group, h = (int64_t)kvh * group + (q0 + g) % group;
                qv[g] = a->q + t * qstride + h * hd;
                ov[g] = a->out + t * qstride + h * hd;
                nv[g] = a->base + t + 1;
                hv[g] = (int)h;
            }
            float *part = a->part ? a->part + (item * group + q0) * (int64_t)(hd + 2) : NULL;
            switch (G) {
#define KV_G(N) case N: KFN(fast_queries)(N, a, qv, ov, nv, hv, kvh, r0, r1, part, ws); break;
            KV_G(1) KV_G(2) KV_G(3) KV_G(4) KV_G(6)
            default: KFN(fast_queries)(8, a, qv, ov, nv, hv, kvh, r0, r1, part, ws); break;
#undef KV_G
            }
        }
    }
}

#undef KV_GM
#undef KV_CH
#undef KV_NV
#undef KV_NVG

#undef KVF
#undef KFN
#undef KV_CAT
#undef KV_CAT2
#undef KV_INLINE
#undef KV_FMA
