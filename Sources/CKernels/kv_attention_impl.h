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

KV_INLINE KVF KFN(vload)(const float *p) { KVF v; memcpy(&v, p, sizeof v); return v; }
KV_INLINE void KFN(vstore)(float *p, KVF v) { memcpy(p, &v, sizeof v); }

KV_INLINE float KFN(hsum)(KVF v) {
    float a[KV_VL];
    memcpy(a, &v, sizeof v);
    for (int w = KV_VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
}

KV_INLINE float KFN(dot)(const float *a, const float *b, int64_t n) {
    KVF s0 = 0, s1 = 0;
    int64_t i = 0;
    for (; i + 2 * KV_VL <= n; i += 2 * KV_VL) {
        s0 = KV_FMA(KFN(vload)(a + i), KFN(vload)(b + i), s0);
        s1 = KV_FMA(KFN(vload)(a + i + KV_VL), KFN(vload)(b + i + KV_VL), s1);
    }
    for (; i + KV_VL <= n; i += KV_VL) s0 = KV_FMA(KFN(vload)(a + i), KFN(vload)(b + i), s0);
    float s = KFN(hsum)(s0 + s1);
    for (; i < n; i++) s += a[i] * b[i];
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
// token: item = (kvh·nsub + sg)·tokens + t.
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
        const int64_t t = item % a->tokens;
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

#undef KVF
#undef KFN
#undef KV_CAT
#undef KV_CAT2
#undef KV_INLINE
#undef KV_FMA
