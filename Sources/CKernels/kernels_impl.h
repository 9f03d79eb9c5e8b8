// The kernel bodies, written once and compiled once per instruction-set level.
//
// The including file defines, before including:
//   CW_ISA   name suffix (portable, avx2, avx512)
//   CW_VL    fp32 lanes per vector in the exact-mode GEMM micro-kernel
//   CW_MR    rows per micro-kernel, CW_NT tokens per micro-kernel
//   CW_X86   1 to use x86 intrinsics (AVX2 + FMA + F16C at least)
//   CW_VNNI  1 when AVX512-VNNI is available (256- and 512-bit vpdpwssd)
// and wraps the include in `#pragma clang attribute push(__attribute__((target(...))))`, so the
// compiler may use that instruction set everywhere in here (also when auto-vectorizing loops).
//
// Numerics:
//  * Dequantization is bit-exact with ggml: products and sums in fp32, not contracted to FMAs.
//  * Exact mode: weights are dequantized to fp32 (a tile of rows at a time, into a per-thread
//    buffer that stays in L2), then a register-blocked FMA micro-kernel computes dot products
//    with the fp32 activations. Every output element (r, t) is computed by the same instruction
//    sequence whatever tile or thread it falls in, so results do not depend on the thread count.
//  * Fast mode: activations are quantized once per call to int16 blocks; weights stay packed and
//    are unpacked in registers and widened to int16 for s16×s16 integer dot products.

#define CW_CAT2(a, b) a##_##b
#define CW_CAT(a, b) CW_CAT2(a, b)
#define FN(name) CW_CAT(name, CW_ISA)

typedef float FN(vf) __attribute__((ext_vector_type(CW_VL)));
#define VF FN(vf)

#define CW_INLINE static inline __attribute__((always_inline))
// a*b+c; -ffp-contract=fast fuses it where the instruction set has FMA (not on baseline x86-64,
// where a fused call would become a slow libm fmaf).
#define CW_FMA(a, b, c) ((a) * (b) + (c))

CW_INLINE float FN(h2f)(uint16_t h) {
#if CW_X86
    // vmovd + vcvtph2ps. `_cvtsh_ss` compiles to vpinsrw into a vector register + vcvtph2ps; in the
    // block loops that was measured much slower (exact Q4_1 matvec 5.1 → 7.8 GB/s with this; why —
    // the insert's extra uops or a dependency on the register it inserts into — was not pinned down).
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((int)h)));
#else
    return cw_h2f_portable(h);
#endif
}

// ---------------------------------------------------------------------------------------------
// Dequantization (exact, ggml semantics)

#if CW_X86
// 32 bytes → 4×8 floats (unsigned or signed bytes), then y = f·d (+ m), not fused (ggml rounding).
CW_INLINE void FN(bytes_to_f)(__m256i q, int sgn, __m256 f[4]) {
#pragma clang fp contract(off)
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    if (sgn) {
        f[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
        f[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
        f[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
        f[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
    } else {
        f[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        f[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        f[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        f[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    }
}
CW_INLINE void FN(put_scaled)(float *y, __m256i q, int sgn, float d) {
#pragma clang fp contract(off)
    __m256 f[4];
    FN(bytes_to_f)(q, sgn, f);
    const __m256 dv = _mm256_set1_ps(d);
    for (int i = 0; i < 4; i++) _mm256_storeu_ps(y + 8 * i, _mm256_mul_ps(f[i], dv));
}
// y = d·q + m (Q4_1/Q5_1 order) or y = d·q - m (K-quant order; pass sub = 1)
CW_INLINE void FN(put_affine)(float *y, __m256i q, float d, float m, int sub) {
#pragma clang fp contract(off)
    __m256 f[4];
    FN(bytes_to_f)(q, 0, f);
    const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
    for (int i = 0; i < 4; i++) {
        const __m256 p = _mm256_mul_ps(f[i], dv);
        _mm256_storeu_ps(y + 8 * i, sub ? _mm256_sub_ps(p, mv) : _mm256_add_ps(p, mv));
    }
}
CW_INLINE __m256i FN(nibbles)(const uint8_t *p);
CW_INLINE __m256i FN(bit16)(uint32_t bits);

// Returns 1 when handled with intrinsics.
static int FN(dequant_simd)(int type, const uint8_t *p, float *y, int64_t n) {
#pragma clang fp contract(off)
    switch (type) {
    case CW_TYPE_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18, y += 32)
            FN(put_scaled)(y, _mm256_sub_epi8(FN(nibbles)(p + 2), _mm256_set1_epi8(8)), 1, FN(h2f)(cw_u16(p)));
        return 1;
    case CW_TYPE_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20, y += 32)
            FN(put_affine)(y, FN(nibbles)(p + 4), FN(h2f)(cw_u16(p)), FN(h2f)(cw_u16(p + 2)), 0);
        return 1;
    case CW_TYPE_Q5_0:
        for (int64_t b = 0; b < n / 32; b++, p += 22, y += 32) {
            uint32_t qh; memcpy(&qh, p + 2, 4);
            const __m256i q = _mm256_or_si256(FN(nibbles)(p + 6), FN(bit16)(qh));
            FN(put_scaled)(y, _mm256_sub_epi8(q, _mm256_set1_epi8(16)), 1, FN(h2f)(cw_u16(p)));
        }
        return 1;
    case CW_TYPE_Q5_1:
        for (int64_t b = 0; b < n / 32; b++, p += 24, y += 32) {
            uint32_t qh; memcpy(&qh, p + 4, 4);
            FN(put_affine)(y, _mm256_or_si256(FN(nibbles)(p + 8), FN(bit16)(qh)), FN(h2f)(cw_u16(p)), FN(h2f)(cw_u16(p + 2)), 0);
        }
        return 1;
    case CW_TYPE_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34, y += 32)
            FN(put_scaled)(y, _mm256_loadu_si256((const __m256i *)(p + 2)), 1, FN(h2f)(cw_u16(p)));
        return 1;
    case CW_TYPE_Q4_K:
    case CW_TYPE_Q5_K: {
        const int q5 = type == CW_TYPE_Q5_K;
        const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
        for (int64_t b = 0; b < n / 256; b++, p += q5 ? 176 : 144) {
            const float d = FN(h2f)(cw_u16(p)), dmin = FN(h2f)(cw_u16(p + 2));
            uint8_t sc[8], mn[8];
            cw_kscales(p + 4, sc, mn);
            const uint8_t *q = p + (q5 ? 48 : 16);
            __m256i hv = q5 ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
            for (int j = 0; j < 4; j++, y += 64) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * j));
                __m256i lo = _mm256_and_si256(qv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                if (q5) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hv, one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 1), one), 4));
                    hv = _mm256_srli_epi16(hv, 2);
                }
                FN(put_affine)(y, lo, d * sc[2 * j], dmin * mn[2 * j], 1);
                FN(put_affine)(y + 32, hi, d * sc[2 * j + 1], dmin * mn[2 * j + 1], 1);
            }
        }
        return 1;
    }
    case CW_TYPE_Q6_K: {
        const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30), c32 = _mm256_set1_epi8(32);
        for (int64_t b = 0; b < n / 256; b++, p += 210) {
            const float d = FN(h2f)(cw_u16(p + 208));
            const int8_t *sc = (const int8_t *)(p + 192);
            for (int half = 0; half < 2; half++, y += 128) {
                const uint8_t *ql = p + 64 * half, *qh = p + 128 + 32 * half;
                const int8_t *s = sc + 8 * half;
                const __m256i a = _mm256_loadu_si256((const __m256i *)ql), bq = _mm256_loadu_si256((const __m256i *)(ql + 32));
                const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
                __m256i v[4];
                v[0] = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
                v[1] = _mm256_or_si256(_mm256_and_si256(bq, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
                v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), _mm256_and_si256(h, m30));
                v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bq, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
                for (int i = 0; i < 4; i++) {
                    __m256 f[4];
                    FN(bytes_to_f)(_mm256_sub_epi8(v[i], c32), 1, f);
                    const __m256 d0 = _mm256_set1_ps(d * (float)s[2 * i]), d1 = _mm256_set1_ps(d * (float)s[2 * i + 1]);
                    _mm256_storeu_ps(y + 32 * i, _mm256_mul_ps(f[0], d0));
                    _mm256_storeu_ps(y + 32 * i + 8, _mm256_mul_ps(f[1], d0));
                    _mm256_storeu_ps(y + 32 * i + 16, _mm256_mul_ps(f[2], d1));
                    _mm256_storeu_ps(y + 32 * i + 24, _mm256_mul_ps(f[3], d1));
                }
            }
        }
        return 1;
    }
    default:
        return 0;
    }
}
#endif

static void FN(dequant)(int type, const uint8_t *p, float *y, int64_t n) {
#pragma clang fp contract(off)
#if CW_X86
    if (FN(dequant_simd)(type, p, y, n)) return;
#endif
    switch (type) {
    case CW_TYPE_F32:
        memcpy(y, p, (size_t)n * 4);
        return;
    case CW_TYPE_F16: {
        int64_t i = 0;
#if CW_X86
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
#endif
        for (; i < n; i++) y[i] = FN(h2f)(cw_u16(p + 2 * i));
        return;
    }
    case CW_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint32_t b = (uint32_t)cw_u16(p + 2 * i) << 16;
            memcpy(y + i, &b, 4);
        }
        return;
    case CW_TYPE_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18, y += 32) {
            const float d = FN(h2f)(cw_u16(p));
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((p[2 + j] & 0x0F) - 8) * d;
                y[j + 16] = (float)((p[2 + j] >> 4) - 8) * d;
            }
        }
        return;
    case CW_TYPE_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20, y += 32) {
            const float d = FN(h2f)(cw_u16(p)), m = FN(h2f)(cw_u16(p + 2));
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(p[4 + j] & 0x0F) * d + m;
                y[j + 16] = (float)(p[4 + j] >> 4) * d + m;
            }
        }
        return;
    case CW_TYPE_Q5_0:
        for (int64_t b = 0; b < n / 32; b++, p += 22, y += 32) {
            const float d = FN(h2f)(cw_u16(p));
            uint32_t qh; memcpy(&qh, p + 2, 4);
            for (int j = 0; j < 16; j++) {
                const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (float)(((p[6 + j] & 0x0F) | h0) - 16) * d;
                y[j + 16] = (float)(((p[6 + j] >> 4) | h1) - 16) * d;
            }
        }
        return;
    case CW_TYPE_Q5_1:
        for (int64_t b = 0; b < n / 32; b++, p += 24, y += 32) {
            const float d = FN(h2f)(cw_u16(p)), m = FN(h2f)(cw_u16(p + 2));
            uint32_t qh; memcpy(&qh, p + 4, 4);
            for (int j = 0; j < 16; j++) {
                const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (float)((p[8 + j] & 0x0F) | h0) * d + m;
                y[j + 16] = (float)((p[8 + j] >> 4) | h1) * d + m;
            }
        }
        return;
    case CW_TYPE_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34, y += 32) {
            const float d = FN(h2f)(cw_u16(p));
            for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)p[2 + j] * d;
        }
        return;
    case CW_TYPE_Q4_K:
        for (int64_t b = 0; b < n / 256; b++, p += 144) {
            const float d = FN(h2f)(cw_u16(p)), dmin = FN(h2f)(cw_u16(p + 2));
            uint8_t sc[8], mn[8];
            cw_kscales(p + 4, sc, mn);
            const uint8_t *q = p + 16;
            for (int j = 0; j < 4; j++, q += 32, y += 64) {
                const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j];
                const float d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
                for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0xF) - m1;
                for (int l = 0; l < 32; l++) y[l + 32] = d2 * (float)(q[l] >> 4) - m2;
            }
        }
        return;
    case CW_TYPE_Q5_K:
        for (int64_t b = 0; b < n / 256; b++, p += 176) {
            const float d = FN(h2f)(cw_u16(p)), dmin = FN(h2f)(cw_u16(p + 2));
            uint8_t sc[8], mn[8];
            cw_kscales(p + 4, sc, mn);
            const uint8_t *qh = p + 16, *q = p + 48;
            for (int j = 0; j < 4; j++, q += 32, y += 64) {
                const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j];
                const float d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
                const int u1 = 1 << (2 * j), u2 = 2 << (2 * j);
                for (int l = 0; l < 32; l++) y[l] = d1 * (float)((q[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
                for (int l = 0; l < 32; l++) y[l + 32] = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
            }
        }
        return;
    case CW_TYPE_Q6_K:
        for (int64_t b = 0; b < n / 256; b++, p += 210) {
            const float d = FN(h2f)(cw_u16(p + 208));
            const uint8_t *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * (float)sc[is] * (float)q1;
                    y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    y[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
            }
        }
        return;
    default:
        return;
    }
}

// ---------------------------------------------------------------------------------------------
// fp32 helpers

#define SC_VF VF
#define SC_FN FN
#define SC_VL CW_VL
#define SC_X86 CW_X86
#define SC_INLINE CW_INLINE
#include "simd_common.h"

static float FN(dot)(const float *a, const float *b, int64_t n) {
    float s = FN(hsum)(FN(dot_lanes)(a, b, n));
    for (int64_t i = n - n % CW_VL; i < n; i++) s += a[i] * b[i];
    return s;
}

// The attention scores of G query heads sharing one KV head (query g at q + g·qstride) against a
// run of key rows: out[g·nk + j] = dot(q_g, k + j·stride, n) · scale, each with FN(dot)'s bits
// exactly — the same FMAs per key (each key row loaded once for all G queries), CW_VL keys' final
// sums folded at once by FN(hsum_rows) (simd_common.h: the same tree as FN(hsum)), then the same
// scalar tail. G ≤ 4 (FN(dots_group) splits larger groups).
CW_INLINE void FN(dots_g)(const int G, const float *q, int64_t qstride, const float *k, int64_t stride, int64_t nk, int64_t n,
                          float scale, float *out) {
    const int64_t nv = n - n % CW_VL;
    int64_t j = 0;
    for (; j + CW_VL <= nk; j += CW_VL) {
        VF r[4][CW_VL];
        for (int l = 0; l < CW_VL; l++) {
            const float *b = k + (j + l) * stride;
            VF s0[4], s1[4];
            for (int g = 0; g < G; g++) { s0[g] = 0; s1[g] = 0; }
            int64_t i = 0;
            for (; i + 2 * CW_VL <= n; i += 2 * CW_VL) {
                const VF b0 = FN(vload)(b + i), b1 = FN(vload)(b + i + CW_VL);
                for (int g = 0; g < G; g++) {
                    s0[g] = CW_FMA(FN(vload)(q + g * qstride + i), b0, s0[g]);
                    s1[g] = CW_FMA(FN(vload)(q + g * qstride + i + CW_VL), b1, s1[g]);
                }
            }
            for (; i + CW_VL <= n; i += CW_VL) {
                const VF b0 = FN(vload)(b + i);
                for (int g = 0; g < G; g++) s0[g] = CW_FMA(FN(vload)(q + g * qstride + i), b0, s0[g]);
            }
            for (int g = 0; g < G; g++) r[g][l] = s0[g] + s1[g];
        }
        for (int g = 0; g < G; g++) {
            float t[CW_VL];
            FN(vstore)(t, FN(hsum_rows)(r[g]));
            for (int l = 0; l < CW_VL; l++) {
                const float *b = k + (j + l) * stride, *qg = q + g * qstride;
                float sum = t[l];
                for (int64_t i = nv; i < n; i++) sum += qg[i] * b[i];
                out[g * nk + j + l] = sum * scale;
            }
        }
    }
    for (; j < nk; j++)
        for (int g = 0; g < G; g++) out[g * nk + j] = FN(dot)(q + g * qstride, k + j * stride, n) * scale;
}

static void FN(dots_group)(int G, const float *q, int64_t qstride, const float *k, int64_t stride, int64_t nk, int64_t n,
                           float scale, float *out) {
    switch (G) {
    case 1: FN(dots_g)(1, q, qstride, k, stride, nk, n, scale, out); break;
    case 2: FN(dots_g)(2, q, qstride, k, stride, nk, n, scale, out); break;
    case 3: FN(dots_g)(3, q, qstride, k, stride, nk, n, scale, out); break;
    case 4: FN(dots_g)(4, q, qstride, k, stride, nk, n, scale, out); break;
    default:
        for (int g0 = 0; g0 < G; g0 += 4) {
            const int c = G - g0 < 4 ? G - g0 : 4;
            FN(dots_group)(c, q + g0 * qstride, qstride, k, stride, nk, n, scale, out + g0 * nk);
        }
    }
}

// Sum of a float array (the read-bandwidth probe): four independent vector accumulators.
static float FN(sum)(const float *a, int64_t n) {
    VF s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 * CW_VL <= n; i += 4 * CW_VL) {
        s0 += FN(vload)(a + i);
        s1 += FN(vload)(a + i + CW_VL);
        s2 += FN(vload)(a + i + 2 * CW_VL);
        s3 += FN(vload)(a + i + 3 * CW_VL);
    }
    float s = FN(hsum)((s0 + s1) + (s2 + s3));
    for (; i < n; i++) s += a[i];
    return s;
}

// A vector of weights: fp32, or fp16 converted exactly (so F16 never needs a dequant buffer).
CW_INLINE VF FN(wload)(const void *w, int64_t i, const int h) {
    return h ? FN(h16load)((const uint16_t *)w + i) : FN(vload)((const float *)w + i);
}
CW_INLINE float FN(wat)(const void *w, int64_t i, const int h) {
    return h ? FN(h2f)(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

// R rows of w (ldw elements apart; fp32, or fp16 when h) × T token rows of x (ldx apart),
// K long: y[t*ldy + r]. The same instruction sequence for every (r, t), whatever R and T.
CW_INLINE void FN(mk)(const int R, const int T, const int h, const void *w, int64_t ldw, const float *x,
                      int64_t ldx, float *y, int64_t ldy, int64_t K) {
    VF acc[CW_MR][CW_NT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0;
    int64_t k = 0;
    for (; k + CW_VL <= K; k += CW_VL) {
        VF xv[CW_NT];
        for (int t = 0; t < T; t++) xv[t] = FN(vload)(x + t * ldx + k);
        for (int r = 0; r < R; r++) {
            const VF wv = FN(wload)(w, r * ldw + k, h);
            for (int t = 0; t < T; t++) acc[r][t] = CW_FMA(wv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = FN(hsum)(acc[r][t]);
            for (int64_t kk = k; kk < K; kk++) s = CW_FMA(FN(wat)(w, r * ldw + kk, h), x[t * ldx + kk], s);
            y[t * ldy + r] = s;
        }
}

static void FN(mk_any)(int R, int T, int h, const void *w, int64_t ldw, const float *x, int64_t ldx,
                       float *y, int64_t ldy, int64_t K) {
#define CW_MK_CASE(HH, RR, TT) \
    if (R == RR && T == TT) { FN(mk)(RR, TT, HH, w, ldw, x, ldx, y, ldy, K); return; }
#define CW_MK_ROW(HH, RR) CW_MK_CASE(HH, RR, 1) CW_MK_CASE(HH, RR, 2) CW_MK_CASE(HH, RR, 3) CW_MK_CASE(HH, RR, 4)
    if (h) { CW_MK_ROW(1, 1) CW_MK_ROW(1, 2) CW_MK_ROW(1, 3) CW_MK_ROW(1, 4) }
    else { CW_MK_ROW(0, 1) CW_MK_ROW(0, 2) CW_MK_ROW(0, 3) CW_MK_ROW(0, 4) }
#undef CW_MK_ROW
#undef CW_MK_CASE
}

// Weight rows [r0, r1): dequantized RC rows at a time into a per-thread buffer (F32, and F16
// for small batches, are read in place), then every token block against every row group.
static void FN(exact_rows)(const cw_mm *a, int64_t r0, int64_t r1) {
    const int64_t K = a->cols, T = a->tokens;
    int64_t rc = (int64_t)(192 * 1024) / (K * 4);
    rc = rc < CW_MR ? CW_MR : rc > 64 ? 64 : rc / CW_MR * CW_MR;
    if (T <= CW_NT) rc = CW_MR; // one token block: dequantize a row group at a time, it stays in L1
    const int f32 = a->type == CW_TYPE_F32, h = a->type == CW_TYPE_F16 && T <= 2 * CW_NT;
    const int direct = f32 || h;
    float *buf = direct ? NULL : (float *)cw_tls_scratch(CW_TLS_DEQUANT, (size_t)(rc * K) * sizeof(float));
    if (!direct && !buf) return;
    for (int64_t rs = r0; rs < r1; rs += rc) {
        const int64_t nr = r1 - rs < rc ? r1 - rs : rc;
        const void *wt;
        int64_t ldw;
        if (direct) {
            wt = a->w + rs * a->row_bytes;
            ldw = a->row_bytes / (f32 ? 4 : 2);
        } else {
            for (int64_t i = 0; i < nr; i++) FN(dequant)(a->type, a->w + (rs + i) * a->row_bytes, buf + i * K, K);
            wt = buf;
            ldw = K;
        }
        const int64_t esz = h ? 2 : 4;
        for (int64_t t0 = 0; t0 < T; t0 += CW_NT) {
            const int nt = (int)(T - t0 < CW_NT ? T - t0 : CW_NT);
            for (int64_t r = 0; r < nr; r += CW_MR) {
                const int mr = (int)(nr - r < CW_MR ? nr - r : CW_MR);
                FN(mk_any)(mr, nt, h, (const uint8_t *)wt + r * ldw * esz, ldw, a->x + t0 * K, K,
                           a->y + t0 * a->rows + rs + r, a->rows, K);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fast mode: activation quantization to int16 (round to nearest even, symmetric, amax/32767
// scales). 8-bit activations (amax/127) were tried first: on SmolLM2-135M they moved decode-step
// logits by up to ~10% relative L2 (every projection type contributes) and flipped greedy steps
// with margins above 0.05; int16 activations make that error ~256× smaller at the same speed
// (decode is bound by reading the weights, which stay packed).

#define CW_Q16_MAX 32767

CW_INLINE int FN(q16)(float v) {
    int q = (int)__builtin_rintf(v);
    return q > CW_Q16_MAX ? CW_Q16_MAX : q < -CW_Q16_MAX ? -CW_Q16_MAX : q;
}

// One block of 32: int16 quants, the scale d and d·Σq.
CW_INLINE void FN(q16_block)(const float *x, int16_t *qs, float *dout, float *sdout) {
    // max |x| lane-wise, then across lanes (max is exact, so the order does not matter; NaNs
    // are skipped as the scalar `v > amax` did).
    VF m = 0.0f;
    for (int j = 0; j < 32; j += CW_VL) m = __builtin_elementwise_max(m, __builtin_elementwise_abs(FN(vload)(x + j)));
    const float amax = __builtin_reduce_max(m);
    const float d = amax / (float)CW_Q16_MAX, id = d != 0 ? 1.0f / d : 0.0f;
    int s = 0;
    for (int j = 0; j < 32; j++) {
        const int q = FN(q16)(x[j] * id);
        qs[j] = (int16_t)q;
        s += q;
    }
    *dout = d;
    *sdout = d * (float)s;
}

static void FN(quant_q16b)(const float *x, cw_q16b *o, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += 32, o++) FN(q16_block)(x, o->qs, &o->d, &o->sd);
}

static void FN(quant_q16k)(const float *x, cw_q16k *o, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += 256, o++) {
        float amax = 0;
        for (int j = 0; j < 256; j++) { const float v = fabsf(x[j]); amax = v > amax ? v : amax; }
        const float d = amax / (float)CW_Q16_MAX, id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < 256; j++) o->qs[j] = (int16_t)FN(q16)(x[j] * id);
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += o->qs[g * 16 + j];
            o->bsums[g] = s;
        }
        o->d = d;
    }
}

static void FN(quantize)(const cw_mm *a, int64_t t0, int64_t t1) {
    const int be = cw_block_elems(a->type);
    const int64_t nb = a->cols / be;
    for (int64_t t = t0; t < t1; t++) {
        if (be == 256) FN(quant_q16k)(a->x + t * a->cols, (cw_q16k *)(a->xq + t * a->xq_row_bytes), nb);
        else FN(quant_q16b)(a->x + t * a->cols, (cw_q16b *)(a->xq + t * a->xq_row_bytes), nb);
    }
}

// ---------------------------------------------------------------------------------------------
// Fast mode: integer dot products of one packed weight row with one int16 activation row.
// Weight quants are widened to int16 in registers and multiplied pairwise (AVX2 vpmaddwd,
// AVX512-VNNI vpdpwssd): every int32 lane sums a few products, bounds noted per type.

#if CW_X86
// A block's two leading fp16 values (d and m of Q4_1/Q5_1; the types with only d use lane 0) in one
// vector conversion, loaded straight into a vector register — exact, the same values as FN(h2f).
// The scalar `_cvtsh_ss` per value bound the one-token products: a DRAM-sized Q4_1 matvec went from
// 15.5 to 20–22 GB/s with this (Q4_0 13 → 16.5), real decode +8.3% median over eight rounds; the same
// bits (Benchmarks/quick/bits_hash.c). FN(h2f) from a 2-byte load (a move from a general register)
// stayed ~15% slower than this for Q4_0, so the block kernels read 4 bytes (always inside the block).
CW_INLINE __m128 FN(h2f2)(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)v));
}
CW_INLINE float FN(hsum8)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
// acc + pairwise products of 16 int16 weights and 16 int16 activations (8 int32 lanes).
CW_INLINE __m256i FN(dpw)(__m256i acc, __m256i w16, const int16_t *x) {
    const __m256i xv = _mm256_loadu_si256((const __m256i *)x);
#if CW_VNNI
    return _mm256_dpwssd_epi32(acc, w16, xv);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(w16, xv));
#endif
}
// 32 unsigned bytes · x[0..31]: 8 lanes of 4 products each.
CW_INLINE __m256i FN(dp_u8)(__m256i q, const int16_t *x) {
    const __m256i s = FN(dpw)(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)), x);
    return FN(dpw)(s, _mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)), x + 16);
}
// 16 bytes of nibbles (low nibbles: elements 0..15, high: 16..31, ggml order) · x[0..31].
CW_INLINE __m256i FN(dp_nib)(const uint8_t *p, const int16_t *x) {
    const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
    const __m256i lo = _mm256_and_si256(b, _mm256_set1_epi16(0x0F)), hi = _mm256_srli_epi16(b, 4);
    return FN(dpw)(FN(dpw)(_mm256_setzero_si256(), lo, x), hi, x + 16);
}
// 32 nibbles of 16 bytes: low nibbles to bytes 0..15, high nibbles to bytes 16..31 (ggml order).
CW_INLINE __m256i FN(nibbles)(const uint8_t *p) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
}
// Bit i of `bits` → byte i = 0x10.
CW_INLINE __m256i FN(bit16)(uint32_t bits) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                           0x0101010101010101LL, 0x0000000000000000LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    const __m256i m = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}
#endif

// Σ w·x over nb blocks of 32, for each type. `off` is the unsigned offset of the weight quants
// (8 for Q4_0, 16 for Q5_0): Σ (q-off)·x = Σ q·x - off·Σx. Integer sums per block stay far
// inside int32 (|q| ≤ 31 or 127, |x| ≤ 32767, 32 terms: < 2^27).
// Two blocks per iteration into independent accumulators (the FMA latency would bind otherwise).
#if CW_X86
#define CW_VD32(NAME, BYTES, DOT, OFFSET)                                                          \
    static float FN(NAME)(const uint8_t *w, const cw_q16b *x, int64_t nb) {                       \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                            \
        float o0 = 0, o1 = 0;                                                                     \
        int64_t b = 0;                                                                            \
        for (; b + 2 <= nb; b += 2) {                                                             \
            { DOT; acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(p), acc0); \
              o0 += OFFSET; w += BYTES; x++; }                                                    \
            { DOT; acc1 = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(p), acc1); \
              o1 += OFFSET; w += BYTES; x++; }                                                    \
        }                                                                                         \
        if (b < nb) { DOT; acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(p), acc0); \
                      o0 += OFFSET; }                                                             \
        return FN(hsum8)(_mm256_add_ps(acc0, acc1)) + (o0 + o1);                                  \
    }

CW_VD32(vd_q4_0, 18,
        const float dw = _mm_cvtss_f32(FN(h2f2)(w)); const __m256i p = FN(dp_nib)(w + 2, x->qs),
        (-8.0f * dw) * x->sd)
CW_VD32(vd_q4_1, 20,
        const __m128 dm = FN(h2f2)(w); const float dw = _mm_cvtss_f32(dm); const __m256i p = FN(dp_nib)(w + 4, x->qs),
        _mm_cvtss_f32(_mm_movehdup_ps(dm)) * x->sd)
CW_VD32(vd_q5_0, 22,
        const float dw = _mm_cvtss_f32(FN(h2f2)(w)); uint32_t qh; memcpy(&qh, w + 2, 4);
        const __m256i p = FN(dp_u8)(_mm256_or_si256(FN(nibbles)(w + 6), FN(bit16)(qh)), x->qs),
        (-16.0f * dw) * x->sd)
CW_VD32(vd_q5_1, 24,
        const __m128 dm = FN(h2f2)(w); const float dw = _mm_cvtss_f32(dm); uint32_t qh; memcpy(&qh, w + 4, 4);
        const __m256i p = FN(dp_u8)(_mm256_or_si256(FN(nibbles)(w + 8), FN(bit16)(qh)), x->qs),
        _mm_cvtss_f32(_mm_movehdup_ps(dm)) * x->sd)
CW_VD32(vd_q8_0, 34,
        const float dw = _mm_cvtss_f32(FN(h2f2)(w));
        const __m128i q0 = _mm_loadu_si128((const __m128i *)(w + 2)); const __m128i q1 = _mm_loadu_si128((const __m128i *)(w + 18));
        const __m256i p = FN(dpw)(FN(dpw)(_mm256_setzero_si256(), _mm256_cvtepi8_epi16(q0), x->qs), _mm256_cvtepi8_epi16(q1), x->qs + 16),
        0.0f)
#undef CW_VD32
#else
static float FN(vd_q4_0)(const uint8_t *w, const cw_q16b *x, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += 18, x++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += (w[2 + j] & 15) * x->qs[j] + (w[2 + j] >> 4) * x->qs[j + 16];
        acc += FN(h2f)(cw_u16(w)) * (x->d * (float)s - 8.0f * x->sd);
    }
    return acc;
}

static float FN(vd_q4_1)(const uint8_t *w, const cw_q16b *x, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += 20, x++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += (w[4 + j] & 15) * x->qs[j] + (w[4 + j] >> 4) * x->qs[j + 16];
        acc += FN(h2f)(cw_u16(w)) * x->d * (float)s + FN(h2f)(cw_u16(w + 2)) * x->sd;
    }
    return acc;
}

static float FN(vd_q5_0)(const uint8_t *w, const cw_q16b *x, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += 22, x++) {
        uint32_t qh; memcpy(&qh, w + 2, 4);
        int s = 0;
        for (int j = 0; j < 16; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            s += ((w[6 + j] & 15) | h0) * x->qs[j] + ((w[6 + j] >> 4) | h1) * x->qs[j + 16];
        }
        acc += FN(h2f)(cw_u16(w)) * (x->d * (float)s - 16.0f * x->sd);
    }
    return acc;
}

static float FN(vd_q5_1)(const uint8_t *w, const cw_q16b *x, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += 24, x++) {
        uint32_t qh; memcpy(&qh, w + 4, 4);
        int s = 0;
        for (int j = 0; j < 16; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            s += ((w[8 + j] & 15) | h0) * x->qs[j] + ((w[8 + j] >> 4) | h1) * x->qs[j + 16];
        }
        acc += FN(h2f)(cw_u16(w)) * x->d * (float)s + FN(h2f)(cw_u16(w + 2)) * x->sd;
    }
    return acc;
}

static float FN(vd_q8_0)(const uint8_t *w, const cw_q16b *x, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += 34, x++) {
        int s = 0;
        for (int j = 0; j < 32; j++) s += (int8_t)w[2 + j] * x->qs[j];
        acc += FN(h2f)(cw_u16(w)) * x->d * (float)s;
    }
    return acc;
}
#endif

// K-quants, 256 per block. Q4_K/Q5_K: per lane, 8 sub-blocks × 4 products × q ≤ 31 ×
// |x| ≤ 32767 × scale ≤ 63 < 2^31, so a block's scaled sum stays int32. Q6_K's signed 8-bit
// scales would not (×128 per 16 quants), so its 32-quant chunks go to fp32 one at a time.
static float FN(vd_q4_k)(const uint8_t *w, const cw_q16k *x, int64_t nb) {
    float acc_s = 0;
#if CW_X86
    __m256 acc = _mm256_setzero_ps();
#endif
    for (int64_t b = 0; b < nb; b++, w += 144, x++) {
        const float d = FN(h2f)(cw_u16(w)) * x->d, dmin = FN(h2f)(cw_u16(w + 2)) * x->d;
        uint8_t sc[8], mn[8];
        cw_kscales(w + 4, sc, mn);
        int64_t summ = 0;
        for (int j = 0; j < 8; j++) summ += mn[j] * (int64_t)(x->bsums[2 * j] + x->bsums[2 * j + 1]);
        acc_s -= dmin * (float)summ;
        const uint8_t *q = w + 16;
        const int16_t *xq = x->qs;
#if CW_X86
        __m256i isum = _mm256_setzero_si256();
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        for (int j = 0; j < 4; j++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * j));
            const __m256i lo = _mm256_and_si256(qv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(FN(dp_u8)(lo, xq + 64 * j), _mm256_set1_epi32(sc[2 * j])));
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(FN(dp_u8)(hi, xq + 64 * j + 32), _mm256_set1_epi32(sc[2 * j + 1])));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
#else
        int64_t isum = 0;
        for (int j = 0; j < 4; j++) {
            int s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += (q[32 * j + l] & 15) * xq[64 * j + l];
                s2 += (q[32 * j + l] >> 4) * xq[64 * j + 32 + l];
            }
            isum += sc[2 * j] * (int64_t)s1 + sc[2 * j + 1] * (int64_t)s2;
        }
        acc_s += d * (float)isum;
#endif
    }
#if CW_X86
    return FN(hsum8)(acc) + acc_s;
#else
    return acc_s;
#endif
}

static float FN(vd_q5_k)(const uint8_t *w, const cw_q16k *x, int64_t nb) {
    float acc_s = 0;
#if CW_X86
    __m256 acc = _mm256_setzero_ps();
#endif
    for (int64_t b = 0; b < nb; b++, w += 176, x++) {
        const float d = FN(h2f)(cw_u16(w)) * x->d, dmin = FN(h2f)(cw_u16(w + 2)) * x->d;
        uint8_t sc[8], mn[8];
        cw_kscales(w + 4, sc, mn);
        int64_t summ = 0;
        for (int j = 0; j < 8; j++) summ += mn[j] * (int64_t)(x->bsums[2 * j] + x->bsums[2 * j + 1]);
        acc_s -= dmin * (float)summ;
        const uint8_t *qh = w + 16, *q = w + 48;
        const int16_t *xq = x->qs;
#if CW_X86
        __m256i isum = _mm256_setzero_si256();
        const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
        __m256i hv = _mm256_loadu_si256((const __m256i *)qh);
        for (int j = 0; j < 4; j++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * j));
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(qv, m4), _mm256_slli_epi16(_mm256_and_si256(hv, one), 4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qv, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 1), one), 4));
            hv = _mm256_srli_epi16(hv, 2);
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(FN(dp_u8)(lo, xq + 64 * j), _mm256_set1_epi32(sc[2 * j])));
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(FN(dp_u8)(hi, xq + 64 * j + 32), _mm256_set1_epi32(sc[2 * j + 1])));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
#else
        int64_t isum = 0;
        for (int j = 0; j < 4; j++) {
            int s1 = 0, s2 = 0;
            const int u1 = 1 << (2 * j), u2 = 2 << (2 * j);
            for (int l = 0; l < 32; l++) {
                s1 += ((q[32 * j + l] & 15) + ((qh[l] & u1) ? 16 : 0)) * xq[64 * j + l];
                s2 += ((q[32 * j + l] >> 4) + ((qh[l] & u2) ? 16 : 0)) * xq[64 * j + 32 + l];
            }
            isum += sc[2 * j] * (int64_t)s1 + sc[2 * j + 1] * (int64_t)s2;
        }
        acc_s += d * (float)isum;
#endif
    }
#if CW_X86
    return FN(hsum8)(acc) + acc_s;
#else
    return acc_s;
#endif
}

static float FN(vd_q6_k)(const uint8_t *w, const cw_q16k *x, int64_t nb) {
    float acc_s = 0;
#if CW_X86
    __m256 acc = _mm256_setzero_ps();
#endif
    for (int64_t b = 0; b < nb; b++, w += 210, x++) {
        const float d = FN(h2f)(cw_u16(w + 208)) * x->d;
        const int8_t *sc = (const int8_t *)(w + 192);
        int64_t off = 0;
        for (int k = 0; k < 16; k++) off += sc[k] * (int64_t)x->bsums[k];
        acc_s -= d * (float)(32 * off);
#if CW_X86
        __m256 fsum = _mm256_setzero_ps();
        const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = w + 64 * half, *qh = w + 128 + 32 * half;
            const int8_t *s = sc + 8 * half;
            const int16_t *xq = x->qs + 128 * half;
            const __m256i a = _mm256_loadu_si256((const __m256i *)ql), bq = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            __m256i v[4];
            v[0] = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
            v[1] = _mm256_or_si256(_mm256_and_si256(bq, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
            v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), _mm256_and_si256(h, m30));
            v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bq, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
            for (int i = 0; i < 4; i++) {
                // quants 0..15 of the chunk use scale s[2i], quants 16..31 s[2i+1]
                const __m256i p0 = FN(dpw)(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v[i])), xq + 32 * i);
                const __m256i p1 = FN(dpw)(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v[i], 1)), xq + 32 * i + 16);
                const __m256i si = _mm256_add_epi32(_mm256_mullo_epi32(p0, _mm256_set1_epi32(s[2 * i])),
                                                    _mm256_mullo_epi32(p1, _mm256_set1_epi32(s[2 * i + 1])));
                fsum = _mm256_add_ps(fsum, _mm256_cvtepi32_ps(si));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), fsum, acc);
#else
        int64_t isum = 0;
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = w + 64 * half, *qh = w + 128 + 32 * half;
            const int8_t *s = sc + 8 * half;
            const int16_t *xq = x->qs + 128 * half;
            int p[8] = {0};
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                p[is + 0] += ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) * xq[l];
                p[is + 2] += ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) * xq[l + 32];
                p[is + 4] += ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) * xq[l + 64];
                p[is + 6] += ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) * xq[l + 96];
            }
            for (int k = 0; k < 8; k++) isum += s[k] * (int64_t)p[k];
        }
        acc_s += d * (float)isum;
#endif
    }
#if CW_X86
    return FN(hsum8)(acc) + acc_s;
#else
    return acc_s;
#endif
}

typedef float (*FN(vd_fn))(const uint8_t *, const void *, int64_t);

static void FN(fast_rows)(const cw_mm *a, int64_t r0, int64_t r1) {
    const int be = cw_block_elems(a->type);
    const int64_t nb = a->cols / be;
    FN(vd_fn) vd;
    switch (a->type) {
    case CW_TYPE_Q4_0: vd = (FN(vd_fn))FN(vd_q4_0); break;
    case CW_TYPE_Q4_1: vd = (FN(vd_fn))FN(vd_q4_1); break;
    case CW_TYPE_Q5_0: vd = (FN(vd_fn))FN(vd_q5_0); break;
    case CW_TYPE_Q5_1: vd = (FN(vd_fn))FN(vd_q5_1); break;
    case CW_TYPE_Q8_0: vd = (FN(vd_fn))FN(vd_q8_0); break;
    case CW_TYPE_Q4_K: vd = (FN(vd_fn))FN(vd_q4_k); break;
    case CW_TYPE_Q5_K: vd = (FN(vd_fn))FN(vd_q5_k); break;
    case CW_TYPE_Q6_K: vd = (FN(vd_fn))FN(vd_q6_k); break;
    default: return;
    }
    const int64_t T = a->tokens, rows = a->rows;
    // Blocks of 16 rows × 16 tokens keep both the weight rows and the activation rows in L1/L2.
    for (int64_t rb = r0; rb < r1; rb += 16) {
        const int64_t re = rb + 16 < r1 ? rb + 16 : r1;
        for (int64_t tb = 0; tb < T; tb += 16) {
            const int64_t te = tb + 16 < T ? tb + 16 : T;
            for (int64_t r = rb; r < re; r++) {
                const uint8_t *wr = a->w + r * a->row_bytes;
                for (int64_t t = tb; t < te; t++)
                    a->y[t * rows + r] = vd(wr, a->xq + t * a->xq_row_bytes, nb);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fast mode, batched (x86 levels): the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) for
// 4 or more tokens (decode steps of several sequences, prefill; ckernels.c sets the range).
//
// Tokens go in the vector lanes, eight per group: the activations are laid out block-major with
// each pair of elements of the group's eight tokens side by side (one 256-bit vector of int16
// per element pair), and each weight element pair is broadcast to all lanes, so one s16×s16
// pair-dot instruction (vpdpwssd / vpmaddwd) advances eight tokens' dot products by two elements
// with no horizontal sums. A tile of TB_R rows (4 on AVX2; 16 on AVX-512, in 512-bit row pairs:
// FN(tb2_tile)) has its blocks unpacked once for up to 16 groups (128 tokens) and shares every
// activation load. Per output (row r, token t) and block b:
//     I = Σ_j q_j·x_j (exact in int32);  y = fma(float(I), dw·dx, y);  y = fma(ow, sd, y)
// (blocks in order), whatever the tile height, so both levels give the same bits. (Two fused
// steps per block: the former v = float(I)·(dw·dx); v = ow·sd + v; y += v took two more vector
// operations per row, block and eight tokens, which share the ports of the dot products: the
// 8-token product 6% faster.) `ow` is the
// coefficient of the activation block's scaled sum sd:
// m for Q4_1/Q5_1, -8·dw for Q4_0, -16·dw for Q5_0 (both exact), none for Q8_0.
// Bounds: |I| ≤ 32·128·32767 < 2^28 (Q8_0); float(I) is exact below 2^24 (the Q4 types).

#if CW_X86
// Layout: token t = 8g + lane; element j = 2p + e of block b:
//   tq[((g·nb + b)·16 + p)·16 + 2·lane + e],   td/tsd[(g·nb + b)·8 + lane].
// At the AVX-512 VNNI level each pair is there twice, at lanes 2·lane and 2·lane + 1 of a 512-bit
// vector (CW_TQB int16 per group and block: 256, or 512 there; see FN(tb2_tile)).
#define CW_TQB (CW_VNNI ? 512 : 256)
CW_INLINE int64_t FN(tb_x)(int64_t nb, int64_t t, int64_t b, int j) {
    return (((t / 8) * nb + b) * 16 + j / 2) * (CW_TQB / 16) + (CW_TQB / 128) * (t % 8) + (j & 1);
}
CW_INLINE int64_t FN(tb_s)(int64_t nb, int64_t t, int64_t b) { return ((t / 8) * nb + b) * 8 + t % 8; }

// At the AVX2 level, which has no VNNI, every batched call (a decode step's group of 4–8 tokens,
// a prefill's many groups) uses a second layout, "rotated": each group's block b of 256 int16 (at
// tq + (g·nb + b)·256, td/tsd as above) is 16 vectors Y[k][s] (quad k = element
// pairs 4k..4k+3, rotation s = 0..3) whose lane l = 4h + m holds element pair 4k + m of token
// 4h + ((m − s) mod 4). Against a weight vector holding the quad's four pairs in each 128-bit half
// (what widening 8 weight bytes in registers gives), the four rotations cover every (token, pair)
// once, and four in-lane shuffles gather each token's sum (FN(tb_tile_rot)). The quantizer and
// the kernel both follow CW_TB_ROT. Offset of token t's pair p in a block:
#define CW_TB_ROT (!CW_VNNI)
CW_INLINE int64_t FN(tb_rx)(int64_t t, int p) {
    const int m = p & 3, j = (int)(t & 3);
    return 16 * (4 * (p >> 2) + ((m - j) & 3)) + 2 * ((t & 4) + m);
}

// Lane l = the max (`add` 0) or the sum (`add` 1) of v[l]'s eight elements, for eight vectors at
// once. Exact here — maxima, and sums of integers below 2^24 — so the order does not matter.
CW_INLINE __m256 FN(tb_fold8)(const __m256 v[8], const int add) {
    __m256 u[4], w[2];
    for (int i = 0; i < 4; i++) {
        const __m256 lo = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), hi = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
        u[i] = add ? _mm256_add_ps(lo, hi) : _mm256_max_ps(lo, hi);
    }
    for (int i = 0; i < 2; i++) {
        const __m256 lo = _mm256_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44), hi = _mm256_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE);
        w[i] = add ? _mm256_add_ps(lo, hi) : _mm256_max_ps(lo, hi);
    }
    const __m256 lo = _mm256_permute2f128_ps(w[0], w[1], 0x20), hi = _mm256_permute2f128_ps(w[0], w[1], 0x31);
    return add ? _mm256_add_ps(lo, hi) : _mm256_max_ps(lo, hi);
}

// q16_block for block b of eight consecutive tokens at once (x: the first token's block, rows
// `ld` apart; tokens from `nt` on are zeros), the same values as eight q16_block calls: each
// token's amax (NaNs skipped: every max takes the running value as its second operand, which
// `maxps` returns when the first is NaN), d = amax/32767 and 1/d (one division each for the
// eight tokens), rint by the conversion's round-to-nearest-even, the clamp, Σq and d·Σq; d and
// d·Σq of the eight tokens are stored as eight lanes (td/tsd).
CW_INLINE void FN(q16_group)(const float *x, int64_t ld, int nt, int16_t q[8][32], float *td, float *tsd) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 xv[8][4], m[8];
    for (int l = 0; l < 8; l++) {
        m[l] = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            xv[l][k] = l < nt ? _mm256_loadu_ps(x + l * ld + 8 * k) : _mm256_setzero_ps();
            m[l] = _mm256_max_ps(_mm256_and_ps(xv[l][k], absmask), m[l]);
        }
    }
    const __m256 amax = FN(tb_fold8)(m, 0);
    const __m256 d = _mm256_div_ps(amax, _mm256_set1_ps((float)CW_Q16_MAX));
    const __m256 id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_OQ));
    float idl[8] __attribute__((aligned(32)));
    _mm256_store_ps(idl, id);
    const __m256i lim = _mm256_set1_epi32(CW_Q16_MAX), nlim = _mm256_set1_epi32(-CW_Q16_MAX);
    __m256 sum[8];  // per token, eight partial sums of its quants (|Σ| ≤ 32·32767: exact in fp32)
    for (int l = 0; l < 8; l++) {
        const __m256 il = _mm256_set1_ps(idl[l]);
        __m256i qi[4];
        for (int k = 0; k < 4; k++)
            qi[k] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(xv[l][k], il)), nlim), lim);
        sum[l] = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3])));
        _mm256_store_si256((__m256i *)q[l], _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[0], qi[1]), 0xD8));
        _mm256_store_si256((__m256i *)(q[l] + 16), _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[2], qi[3]), 0xD8));
    }
    _mm256_storeu_ps(td, d);
    _mm256_storeu_ps(tsd, _mm256_mul_ps(d, FN(tb_fold8)(sum, 1)));
}

// Pair p of a group's eight tokens (v: one 32-bit pair per token) stored at its row of the layout:
// as it is, or with each pair twice at the AVX-512 VNNI level.
CW_INLINE void FN(tb_store_pair)(int16_t *dst, __m256i v) {
#if CW_VNNI
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    _mm512_storeu_si512((void *)dst, _mm512_permutexvar_epi32(dup, _mm512_castsi256_si512(v)));
#else
    _mm256_storeu_si256((__m256i *)dst, v);
#endif
}

// Quantizes tokens [t0, t1) into that layout, or the rotated one at the AVX2 level (the padding
// lanes of the last group are zeroed by the driver). A group whose tokens all
// lie in the range (its existing ones, for the last) is quantized block by block for its eight
// tokens at once and transposed in registers (16 row stores per block instead of 128 pair
// stores); tokens of groups cut by the range are scattered pair by pair (no other thread writes
// their lanes).
static void FN(quantize_tiled)(const cw_mm *a, int64_t t0, int64_t t1) {
    const int64_t nb = a->cols / 32, T = a->tokens;
    int64_t t = t0;
    while (t < t1) {
        const int64_t g = t / 8, ge = 8 * g + 8 < T ? 8 * g + 8 : T;
        if (t == 8 * g && ge <= t1) {
            for (int64_t b = 0; b < nb; b++) {
                // q[l] = token 8g+l's block b (zeros past the last token): 16 element pairs.
                int16_t q[8][32] __attribute__((aligned(32)));
                FN(q16_group)(a->x + 8 * g * a->cols + 32 * b, a->cols, (int)(ge - 8 * g), q,
                              a->td + FN(tb_s)(nb, 8 * g, b), a->tsd + FN(tb_s)(nb, 8 * g, b));
                if (CW_TB_ROT) {
                    // Rotated layout: R[j] = pairs 4k..4k+3 of tokens j (low half) and 4 + j (high);
                    // lane m of Y[k][s] comes from R[(m − s) mod 4] (three blends).
                    int16_t *dst = a->tq + (g * nb + b) * 256;
                    for (int k = 0; k < 4; k++) {
                        __m256i R[4];
                        for (int j = 0; j < 4; j++)
                            R[j] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_load_si128((const __m128i *)(q[j] + 8 * k))),
                                                           _mm_load_si128((const __m128i *)(q[4 + j] + 8 * k)), 1);
                        for (int s = 0; s < 4; s++) {
                            __m256i v = R[(0 - s) & 3];
                            v = _mm256_blend_epi32(v, R[(1 - s) & 3], 0x22);
                            v = _mm256_blend_epi32(v, R[(2 - s) & 3], 0x44);
                            v = _mm256_blend_epi32(v, R[(3 - s) & 3], 0x88);
                            _mm256_storeu_si256((__m256i *)(dst + 16 * (4 * k + s)), v);
                        }
                    }
                    continue;
                }
                // Two 8×8 transposes of 32-bit pairs: row p of the output holds pair p of the 8 tokens.
                int16_t *dst = a->tq + FN(tb_x)(nb, 8 * g, b, 0);
                for (int h = 0; h < 2; h++) {
                    __m256i r[8], u[8];
                    for (int l = 0; l < 8; l++) r[l] = _mm256_load_si256((const __m256i *)(q[l] + 16 * h));
                    for (int l = 0; l < 8; l += 2) {
                        u[l] = _mm256_unpacklo_epi32(r[l], r[l + 1]);
                        u[l + 1] = _mm256_unpackhi_epi32(r[l], r[l + 1]);
                    }
                    for (int l = 0; l < 8; l += 4) {
                        r[l] = _mm256_unpacklo_epi64(u[l], u[l + 2]);
                        r[l + 1] = _mm256_unpackhi_epi64(u[l], u[l + 2]);
                        r[l + 2] = _mm256_unpacklo_epi64(u[l + 1], u[l + 3]);
                        r[l + 3] = _mm256_unpackhi_epi64(u[l + 1], u[l + 3]);
                    }
                    // r[0..3]: pairs {0,4},{1,5},{2,6},{3,7} of tokens 0-3 (low lane: pairs 0-3);
                    // r[4..7]: the same of tokens 4-7.
                    for (int p = 0; p < 4; p++) {
                        FN(tb_store_pair)(dst + (CW_TQB / 16) * (8 * h + p), _mm256_permute2x128_si256(r[p], r[p + 4], 0x20));
                        FN(tb_store_pair)(dst + (CW_TQB / 16) * (8 * h + p + 4), _mm256_permute2x128_si256(r[p], r[p + 4], 0x31));
                    }
                }
            }
            t = ge;
            continue;
        }
        for (int64_t b = 0; b < nb; b++) {
            int16_t q[32];
            const int64_t s = FN(tb_s)(nb, t, b);
            FN(q16_block)(a->x + t * a->cols + 32 * b, q, a->td + s, a->tsd + s);
            if (CW_TB_ROT) {
                for (int p = 0; p < 16; p++) memcpy(a->tq + ((t / 8) * nb + b) * 256 + FN(tb_rx)(t, p), q + 2 * p, 4);
                continue;
            }
            // element pair p of this token: one 32-bit store at lane t % 8 of row p
            int16_t *dst = a->tq + FN(tb_x)(nb, t, b, 0);
            for (int p = 0; p < 16; p++) {
                memcpy(dst + (CW_TQB / 16) * p, q + 2 * p, 4);
                if (CW_VNNI) memcpy(dst + (CW_TQB / 16) * p + 2, q + 2 * p, 4);
            }
        }
        t++;
    }
}

// The offset coefficient ow of a Q4_0/Q5_0/Q8_0 block (see above; Q4_1/Q5_1 store theirs, m).
CW_INLINE float FN(tb_ow)(int type, float dw) {
    return type == CW_TYPE_Q4_0 ? -8.0f * dw : type == CW_TYPE_Q5_0 ? -16.0f * dw : 0.0f;
}

// Weight quants of one block as int16: lo = elements 0..15, hi = 16..31 (ggml order).
CW_INLINE void FN(tb_unpack)(const int type, const uint8_t *p, __m256i *lo, __m256i *hi) {
    switch (type) {
    case CW_TYPE_Q4_0: case CW_TYPE_Q4_1: {
        const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + (type == CW_TYPE_Q4_0 ? 2 : 4))));
        *lo = _mm256_and_si256(b, _mm256_set1_epi16(0x0F));
        *hi = _mm256_srli_epi16(b, 4);
        return;
    }
    case CW_TYPE_Q5_0: case CW_TYPE_Q5_1: {
        const int o = type == CW_TYPE_Q5_0 ? 2 : 4;
        uint32_t qh; memcpy(&qh, p + o, 4);
        const __m256i q = _mm256_or_si256(FN(nibbles)(p + o + 4), FN(bit16)(qh));
        *lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q));
        *hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1));
        return;
    }
    default:
        *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 2)));
        *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 18)));
    }
}

// Rows per tile of the batched kernel.
#if CW_VNNI
#define TB_R 16  // 8 row pairs: 16 integer and 8 float 512-bit accumulators (of 32 registers)
#else
#define TB_R 4
#endif

// A tile's weights unpacked once (they then serve every token group), read back as broadcasts
// from memory (not shuffles of registers, which keeps the shuffle units free); the pass runs before
// the dot products, so the loads never wait on store forwarding. Layouts: FN(tb_unpack_rows)
// (AVX2) and FN(tb2_unpack_rows) (AVX-512).
typedef struct { int16_t *wq; float *dw; } FN(tb_w);

#if CW_TB_ROT
// AVX2 (no VNNI): the pair-dot product and its add.
CW_INLINE __m256i FN(tb_dp)(__m256i acc, __m256i a, __m256i b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }

// int16 quants wq[(i·nb + b)·32 + j]; dw and ow of each row and block, interleaved.
CW_INLINE void FN(tb_unpack_rows)(const int type, const uint8_t *const *wr, int64_t nb, FN(tb_w) w) {
    const int BYTES = cw_block_bytes(type);
    for (int i = 0; i < TB_R; i++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = wr[i] + b * BYTES;
            __m256i lo, hi;
            FN(tb_unpack)(type, p, &lo, &hi);
            _mm256_store_si256((__m256i *)(w.wq + (i * nb + b) * 32), lo);
            _mm256_store_si256((__m256i *)(w.wq + (i * nb + b) * 32 + 16), hi);
            if (type == CW_TYPE_Q4_1 || type == CW_TYPE_Q5_1) {
                // d and m side by side: one conversion of both (exact), one store.
                uint32_t dm;
                memcpy(&dm, p, 4);
                _mm_storel_pi((__m64 *)(w.dw + 2 * (i * nb + b)), _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm)));
            } else {
                const float dw = _mm_cvtss_f32(FN(h2f2)(p));  // (the 4-byte load form: see FN(h2f2))
                w.dw[2 * (i * nb + b)] = dw;
                w.dw[2 * (i * nb + b) + 1] = FN(tb_ow)(type, dw);
            }
        }
}
#endif

// While a tile's rows × a token group compute, the next tile's rows (pf,
// pf_bytes: one contiguous range) are prefetched, each cache line once, a
// share per block so that the misses overlap the computation without filling the miss buffers in
// one burst. (Two prefetches per row and block pair, 3× the lines, cost a batched 8-token decode
// step ~7%: the dot products are bound by the load ports the prefetches share; none at all cost
// ~20%.)
typedef struct { uintptr_t lo; int64_t lines, done; } FN(tb_pf);
CW_INLINE FN(tb_pf) FN(tb_pf_start)(const uint8_t *pf, int64_t pf_bytes) {
    const uintptr_t lo = (uintptr_t)pf & ~(uintptr_t)63, end = (uintptr_t)pf + (uintptr_t)pf_bytes;
    return (FN(tb_pf)){lo, pf ? (int64_t)((end - lo + 63) / 64) : 0, 0};
}
// Block b of nb is about to compute: prefetch its share of the lines.
CW_INLINE void FN(tb_pf_block)(FN(tb_pf) *p, int64_t b, int64_t nb) {
    const int64_t upto = p->lines * (b + 1) / nb;
    for (; p->done < upto; p->done++) _mm_prefetch((const char *)(p->lo + 64 * (uintptr_t)p->done), _MM_HINT_T0);
}
#if CW_VNNI
// AVX-512 VNNI: rows in pairs, 512-bit pair-dot products. A 512-bit integer lane 2·l + h holds
// (token l, row 2j + h): the activations carry each token's pair twice (FN(tb_store_pair)), the
// weights of a row pair are interleaved (slot = pair p of row 2j, then of row 2j + 1: 64 bits,
// broadcast from memory), so one vpdpwssd advances two rows × eight tokens by two elements —
// twice the work of the 256-bit form, on cores that issue 512-bit VNNI as fast as 256-bit (Intel
// server cores with two 512-bit ports: Benchmarks/quick/vnni_rate.c). The sums and the two fused
// steps per block are those of FN(tb_tile_rot), lane by lane: the same bits (bits_hash.c, 240
// cases). On an Intel Xeon with AVX-512 VNNI (2026-12-02; ab_matmul.c against the 256-bit broadcast
// kernel it replaced, medians of 20–30 pairs): 8 tokens Q4_1 1536×576 0.66× the time on two
// threads, Q4_0 576×1536 0.77×, Q5_0 0.72×, Q5_1 0.69×, Q8_0 576×576 0.81×, the 49152×576 Q8_0 head
// 0.71×; 4 tokens 0.62×; 128 tokens (one thread) 0.52×, 512 tokens 0.63× (with the unpacking below,
// two threads: Q4_1 1536×576 0.62×, 576×1536 0.71×, the head 0.72×, 512 tokens 0.60×; 4 tokens on
// one thread 0.58×). Not measured on a core
// that splits 512-bit operations (Zen 4), where it issues half the instructions of the 256-bit
// form for the same multiply-adds.
// Weight tile: row pair j, block b: 64 int16 in 64-bit slots (pair p of row 2j, then of row 2j + 1),
// slot p holding pair p for Q4_0/Q4_1 (their byte pairs interleaved before widening: ab_matmul
// 0.95–0.97× the time of the path below, 8 tokens) and, for the other types, pairs in the order
// unpacklo/hi_epi32 leave them (0, 1, 4, 5, 2, 3, 6, 7, then the same + 8; for Q8_0 this path took
// 0.93–0.98× the time of widening it the Q4 way); dw: dw(2j), dw(2j+1), ow(2j), ow(2j+1).
CW_INLINE int FN(tb2_slot)(int type, int p) {
    if (type != CW_TYPE_Q5_0 && type != CW_TYPE_Q5_1 && type != CW_TYPE_Q8_0) return p;
    const int q = p & 7;
    return (p & 8) | (q & 1) | ((q & 2) << 1) | ((q & 4) >> 1);
}
CW_INLINE void FN(tb2_unpack_rows)(const int type, const uint8_t *const *wr, int64_t nb, FN(tb_w) w) {
    const int BYTES = cw_block_bytes(type);
    const __m512i m4 = _mm512_set1_epi16(0x0F);
    const __m128 k = _mm_set1_ps(type == CW_TYPE_Q4_0 ? -8.0f : type == CW_TYPE_Q5_0 ? -16.0f : 0.0f);
    for (int j = 0; j < TB_R / 2; j++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p0 = wr[2 * j] + b * BYTES, *p1 = wr[2 * j + 1] + b * BYTES;
            int16_t *d = w.wq + (j * nb + b) * 64;
            if (type == CW_TYPE_Q4_0 || type == CW_TYPE_Q4_1) {
                // Byte pairs of the two rows interleaved, then widened: the low nibbles are pairs
                // 0–7 of both rows in slot order, the high nibbles pairs 8–15.
                const int QO = type == CW_TYPE_Q4_0 ? 2 : 4;
                const __m128i b0 = _mm_loadu_si128((const __m128i *)(p0 + QO)), b1 = _mm_loadu_si128((const __m128i *)(p1 + QO));
                const __m512i v = _mm512_cvtepu8_epi16(
                    _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(b0, b1)), _mm_unpackhi_epi16(b0, b1), 1));
                _mm512_storeu_si512((void *)d, _mm512_and_si512(v, m4));
                _mm512_storeu_si512((void *)(d + 32), _mm512_srli_epi16(v, 4));
            } else {
                __m256i lo0, hi0, lo1, hi1;
                FN(tb_unpack)(type, p0, &lo0, &hi0);
                FN(tb_unpack)(type, p1, &lo1, &hi1);
                // Slots in the order unpacklo/hi_epi32 leave them (FN(tb2_slot)): putting them in
                // order took four lane permutes per row pair and block, 1.17–1.19× the time.
                _mm256_storeu_si256((__m256i *)d, _mm256_unpacklo_epi32(lo0, lo1));
                _mm256_storeu_si256((__m256i *)(d + 16), _mm256_unpackhi_epi32(lo0, lo1));
                _mm256_storeu_si256((__m256i *)(d + 32), _mm256_unpacklo_epi32(hi0, hi1));
                _mm256_storeu_si256((__m256i *)(d + 48), _mm256_unpackhi_epi32(hi0, hi1));
            }
            const __m128 dm = _mm_unpacklo_ps(FN(h2f2)(p0), FN(h2f2)(p1));  // d0 d1 (m0 m1 for Q4_1/Q5_1)
            float *f = w.dw + 4 * (j * nb + b);
            // ow = m, or the exact multiple of dw of FN(tb_ow) (none for Q8_0: not read).
            _mm_storeu_ps(f, type == CW_TYPE_Q4_1 || type == CW_TYPE_Q5_1 ? dm : _mm_movelh_ps(dm, _mm_mul_ps(dm, k)));
        }
}
// vpdpwssd as written: clang otherwise split most of these 512-bit chains into vpmaddwd + vpaddd
// (two µops on the two 512-bit ports; 290 vpmaddwd against 30 vpdpwssd in the object, with or
// without -march=native), which took the 8-token Q4_1 product from 0.70× to only 0.89× the time.
CW_INLINE __m512i FN(tb2_dp)(__m512i acc, __m512i x, __m512i w) {
    __asm__("vpdpwssd %[w], %[x], %[acc]" : [acc] "+v"(acc) : [x] "v"(x), [w] "v"(w));
    return acc;
}
CW_INLINE __m512i FN(tb2_bc)(const int16_t *p) { int64_t v; memcpy(&v, p, 8); return _mm512_set1_epi64(v); }
CW_INLINE __m512 FN(tb2_bcf)(const float *p) { double v; memcpy(&v, p, 8); return _mm512_castpd_ps(_mm512_set1_pd(v)); }
// The tile's rows × token group g, into out[i·8 + l] (row i, token l).
CW_INLINE void FN(tb2_tile)(const cw_mm *a, const int type, FN(tb_w) w, int64_t g, const uint8_t *pf, int64_t pf_bytes, float *out) {
    enum { RP = TB_R / 2 };
    const int64_t nb = a->cols / 32;
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    __m512 acc[RP];
    for (int j = 0; j < RP; j++) acc[j] = _mm512_setzero_ps();
    FN(tb_pf) next = FN(tb_pf_start)(pf, pf_bytes);
    for (int64_t b = 0; b < nb; b++) {
        FN(tb_pf_block)(&next, b, nb);
        const int16_t *xb = a->tq + (g * nb + b) * CW_TQB;
        const int16_t *wb = w.wq + b * 64;
        // Even and odd element pairs in separate accumulators (2·RP independent chains).
        __m512i e[RP], o[RP];
        for (int j = 0; j < RP; j++) e[j] = o[j] = _mm512_setzero_si512();
#pragma clang loop unroll(full)
        for (int p = 0; p < 16; p += 2) {
            const __m512i xe = _mm512_loadu_si512((const void *)(xb + 32 * p));
            const __m512i xo = _mm512_loadu_si512((const void *)(xb + 32 * p + 32));
#pragma clang loop unroll(full)
            for (int j = 0; j < RP; j++) {
                e[j] = FN(tb2_dp)(e[j], xe, FN(tb2_bc)(wb + j * nb * 64 + 4 * FN(tb2_slot)(type, p)));
                o[j] = FN(tb2_dp)(o[j], xo, FN(tb2_bc)(wb + j * nb * 64 + 4 * FN(tb2_slot)(type, p + 1)));
            }
        }
        const __m512 dxd = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(a->td + (g * nb + b) * 8)));
        const __m512 sdd = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(a->tsd + (g * nb + b) * 8)));
#pragma clang loop unroll(full)
        for (int j = 0; j < RP; j++) {
            const float *f = w.dw + 4 * (j * nb + b);
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(e[j], o[j])), _mm512_mul_ps(FN(tb2_bcf)(f), dxd), acc[j]);
            if (type != CW_TYPE_Q8_0) acc[j] = _mm512_fmadd_ps(FN(tb2_bcf)(f + 2), sdd, acc[j]);
        }
    }
    // Lanes (token l, row 2j + h) → row 2j's eight tokens, then row 2j + 1's.
    const __m512i deint = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int j = 0; j < RP; j++) _mm512_storeu_ps(out + 16 * j, _mm512_permutexvar_ps(deint, acc[j]));
}
#endif

#if CW_TB_ROT
// The tile's rows × token group g (rotated layout, above): out[i] lanes = tokens, the same
// bits as FN(tb_tile) (the same exact integer sum I per row, token and block, then the same two
// fused steps). For each block and row: quad k's weights W (lane m of each half = pair
// 4k + m) meet the four rotations Y[k][s] in four accumulators A[s]; token 4h + j's sum is
// Σ_s A[s][4h + (j + s) mod 4] (in-lane shuffles 0x39, 0x4E, 0x93). Q4_0/Q4_1 widen their
// weights in registers (8 bytes broadcast and zero-extended: the low nibbles are quads 0–1, the
// high ones quads 2–3), and Q8_0 too (each quad's 8 bytes sign-extended and broadcast), so a call
// of one group needs no unpacking pass; Q5, and every type when a call has several groups
// (prefill), read them from the tile unpacked once (`mem`: one 16-byte broadcast per quad). (With
// rows in pairs, Q8_0 measured faster unpacked; one row at a time, widened in registers is
// 0.95–0.98× the unpacked tile's time: ab_matmul, Q8_0 1536×576 one thread, 49152×576 two.)
// Time per 8-token product against the broadcast kernel (FN(tb_tile)) on a Zen 3 host, the two
// alternating in one process through a temporary switch (medians of 60 pairs, one thread):
// Q4_1 1536×576 0.89× (0.86–0.91× on two threads), 576×1536 0.87–0.91×, Q4_0 0.92×, Q5_0 0.97×,
// Q5_1 0.98×, Q8_0 1536×576 0.96×, 49152×576 (2 threads) 0.96×; the register-widened Q8_0
// was 1.09–1.18×. Several groups (prefill; a later session, Benchmarks/quick/ab_matmul.c against
// the broadcast kernel, medians of 20 pairs): 128 tokens on one thread Q4_1 1536×576 0.922×,
// 576×1536 0.927×, 576×576 0.908×, Q4_0 0.950×, Q5_0 0.932×, Q8_0 0.949×; two threads, 512 tokens
// 0.917×, 16 tokens 0.959×, the 49152×576 Q8_0 head at 16 tokens 0.775×. The same bits as before
// (Benchmarks/quick/bits_hash.c, 1–9, 14, 19 and 136 tokens). VNNI's vpdpwssd fuses the add, so
// the AVX-512 level kept the broadcast kernel, and since 2026-12-02 has its own (FN(tb2_tile)).
// Rows one at a time (2026-12-01; they were taken in pairs sharing each activation load, which
// clang compiled into ~70 spills and reloads per block): the same bits, and on a Zen 3 host
// (ab_matmul, 20 pairs, one thread unless said) 8 tokens Q4_1 1536×576 0.88–0.91× (two threads
// 0.90×), Q4_0 576×1536 0.88×, Q5_0 0.91×, Q5_1 0.76×, Q8_0 0.91× (the 49152×576 head on two
// threads 0.89–0.91×, and 0.80× once it also widened in registers); 16 tokens Q4_1 0.86×, 128
// tokens 0.89×, 512 tokens on two threads 0.88×.
CW_INLINE __m256i FN(tb_bq)(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return _mm256_set1_epi64x(v); }
CW_INLINE void FN(tb_tile_rot)(const cw_mm *a, const int type, const uint8_t *const *wr, const int mem, FN(tb_w) w, int64_t g,
                            const uint8_t *pf, int64_t pf_bytes, __m256 out[TB_R]) {
    const int64_t nb = a->cols / 32;
    const int BYTES = cw_block_bytes(type), QO = type == CW_TYPE_Q4_0 ? 2 : 4;
    for (int i = 0; i < TB_R; i++) out[i] = _mm256_setzero_ps();
    FN(tb_pf) next = FN(tb_pf_start)(pf, pf_bytes);
    const __m256i z = _mm256_setzero_si256(), m4 = _mm256_set1_epi16(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        FN(tb_pf_block)(&next, b, nb);
        const int16_t *yb = a->tq + (g * nb + b) * 256;
        const __m256 dxv = _mm256_loadu_ps(a->td + (g * nb + b) * 8), sdv = _mm256_loadu_ps(a->tsd + (g * nb + b) * 8);
        // One row at a time, its activations read from L1 again for each row: 4 accumulators, no
        // spills. (Two rows sharing each activation load needed 8 accumulators plus the
        // activations, which clang hoisted out of the rows and spilled to the stack: ~70 stack
        // accesses per block. The barrier keeps it from hoisting the loads again.)
#pragma clang loop unroll(full)
        for (int r = 0; r < TB_R; r++) {
            __asm__ volatile("" ::: "memory");
            const uint8_t *wb = wr[r] + b * BYTES;
            __m256i W[4];
            if (mem) {
#pragma clang loop unroll(full)
                for (int k = 0; k < 4; k++)
                    W[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(w.wq + (r * nb + b) * 32 + 8 * k)));
            } else if (type == CW_TYPE_Q8_0) {
#pragma clang loop unroll(full)
                for (int k = 0; k < 4; k++)
                    W[k] = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(wb + 2 + 8 * k))));
            } else {
                const __m256i v0 = _mm256_unpacklo_epi8(FN(tb_bq)(wb + QO), z), v1 = _mm256_unpacklo_epi8(FN(tb_bq)(wb + QO + 8), z);
                W[0] = _mm256_and_si256(v0, m4);
                W[1] = _mm256_and_si256(v1, m4);
                W[2] = _mm256_srli_epi16(v0, 4);
                W[3] = _mm256_srli_epi16(v1, 4);
            }
            __m256i A[4];
#pragma clang loop unroll(full)
            for (int k = 0; k < 4; k++)
#pragma clang loop unroll(full)
                for (int s = 0; s < 4; s++) {
                    const __m256i y = _mm256_loadu_si256((const __m256i *)(yb + 16 * (4 * k + s)));
                    A[s] = k ? FN(tb_dp)(A[s], y, W[k]) : _mm256_madd_epi16(y, W[k]);
                }
            const __m256i I = _mm256_add_epi32(_mm256_add_epi32(A[0], _mm256_shuffle_epi32(A[1], 0x39)),
                                               _mm256_add_epi32(_mm256_shuffle_epi32(A[2], 0x4E), _mm256_shuffle_epi32(A[3], 0x93)));
            float dw, ow;
            if (mem) {
                dw = w.dw[2 * (r * nb + b)];
                ow = w.dw[2 * (r * nb + b) + 1];
            } else {
                const __m128 dm = FN(h2f2)(wb);
                dw = _mm_cvtss_f32(dm);
                ow = type == CW_TYPE_Q4_1 ? _mm_cvtss_f32(_mm_movehdup_ps(dm)) : FN(tb_ow)(type, dw);
            }
            out[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), _mm256_mul_ps(_mm256_set1_ps(dw), dxv), out[r]);
            if (type != CW_TYPE_Q8_0) out[r] = _mm256_fmadd_ps(_mm256_set1_ps(ow), sdv, out[r]);
        }
    }
}
#endif

// A tile's rows (wr) × token groups [g0, g1). `scratch`: the caller's per-thread buffer for the
// unpacked tile (fetched once per call, not per tile).
static void FN(tb_rows)(const cw_mm *a, const uint8_t *const *wr, const uint8_t *pf, int64_t pf_bytes, int64_t g0, int64_t g1,
                        uint8_t *scratch /* TB_R × nb × 72 bytes */, float *out /* (g1-g0) × TB_R × 8 */) {
    const int64_t nb = a->cols / 32;
    FN(tb_w) w = {(int16_t *)scratch, (float *)(scratch + TB_R * nb * 64)};
#if CW_TB_ROT
    __m256 o[TB_R];
    // Rotated layout: one group of Q4_0/Q4_1/Q8_0 (REGS) widens its weights in registers; every other
    // call unpacks the tile once and reads it for each group (`mem`).
#define CW_TB_ROT_CASE(TYPE, REGS)                                                                  \
    case TYPE:                                                                                      \
        if (REGS && g1 - g0 == 1) {                                                                 \
            FN(tb_tile_rot)(a, TYPE, wr, 0, w, g0, pf, pf_bytes, o);                                \
            for (int i = 0; i < TB_R; i++) _mm256_storeu_ps(out + i * 8, o[i]);                     \
            return;                                                                                 \
        }                                                                                           \
        FN(tb_unpack_rows)(TYPE, wr, nb, w);                                                        \
        for (int64_t g = g0; g < g1; g++) {                                                         \
            FN(tb_tile_rot)(a, TYPE, wr, 1, w, g, g == g0 ? pf : NULL, pf_bytes, o);                \
            for (int i = 0; i < TB_R; i++) _mm256_storeu_ps(out + ((g - g0) * TB_R + i) * 8, o[i]); \
        }                                                                                           \
        return;
    switch (a->type) {
    CW_TB_ROT_CASE(CW_TYPE_Q4_0, 1)
    CW_TB_ROT_CASE(CW_TYPE_Q4_1, 1)
    CW_TB_ROT_CASE(CW_TYPE_Q5_0, 0)
    CW_TB_ROT_CASE(CW_TYPE_Q5_1, 0)
    CW_TB_ROT_CASE(CW_TYPE_Q8_0, 1)
    default: return;
    }
#undef CW_TB_ROT_CASE
#else
#define CW_TB_CASE(TYPE)                                                                      \
    case TYPE:                                                                                \
        FN(tb2_unpack_rows)(TYPE, wr, nb, w);                                                 \
        for (int64_t g = g0; g < g1; g++)                                                     \
            FN(tb2_tile)(a, TYPE, w, g, g == g0 ? pf : NULL, pf_bytes, out + (g - g0) * TB_R * 8); \
        return;
    switch (a->type) {
    CW_TB_CASE(CW_TYPE_Q4_0)
    CW_TB_CASE(CW_TYPE_Q4_1)
    CW_TB_CASE(CW_TYPE_Q5_0)
    CW_TB_CASE(CW_TYPE_Q5_1)
    default: break;
    }
    switch (a->type) { CW_TB_CASE(CW_TYPE_Q8_0) default: return; }
#undef CW_TB_CASE
#endif
}

// Rows [r, r_end) of this matrix are about to compute: prefetch their share of the call's spans
// (cw_matmul_many_side), each line once over the whole call. The spans' lines, one after another,
// are dealt out in proportion to the rows across the concatenated matrices (row g starts at line
// ⌊L·g / R⌋ of L), so the slices of all tiles cover every line once; `k` is the caller's cursor into
// the spans (a tile costs its lines and the spans it crosses, not a pass over all the spans).
CW_INLINE void FN(pf_slice)(const cw_mm *a, int64_t r, int64_t r_end, int *k) {
    const int64_t L = a->pf_cum[a->npf], R = a->pf_rows;
    const int64_t g0 = a->pf_row0 + r, g1 = a->pf_row0 + r_end;
    int64_t p = L * g0 / R;
    const int64_t p1 = g1 >= R ? L : L * g1 / R;
    while (p < p1 && *k < a->npf) {
        while (*k < a->npf - 1 && a->pf_cum[*k + 1] <= p) (*k)++;
        const int64_t end = a->pf_cum[*k + 1] < p1 ? a->pf_cum[*k + 1] : p1;
        const uintptr_t lo = (uintptr_t)a->pf[*k].p & ~(uintptr_t)63;
        for (; p < end; p++) __builtin_prefetch((const char *)(lo + 64 * (uintptr_t)(p - a->pf_cum[*k])), 0, 2);
        if (end == a->pf_cum[*k + 1]) (*k)++;
    }
}

// Rows [r0, r1) × all tokens: token groups in chunks of up to 16 (128 tokens, whose quantized
// activations stay in L2 while all the rows stream past), TB_R rows at a time (unpacked once per
// chunk); a tile that runs past r1 repeats the last row and drops it.
static void FN(tiled_rows)(const cw_mm *a, int64_t r0, int64_t r1) {
    const int64_t T = a->tokens, rows = a->rows, G = (T + 7) / 8;
    enum { GC = 16 };
    float out[GC * TB_R * 8];
    uint8_t *scratch = (uint8_t *)cw_tls_scratch(CW_TLS_DEQUANT, (size_t)(TB_R * (a->cols / 32) * (64 + 8)));
    if (!scratch) return;
    int pk = 0;  // FN(pf_slice)'s cursor
    for (int64_t gc = 0; gc < G; gc += GC) {
        const int64_t ge = gc + GC < G ? gc + GC : G;
        for (int64_t r = r0; r < r1; r += TB_R) {
            const uint8_t *wr[TB_R];
            for (int i = 0; i < TB_R; i++) wr[i] = a->w + (r + i < r1 ? r + i : r1 - 1) * a->row_bytes;
            // The next tile's rows are prefetched while these compute (the tile reads its rows in
            // one burst, which the hardware prefetchers do not run ahead of).
            const int64_t nr = r + TB_R < r1 ? (r1 - r - TB_R < TB_R ? r1 - r - TB_R : TB_R) : 0;
            if (a->npf && gc == 0) FN(pf_slice)(a, r, r + TB_R < r1 ? r + TB_R : r1, &pk);
            FN(tb_rows)(a, wr, nr ? a->w + (r + TB_R) * a->row_bytes : NULL, nr * a->row_bytes, gc, ge, scratch, out);
            for (int64_t g = gc; g < ge; g++) {
                const int64_t nt = T - 8 * g < 8 ? T - 8 * g : 8;
                for (int q = 0; q < TB_R; q += 4) {
                    const float *o = out + ((g - gc) * TB_R + q) * 8;
                    const int64_t rq = r + q;
                    if (rq >= r1) break;
                    if (nt == 8 && rq + 4 <= r1) {
                        // 4 rows × 8 tokens transposed in registers: one 4-float store per token.
                        const __m256 o0 = _mm256_loadu_ps(o), o1 = _mm256_loadu_ps(o + 8), o2 = _mm256_loadu_ps(o + 16),
                                     o3 = _mm256_loadu_ps(o + 24);
                        const __m256 t0 = _mm256_unpacklo_ps(o0, o1), t1 = _mm256_unpackhi_ps(o0, o1),
                                     t2 = _mm256_unpacklo_ps(o2, o3), t3 = _mm256_unpackhi_ps(o2, o3);
                        const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                                             _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
                        float *y = a->y + 8 * g * rows + rq;
                        for (int l = 0; l < 4; l++) {
                            _mm_storeu_ps(y + l * rows, _mm256_castps256_ps128(u[l]));
                            _mm_storeu_ps(y + (l + 4) * rows, _mm256_extractf128_ps(u[l], 1));
                        }
                        continue;
                    }
                    for (int i = 0; i < 4 && rq + i < r1; i++)
                        for (int64_t l = 0; l < nt; l++) a->y[(8 * g + l) * rows + rq + i] = o[i * 8 + l];
                }
            }
        }
        // This chunk of tokens is done for rows [r0, r1): the hook (a prefill's LoRA up product)
        // adds to it while it is in this core's cache.
        if (a->after) a->after->after(a->after->ctx, a->after_m, r0, r1, 8 * gc, 8 * ge < T ? 8 * ge : T);
    }
}
#undef TB_R

#endif // CW_X86 (the portable level has no batched kernel: plain C ran it ~4× slower than the fp32 GEMM)

// ---------------------------------------------------------------------------------------------
// Attention: one (token, head) item at a time; scores for that row only (two-pass safe softmax).

static void FN(attn)(const cw_attn *a, int64_t i0, int64_t i1) {
    const int hd = a->head_dim, group = a->heads / a->kv_heads;
    const int64_t qstride = (int64_t)a->heads * hd;
    float *sc = (float *)cw_tls_scratch(CW_TLS_SCORES, (size_t)(a->start_pos + a->tokens) * sizeof(float));
    if (!sc) return;
    for (int64_t item = i0; item < i1; item++) {
        const int64_t t = item / a->heads;
        const int h = (int)(item % a->heads), kvh = h / group;
        const float *qr = a->q + t * qstride + (int64_t)h * hd;
        float *o = a->out + t * qstride + (int64_t)h * hd;
        const float *kb = a->k + (int64_t)kvh * hd, *vb = a->v + (int64_t)kvh * hd;
        const int64_t n = a->start_pos + t + 1;
        float m = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            const float s = FN(dot)(qr, kb + j * a->kv_stride, hd) * a->scale;
            sc[j] = s;
            m = s > m ? s : m;
        }
        float sum = 0;
        for (int64_t j = 0; j < n; j++) { const float e = expf(sc[j] - m); sc[j] = e; sum += e; }
        const float inv = 1.0f / sum;
        for (int d = 0; d < hd; d++) o[d] = 0;
        for (int64_t j = 0; j < n; j++) {
            const float p = sc[j] * inv;
            const float *vr = vb + j * a->kv_stride;
            int d = 0;
            const VF pv = p;
            for (; d + CW_VL <= hd; d += CW_VL) FN(vstore)(o + d, CW_FMA(pv, FN(vload)(vr + d), FN(vload)(o + d)));
            for (; d < hd; d++) o[d] += p * vr[d];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise exp for SiLU and sampling weights: exp(x) = 2^n · p(r), x = n·ln2 + r, |r| ≤ ln2/2,
// p a degree-6 polynomial (Cephes' expf coefficients; relative error ≤ 2 ulp against libm on
// [-87, 88], tested). The x86 levels fuse the same multiply-adds (-ffp-contract=fast), so AVX2
// and AVX-512 give the same bits (tested); the portable level, without FMA, may differ in the
// last bit. Results below 2^-126 flush to 0; above 88.72 they are +inf, as libm's.

CW_INLINE VF FN(vexp)(VF x) {
    typedef int32_t vi __attribute__((ext_vector_type(CW_VL)));
    const VF hi = 88.7228393f, lo = -87.3365479f;
    const vi over = x > hi, under = x < lo;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    // n = round(x / ln2), by adding and subtracting 1.5·2^23 (round to nearest even).
    const VF magic = 12582912.0f;
    const VF fn = (x * 1.44269504088896341f + magic) - magic;
    // r = x − n·ln2 in two parts (Cody–Waite), exact enough for |n| ≤ 127.
    VF r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    VF p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    // 2^n: n ∈ [-126, 128]; 2^128 is done as 2·2^127.
    vi n = __builtin_convertvector(fn, vi);
    const vi big = n > 127;
    n = big ? n - 1 : n;
    VF two_n;
    const vi bits = (n + 127) << 23;
    memcpy(&two_n, &bits, sizeof two_n);
    VF y = p * two_n;
    y = big ? y * 2.0f : y;
    const VF inf = __builtin_inff();
    y = over ? inf : y;
    y = under ? (VF)0.0f : y;
    return y;
}

CW_INLINE float FN(sexp)(float x) {
    VF v = x;
    return FN(vexp)(v)[0];
}

// gate[i] = gate[i] / (1 + exp(−gate[i])) · up[i]
static void FN(silu_mul)(float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + CW_VL <= n; i += CW_VL) {
        const VF g = FN(vload)(gate + i);
        FN(vstore)(gate + i, g / (1.0f + FN(vexp)(-g)) * FN(vload)(up + i));
    }
    for (; i < n; i++) gate[i] = gate[i] / (1.0f + FN(sexp)(-gate[i])) * up[i];
}

// w[i] = exp((x[i] − shift) / div); returns Σ w[i] (in double, in index order within each lane,
// lanes added in a fixed order).
static double FN(exp_weights)(const float *x, int64_t n, float shift, float div, float *w) {
    typedef double vd __attribute__((ext_vector_type(CW_VL)));
    vd acc = 0;
    int64_t i = 0;
    for (; i + CW_VL <= n; i += CW_VL) {
        const VF e = FN(vexp)((FN(vload)(x + i) - shift) / div);
        FN(vstore)(w + i, e);
        acc += __builtin_convertvector(e, vd);
    }
    double total = 0;
    for (int l = 0; l < CW_VL; l++) total += acc[l];
    for (; i < n; i++) {
        w[i] = FN(sexp)((x[i] - shift) / div);
        total += w[i];
    }
    return total;
}

// Softmax entropy sums over d = x − m (m = max x): Z = Σ e, EZ = Σ e·d with e = exp(max(d, −87))
// (a −∞ logit then adds a negligible term, not a NaN). Lanes accumulate in fp32 and are folded
// into double every 64 vectors. H = log Z − EZ / Z.
static void FN(entropy_sums)(const float *x, int64_t n, float m, double *zo, double *ezo) {
    double z = 0, ez = 0;
    int64_t i = 0;
    while (i + CW_VL <= n) {
        const int64_t end = i + 64 * CW_VL < n ? i + 64 * CW_VL : n;
        VF zv = 0.0f, ezv = 0.0f;
        for (; i + CW_VL <= end; i += CW_VL) {
            VF d = FN(vload)(x + i) - m;
            d = d < -87.0f ? (VF)-87.0f : d;
            const VF e = FN(vexp)(d);
            zv += e;
            ezv += e * d;
        }
        for (int l = 0; l < CW_VL; l++) { z += zv[l]; ez += ezv[l]; }
    }
    for (; i < n; i++) {
        const float d = x[i] - m < -87.0f ? -87.0f : x[i] - m, e = FN(sexp)(d);
        z += e;
        ez += e * d;
    }
    *zo = z;
    *ezo = ez;
}

const cw_ops CW_CAT(cw_ops, CW_ISA) = {
    .name = CW_STR(CW_ISA),
    .dequant = FN(dequant),
    .exact_rows = FN(exact_rows),
    .fast_rows = FN(fast_rows),
    .quantize = FN(quantize),
#if CW_X86
    .tiled_rows = FN(tiled_rows),
    .quantize_tiled = FN(quantize_tiled),
    .tq_block = CW_TQB,
#else
    .tiled_rows = NULL,
    .quantize_tiled = NULL,
    .tq_block = 256,
#endif
    .dot = FN(dot),
    .dots_group = FN(dots_group),
    .sum = FN(sum),
    .attn = FN(attn),
    .silu_mul = FN(silu_mul),
    .exp_weights = FN(exp_weights),
    .entropy_sums = FN(entropy_sums),
};

#undef VF
#undef FN
#undef CW_CAT
#undef CW_CAT2
#undef CW_INLINE
