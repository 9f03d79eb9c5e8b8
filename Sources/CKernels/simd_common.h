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
