// fp32 vector helpers shared by the kernel bodies (kernels_impl.h, kv_attention_impl.h,
// lora_kernels_impl.h). No include guard: each body includes it once per instruction-set level,
// after defining
//   SC_VF      its fp32 vector type (ext_vector_type(SC_VL))
//   SC_FN(n)   its name-suffixing macro (e.g. n##_avx512)
//   SC_VL      lanes per vector
//   SC_X86     1 with x86 intrinsics (F16C at least)
//   SC_INLINE  its inline attribute
// and undefines nothing: the SC_ macros are removed at the end of this file.

SC_INLINE SC_VF SC_FN(vload)(const float *p) { SC_VF v; memcpy(&v, p, sizeof v); return v; }
SC_INLINE void SC_FN(vstore)(float *p, SC_VF v) { memcpy(p, &v, sizeof v); }

// Fixed-order horizontal sum (pairwise halving), the same for every caller, so that kernels
// meant to agree bit for bit (paged fp32 attention and cw_attention) do.
SC_INLINE float SC_FN(hsum)(SC_VF v) {
    float a[SC_VL];
    memcpy(a, &v, sizeof v);
    for (int w = SC_VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
}

// The vector part of the dot product of n floats: two accumulators over pairs of vectors, one more
// vector into the first, the two summed lane-wise (contracted multiply-adds, like the bodies' FMA
// macros). Its horizontal sum and the scalar tail from n − n % SC_VL on are the caller's. Every fp32
// dot of the kernels goes through it, so they agree bit for bit.
SC_INLINE SC_VF SC_FN(dot_lanes)(const float *a, const float *b, int64_t n) {
    SC_VF s0 = 0, s1 = 0;
    int64_t i = 0;
    for (; i + 2 * SC_VL <= n; i += 2 * SC_VL) {
        s0 = SC_FN(vload)(a + i) * SC_FN(vload)(b + i) + s0;
        s1 = SC_FN(vload)(a + i + SC_VL) * SC_FN(vload)(b + i + SC_VL) + s1;
    }
    for (; i + SC_VL <= n; i += SC_VL) s0 = SC_FN(vload)(a + i) * SC_FN(vload)(b + i) + s0;
    return s0 + s1;
}

// r[0..SC_VL) → one vector whose lane l is SC_FN(hsum)(r[l]) bit for bit: the same pairwise tree
// (lane i plus lane i + w for w = SC_VL/2, …, 1), SC_VL rows at once by shuffles (r is overwritten).
SC_INLINE SC_VF SC_FN(hsum_rows)(SC_VF *r) {
#define SC_L(...) __VA_ARGS__
#define SC_PAIR(lo, hi) __builtin_shufflevector(r[2 * i], r[2 * i + 1], lo) + __builtin_shufflevector(r[2 * i], r[2 * i + 1], hi)
#if SC_VL == 16
    for (int i = 0; i < 8; i++) r[i] = SC_PAIR(SC_L(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23), SC_L(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
    for (int i = 0; i < 4; i++) r[i] = SC_PAIR(SC_L(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27), SC_L(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31));
    for (int i = 0; i < 2; i++) r[i] = SC_PAIR(SC_L(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29), SC_L(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31));
    for (int i = 0; i < 1; i++) r[i] = SC_PAIR(SC_L(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), SC_L(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31));
#elif SC_VL == 8
    for (int i = 0; i < 4; i++) r[i] = SC_PAIR(SC_L(0, 1, 2, 3, 8, 9, 10, 11), SC_L(4, 5, 6, 7, 12, 13, 14, 15));
    for (int i = 0; i < 2; i++) r[i] = SC_PAIR(SC_L(0, 1, 4, 5, 8, 9, 12, 13), SC_L(2, 3, 6, 7, 10, 11, 14, 15));
    for (int i = 0; i < 1; i++) r[i] = SC_PAIR(SC_L(0, 2, 4, 6, 8, 10, 12, 14), SC_L(1, 3, 5, 7, 9, 11, 13, 15));
#else
    for (int i = 0; i < 2; i++) r[i] = SC_PAIR(SC_L(0, 1, 4, 5), SC_L(2, 3, 6, 7));
    for (int i = 0; i < 1; i++) r[i] = SC_PAIR(SC_L(0, 2, 4, 6), SC_L(1, 3, 5, 7));
#endif
#undef SC_PAIR
#undef SC_L
    return r[0];
}

// SC_VL fp16 values widened exactly to fp32.
SC_INLINE SC_VF SC_FN(h16load)(const uint16_t *p) {
#if SC_X86 && SC_VL == 16
    return (SC_VF)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif SC_X86 && SC_VL == 8
    return (SC_VF)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    SC_VF v;
    for (int l = 0; l < SC_VL; l++) v[l] = cw_h2f_portable(p[l]);
    return v;
#endif
}

#undef SC_VF
#undef SC_FN
#undef SC_VL
#undef SC_X86
#undef SC_INLINE
