// Body of the low-rank kernels, compiled once per instruction-set level (see lora_kernels.c).
// The including file defines LK_ISA, LK_VL, LK_X86 and wraps the include in a target attribute.

#define LK_CAT2(a, b) a##_##b
#define LK_CAT(a, b) LK_CAT2(a, b)
#define LFN(name) LK_CAT(name, LK_ISA)

typedef float LFN(vf) __attribute__((ext_vector_type(LK_VL)));
#define LVF LFN(vf)
#define LK_INLINE static inline __attribute__((always_inline))

#define SC_VF LVF
#define SC_FN LFN
#define SC_VL LK_VL
#define SC_X86 LK_X86
#define SC_INLINE LK_INLINE
#include "simd_common.h"

typedef int8_t LFN(vi8) __attribute__((ext_vector_type(LK_VL)));

// A factor row of type h (0 fp32, 1 fp16, 2 int8 blocks: see CW_LORA_Q8) as (pointer, blocks).
typedef struct { const uint8_t *p; int64_t nb; } LFN(frow);
LK_INLINE LFN(frow) LFN(row)(const void *f, int64_t ld, int64_t r, const int h) {
    const int64_t nb = h == 2 ? (ld + 31) / 32 : 0;
    const int64_t bytes = h == 2 ? 4 * nb + ld : (h ? 2 : 4) * ld;
    LFN(frow) w = {(const uint8_t *)f + r * bytes, nb};
    return w;
}
// LK_VL elements of a factor row from element i (a multiple of LK_VL): fp32, fp16 widened
// exactly, or int8 times its block's scale (LK_VL divides 32, so the vector is in one block).
LK_INLINE LVF LFN(fload)(LFN(frow) w, int64_t i, const int h) {
    if (h == 2) {
        LFN(vi8) q;
        memcpy(&q, w.p + 4 * w.nb + i, sizeof q);
        float d;
        memcpy(&d, w.p + 4 * (i >> 5), 4);
        return __builtin_convertvector(q, LVF) * (LVF)d;
    }
    return h ? LFN(h16load)((const uint16_t *)w.p + i) : LFN(vload)((const float *)w.p + i);
}
LK_INLINE float LFN(fat)(LFN(frow) w, int64_t i, const int h) {
    if (h == 2) {
        float d;
        memcpy(&d, w.p + 4 * (i >> 5), 4);
        return (float)((const int8_t *)(w.p + 4 * w.nb))[i] * d;
    }
    return h ? cw_h2f_portable(((const uint16_t *)w.p)[i]) : ((const float *)w.p)[i];
}
// R factor rows × T tokens, `in` long, register-blocked (R, T ≤ 4).
LK_INLINE void LFN(down_tile)(const int R, const int T, const int h, const cw_lora_args *g, int64_t i0, int64_t t0) {
    LVF acc[4][4];
    const float *xr[4];
    for (int t = 0; t < T; t++) {
        const int64_t row = g->xrows ? g->xrows[t0 + t] : t0 + t;
        xr[t] = g->x + row * g->ldx;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = 0;
    const int64_t n = g->in;
    LFN(frow) a[4];
    for (int r = 0; r < R; r++) a[r] = LFN(row)(g->f, g->ldf, i0 + r, h);
    int64_t c = 0;
    for (; c + LK_VL <= n; c += LK_VL) {
        LVF xv[4];
        for (int t = 0; t < T; t++) xv[t] = LFN(vload)(xr[t] + c);
        for (int r = 0; r < R; r++) {
            const LVF wv = LFN(fload)(a[r], c, h);
            for (int t = 0; t < T; t++) acc[r][t] = wv * xv[t] + acc[r][t];
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = LFN(hsum)(acc[r][t]);
            for (int64_t cc = c; cc < n; cc++) s += LFN(fat)(a[r], cc, h) * xr[t][cc];
            g->u[(t0 + t) * g->ku + i0 + r] = s;
        }
}

static void LFN(down_tile_any)(int R, int T, int h, const cw_lora_args *g, int64_t i0, int64_t t0) {
#define LK_CASE(HH, RR, TT) if (R == RR && T == TT) { LFN(down_tile)(RR, TT, HH, g, i0, t0); return; }
#define LK_ROW(HH, RR) LK_CASE(HH, RR, 1) LK_CASE(HH, RR, 2) LK_CASE(HH, RR, 3) LK_CASE(HH, RR, 4)
    if (h == 2) { LK_ROW(2, 1) LK_ROW(2, 2) LK_ROW(2, 3) LK_ROW(2, 4) }
    else if (h) { LK_ROW(1, 1) LK_ROW(1, 2) LK_ROW(1, 3) LK_ROW(1, 4) }
    else { LK_ROW(0, 1) LK_ROW(0, 2) LK_ROW(0, 3) LK_ROW(0, 4) }
#undef LK_ROW
#undef LK_CASE
}

// u for factor rows [i0, i1) and tokens [t0, t1).
static void LFN(down)(const cw_lora_args *g, int64_t i0, int64_t i1, int64_t t0, int64_t t1) {
    const int h = g->type == CW_LORA_Q8 ? 2 : g->type == CW_LORA_F16;
    for (int64_t t = t0; t < t1; t += 4) {
        const int nt = (int)(t1 - t < 4 ? t1 - t : 4);
        for (int64_t i = i0; i < i1; i += 4) {
            const int nr = (int)(i1 - i < 4 ? i1 - i : 4);
            LFN(down_tile_any)(nr, nt, h, g, i, t);
        }
    }
}

LK_INLINE void LFN(up_h)(const cw_lora_args *g, int64_t o0, int64_t o1, const int h) {
    const int64_t k = g->k;
    const int64_t strip = 4 * LK_VL;
    for (int64_t s = o0; s < o1; s += strip) {
        const int64_t se = o1 - s < strip ? o1 : s + strip;
        for (int64_t t = 0; t < g->tokens; t++) {
            const int64_t row = g->yrows ? g->yrows[t] : t;
            float *y = g->y + row * g->ldy;
            const float *u = g->u + t * g->ku;
            int64_t o = s;
            if (se - s == strip) {
                LVF a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                for (int64_t i = 0; i < k; i++) {
                    const LVF ui = u[i];
                    const LFN(frow) b = LFN(row)(g->f, g->ldf, i, h);
                    a0 = ui * LFN(fload)(b, o, h) + a0;
                    a1 = ui * LFN(fload)(b, o + LK_VL, h) + a1;
                    a2 = ui * LFN(fload)(b, o + 2 * LK_VL, h) + a2;
                    a3 = ui * LFN(fload)(b, o + 3 * LK_VL, h) + a3;
                }
                LFN(vstore)(y + o, LFN(vload)(y + o) + a0);
                LFN(vstore)(y + o + LK_VL, LFN(vload)(y + o + LK_VL) + a1);
                LFN(vstore)(y + o + 2 * LK_VL, LFN(vload)(y + o + 2 * LK_VL) + a2);
                LFN(vstore)(y + o + 3 * LK_VL, LFN(vload)(y + o + 3 * LK_VL) + a3);
                continue;
            }
            for (; o + LK_VL <= se; o += LK_VL) {
                LVF a = 0;
                for (int64_t i = 0; i < k; i++) a = (LVF)u[i] * LFN(fload)(LFN(row)(g->f, g->ldf, i, h), o, h) + a;
                LFN(vstore)(y + o, LFN(vload)(y + o) + a);
            }
            for (; o < se; o++) {
                float a = 0;
                for (int64_t i = 0; i < k; i++) a = u[i] * LFN(fat)(LFN(row)(g->f, g->ldf, i, h), o, h) + a;
                y[o] += a;
            }
        }
    }
}

// y columns [o0, o1) for every token: y[row(t)][o] += Σ_i u[t][i] · Bt[i][o], 4 vectors at a time
// so a 4·LK_VL-column strip of Bt (k rows) stays in L1 across the tokens. The sum is formed from
// zero and then added to y, so adding into a zeroed buffer and adding that to y later gives the
// same bits (the model runs small steps' deltas beside the base product that way).
static void LFN(up)(const cw_lora_args *g, int64_t o0, int64_t o1) {
    switch (g->type) {
    case CW_LORA_Q8: LFN(up_h)(g, o0, o1, 2); return;
    case CW_LORA_F16: LFN(up_h)(g, o0, o1, 1); return;
    default: LFN(up_h)(g, o0, o1, 0); return;
    }
}

static const cw_lora_ops LFN(lora_ops) = {LFN(down), LFN(up)};

#undef LVF
#undef LFN
