// Merging a weight delta into a quantized row without changing its format (see ckernels.h,
// cw_grid_merge_row).
//
// Requantizing `W + ΔW` from scratch keeps almost nothing of a LoRA delta on a 4-bit base: the base
// values already sit on the block's grid and the delta is ~1/100 of a grid step, so rounding to
// nearest gives the base back. Here each block keeps its scale (and min) and every index moves by
// `floor(δ/step + u)` with `u` uniform in [0, 1): an unbiased rounding (the expected change is δ
// exactly, up to clamping at the ends of the range) whose noise is ~sqrt(step·|δ|) per weight — on
// SmolLM2 Q4_1 about a tenth of the base's own rounding noise. `u` is a hash of (seed, row, column),
// so the result does not depend on how rows are split across threads.
#include "cw_internal.h"

static inline uint64_t gm_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) from (row key, column).
static inline float gm_uniform(uint64_t key, int64_t c) {
    return (float)(gm_mix(key ^ ((uint64_t)c * 0xD1B54A32D192ED03ull)) >> 40) * (1.0f / 16777216.0f);
}

static inline int gm_step(float delta, float step, float u) {
    // A step may be negative (ggml's Q4_0/Q5_0/Q8_0 scales carry the sign of the block's extreme);
    // k·step still averages to delta. A zero step (a constant block) cannot move.
    if (step == 0 || !(step == step) || !(delta == delta)) return 0;
    const float t = delta / step + u;
    if (t >= 1e6f) return 1000000;
    if (t <= -1e6f) return -1000000;
    return (int)floorf(t);
}

static inline int gm_clamp(int q, int lo, int hi) { return q < lo ? lo : (q > hi ? hi : q); }

int cw_grid_merge_row(int type, const void *src, const float *delta, void *dst, int64_t n, uint64_t seed, int64_t row) {
    const int be = cw_block_elems(type);
    if (!be || n < 0 || n % be || !src || !delta || !dst) return -1;
    const uint8_t *s = (const uint8_t *)src;
    uint8_t *d = (uint8_t *)dst;
    const uint64_t key = gm_mix(seed ^ gm_mix((uint64_t)row));
    switch (type) {
    case CW_TYPE_F32:
        for (int64_t i = 0; i < n; i++) {
            float w;
            memcpy(&w, s + 4 * i, 4);
            w += delta[i];
            memcpy(d + 4 * i, &w, 4);
        }
        return 0;
    case CW_TYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            h = cw_fp32_to_fp16(cw_fp16_to_fp32(h) + delta[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    case CW_TYPE_Q4_0: case CW_TYPE_Q4_1: case CW_TYPE_Q5_0: case CW_TYPE_Q5_1: case CW_TYPE_Q8_0: break;
    default: return -2;  // K-quants, BF16: not supported (the caller keeps an fp16 copy)
    }
    const int bb = cw_block_bytes(type);
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *sb = s + b * bb;
        uint8_t *db = d + b * bb;
        memcpy(db, sb, (size_t)bb);
        uint16_t dh;
        memcpy(&dh, sb, 2);
        const float step = cw_fp16_to_fp32(dh);
        const float *dl = delta + b * 32;
        const int64_t c0 = b * 32;
        if (type == CW_TYPE_Q8_0) {
            int8_t *q = (int8_t *)(db + 2);
            for (int j = 0; j < 32; j++)
                q[j] = (int8_t)gm_clamp(q[j] + gm_step(dl[j], step, gm_uniform(key, c0 + j)), -128, 127);
            continue;
        }
        const int has_min = type == CW_TYPE_Q4_1 || type == CW_TYPE_Q5_1;
        const int five = type == CW_TYPE_Q5_0 || type == CW_TYPE_Q5_1;
        uint8_t *qs = db + 2 + (has_min ? 2 : 0) + (five ? 4 : 0);
        uint32_t qh = 0;
        if (five) memcpy(&qh, db + 2 + (has_min ? 2 : 0), 4);
        const int hi = five ? 31 : 15;
        uint32_t nqh = 0;
        for (int j = 0; j < 16; j++) {
            int lo_q = qs[j] & 15, hi_q = qs[j] >> 4;
            if (five) {
                lo_q |= (int)((qh >> j) & 1) << 4;
                hi_q |= (int)((qh >> (j + 16)) & 1) << 4;
            }
            lo_q = gm_clamp(lo_q + gm_step(dl[j], step, gm_uniform(key, c0 + j)), 0, hi);
            hi_q = gm_clamp(hi_q + gm_step(dl[j + 16], step, gm_uniform(key, c0 + j + 16)), 0, hi);
            qs[j] = (uint8_t)((lo_q & 15) | ((hi_q & 15) << 4));
            if (five) nqh |= ((uint32_t)(lo_q >> 4) << j) | ((uint32_t)(hi_q >> 4) << (j + 16));
        }
        if (five) memcpy(db + 2 + (has_min ? 2 : 0), &nqh, 4);
    }
    return 0;
}
