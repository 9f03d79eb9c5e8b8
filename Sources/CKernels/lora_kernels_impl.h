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

// Columns [c0, c1) of factor row i as fp32 into d (the same values fload/fat give).
LK_INLINE void LFN(widen)(const cw_lora_args *g, int64_t i, int64_t c0, int64_t c1, const int h, float *d) {
    const LFN(frow) r = LFN(row)(g->f, g->ldf, i, h);
    int64_t c = c0;
    // fload needs c at a multiple of LK_VL (so an int8 vector lies in one block)
    for (; c + LK_VL <= c1 && c % LK_VL == 0; c += LK_VL) LFN(vstore)(d + (c - c0), LFN(fload)(r, c, h));
    for (; c < c1; c++) d[c - c0] = LFN(fat)(r, c, h);
}

// u for factor rows [i0, i1) and tokens [t0, t1). With many tokens an fp16 or int8 factor's rows
// are widened to fp32 once and the fp32 tiles run on them (the tiles would widen each row vector
// again for every 4 tokens); same values, same order of operations: identical results.
static void LFN(down)(const cw_lora_args *g, int64_t i0, int64_t i1, int64_t t0, int64_t t1) {
    int h = g->type == CW_LORA_Q8 ? 2 : g->type == CW_LORA_F16;
    float *wb = h && t1 - t0 >= 8 ? (float *)malloc((size_t)((i1 - i0) * g->in) * sizeof(float)) : NULL;
    cw_lora_args widened;
    const cw_lora_args *a = g;
    if (wb) {
        for (int64_t i = i0; i < i1; i++) LFN(widen)(g, i, 0, g->in, h, wb + (i - i0) * g->in);
        widened = *g;
        widened.type = CW_LORA_F32;
        widened.f = wb;
        widened.ldf = g->in;
        widened.u = g->u + i0;  // row i of the widened factor is factor row i0 + i
        a = &widened;
        h = 0;
        i1 -= i0;
        i0 = 0;
    }
    for (int64_t t = t0; t < t1; t += 4) {
        const int nt = (int)(t1 - t < 4 ? t1 - t : 4);
        for (int64_t i = i0; i < i1; i += 4) {
            const int nr = (int)(i1 - i < 4 ? i1 - i : 4);
            LFN(down_tile_any)(nr, nt, h, a, i, t);
        }
    }
    free(wb);
}

// Many tokens (prefill, batched steps): T tokens × one strip of 4 vectors per register tile, the
// factor as fp32 rows `w` (row i at w + i·ldw; column c at w[c − off]), token groups outermost, so
// each factor vector loaded feeds T FMAs and each y row is read and written once per call while
// it is in cache (the per-token path below walks all tokens per 4·LK_VL-column strip: y of a wide
// projection came from L3 once per strip, which bounded the product, not its multiply-adds). Each
// output is Σ_i u·w from zero in order i = 0..k-1, then added to y — as the per-token path does:
// identical results.
#define LK_UP_T (LK_VL >= 16 ? 4 : 2)
// T tokens × V vectors (V ≤ 4) of columns from s: T·V independent accumulators. The factor: rows of
// type h (`LFN(row)`) from f, column c at element c − off of its row; each factor vector is loaded
// (for fp16/int8, widened) once per i for the T tokens.
LK_INLINE void LFN(up_tile)(const int T, const int V, const cw_lora_args *g, const void *f, int64_t ldf, const int h, int64_t off,
                            int64_t t0, int64_t s) {
    LVF acc[4][4];
    for (int t = 0; t < T; t++)
        for (int v = 0; v < V; v++) acc[t][v] = 0;
    const float *u[4];
    for (int t = 0; t < T; t++) u[t] = g->u + (t0 + t) * g->ku;
    for (int64_t i = 0; i < g->k; i++) {
        const LFN(frow) b = LFN(row)(f, ldf, i, h);
        for (int v = 0; v < V; v++) {
            const LVF wv = LFN(fload)(b, s - off + v * LK_VL, h);
            for (int t = 0; t < T; t++) acc[t][v] = (LVF)u[t][i] * wv + acc[t][v];
        }
    }
    for (int t = 0; t < T; t++) {
        const int64_t row = g->yrows ? g->yrows[t0 + t] : t0 + t;
        float *y = g->y + row * g->ldy + s;
        for (int v = 0; v < V; v++) LFN(vstore)(y + v * LK_VL, LFN(vload)(y + v * LK_VL) + acc[t][v]);
    }
}

LK_INLINE void LFN(up_tile_v)(const int T, const int64_t V, const cw_lora_args *g, const float *w, int64_t ldw, int64_t off, int64_t t0, int64_t s) {
    switch (V) {
    case 1: LFN(up_tile)(T, 1, g, w, ldw, 0, off, t0, s); break;
    case 2: LFN(up_tile)(T, 2, g, w, ldw, 0, off, t0, s); break;
    case 3: LFN(up_tile)(T, 3, g, w, ldw, 0, off, t0, s); break;
    default: LFN(up_tile)(T, 4, g, w, ldw, 0, off, t0, s); break;
    }
}

// Returns 0 when it could not allocate the widened columns (the caller then runs the per-token path).
// Columns go in strips of 4 vectors, then one strip of the remaining whole vectors (a call's
// range — a product part's rows, cw_lora_up_range — is often not a multiple of 4 vectors: one
// accumulator per vector there was a chain of k dependent FMAs per token), then single columns.
static int LFN(up_blocked)(const cw_lora_args *g, int64_t o0, int64_t o1, const int h) {
    const int64_t k = g->k, width = o1 - o0, strip = 4 * LK_VL;
    const float *w = (const float *)g->f;
    int64_t ldw = g->ldf, off = 0;
    float *wb = NULL;
    if (h) {  // widen this call's columns of the k rows once
        wb = (float *)malloc((size_t)(k * width) * sizeof(float));
        if (!wb) return 0;
        for (int64_t i = 0; i < k; i++) LFN(widen)(g, i, o0, o1, h, wb + i * width);
        w = wb;
        ldw = width;
        off = o0;
    }
    const int64_t full = o0 + (width / strip) * strip;
    const int64_t rv = (o1 - full) / LK_VL, vend = full + rv * LK_VL;
    for (int64_t t = 0; t < g->tokens; t += LK_UP_T) {
        const int nt = (int)(g->tokens - t < LK_UP_T ? g->tokens - t : LK_UP_T);
        for (int64_t s = o0; s < vend; s += strip) {
            const int64_t V = s < full ? 4 : rv;
            switch (nt) {
            case 1: LFN(up_tile_v)(1, V, g, w, ldw, off, t, s); break;
            case 2: LFN(up_tile_v)(2, V, g, w, ldw, off, t, s); break;
            case 3: LFN(up_tile_v)(3, V, g, w, ldw, off, t, s); break;
            default: LFN(up_tile_v)(LK_UP_T, V, g, w, ldw, off, t, s); break;
            }
        }
        for (int tt = 0; tt < nt && vend < o1; tt++) {  // the columns after the last whole vector
            const int64_t row = g->yrows ? g->yrows[t + tt] : t + tt;
            float *y = g->y + row * g->ldy;
            const float *u = g->u + (t + tt) * g->ku;
            for (int64_t o = vend; o < o1; o++) {
                float acc = 0;
                for (int64_t i = 0; i < k; i++) acc = u[i] * w[i * ldw + (o - off)] + acc;
                y[o] += acc;
            }
        }
    }
    free(wb);
    return 1;
}

LK_INLINE void LFN(up_h)(const cw_lora_args *g, int64_t o0, int64_t o1, const int h) {
    if (g->tokens >= 4 && LFN(up_blocked)(g, o0, o1, h)) return;
    const int64_t k = g->k;
    const int64_t strip = 4 * LK_VL;
    // fload needs a multiple of LK_VL (an int8 vector in one block): columns before the first
    // one (a range cut elsewhere, cw_lora_up_range) go one by one — the same sum per output.
    int64_t head = o0 % LK_VL ? (o0 / LK_VL + 1) * LK_VL : o0;
    if (head > o1) head = o1;
    for (int64_t t = 0; t < g->tokens && head > o0; t++) {
        float *y = g->y + (g->yrows ? g->yrows[t] : t) * g->ldy;
        const float *u = g->u + t * g->ku;
        for (int64_t o = o0; o < head; o++) {
            float a = 0;
            for (int64_t i = 0; i < k; i++) a = u[i] * LFN(fat)(LFN(row)(g->f, g->ldf, i, h), o, h) + a;
            y[o] += a;
        }
    }
    for (int64_t s = head; s < o1; s += strip) {
        const int64_t se = o1 - s < strip ? o1 : s + strip;
        int64_t t = 0;
        if (se - s == strip) {
            // Up to three tokens per pass over the factor: each factor vector is loaded (and, for
            // fp16/int8 factors, widened) once for all of them — a batched step's adapter group
            // holds a few tokens, which each widened the whole factor again. Every output is the
            // same sum in the same order as alone: identical results.
            for (; t + 3 <= g->tokens; t += 3) LFN(up_tile)(3, 4, g, g->f, g->ldf, h, 0, t, s);
            if (t + 2 == g->tokens) { LFN(up_tile)(2, 4, g, g->f, g->ldf, h, 0, t, s); t += 2; }
            if (t + 1 == g->tokens) { LFN(up_tile)(1, 4, g, g->f, g->ldf, h, 0, t, s); t += 1; }
        }
        for (; t < g->tokens; t++) {
            const int64_t row = g->yrows ? g->yrows[t] : t;
            float *y = g->y + row * g->ldy;
            const float *u = g->u + t * g->ku;
            int64_t o = s;
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

// y columns [o0, o1) for every token: y[row(t)][o] += Σ_i u[t][i] · Bt[i][o] (4+ tokens: the
// blocked path above; fewer: 4 vectors at a time, widening the factor as it goes). The sum is
// formed from zero and then added to y, so adding into a zeroed buffer and adding that to y later
// gives the same bits (the model runs small steps' deltas beside the base product that way).
static void LFN(up)(const cw_lora_args *g, int64_t o0, int64_t o1) {
    switch (g->type) {
    case CW_LORA_Q8: LFN(up_h)(g, o0, o1, 2); return;
    case CW_LORA_F16: LFN(up_h)(g, o0, o1, 1); return;
    default: LFN(up_h)(g, o0, o1, 0); return;
    }
}

// Factor rows [r0, r1) as fp32 (all `ldf` columns), row-major into dst: `widen` row by row.
static void LFN(to_f32)(const cw_lora_args *g, int64_t r0, int64_t r1, float *dst) {
    const int64_t n = g->ldf;
    for (int64_t r = r0; r < r1; r++) {
        float *d = dst + (r - r0) * n;
        switch (g->type) {
        case CW_LORA_Q8: LFN(widen)(g, r, 0, n, 2, d); break;
        case CW_LORA_F16: LFN(widen)(g, r, 0, n, 1, d); break;
        default: LFN(widen)(g, r, 0, n, 0, d); break;
        }
    }
}

static const cw_lora_ops LFN(lora_ops) = {LFN(down), LFN(up), LFN(to_f32)};

#undef LVF
#undef LFN
