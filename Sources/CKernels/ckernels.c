#include "ckernels.h"
#include <string.h>
#include <math.h>

float cw_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { // subnormal
            int e = -1;
            do { mant <<= 1; e++; } while ((mant & 0x400) == 0);
            mant &= 0x3FF;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t cw_fp32_to_fp16(float f) {
    _Float16 h = (_Float16)f;
    uint16_t r;
    memcpy(&r, &h, 2);
    return r;
}

float cw_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int cw_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case CW_TYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    case CW_TYPE_F16:
        for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = cw_fp16_to_fp32(h); }
        return 0;
    case CW_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = cw_bf16_to_fp32(h); }
        return 0;
    case CW_TYPE_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18) {
            uint16_t dh; memcpy(&dh, p, 2); float d = cw_fp16_to_fp32(dh);
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = ((int)(p[2 + j] & 0x0F) - 8) * d;
                dst[b * 32 + j + 16] = ((int)(p[2 + j] >> 4) - 8) * d;
            }
        }
        return 0;
    case CW_TYPE_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20) {
            uint16_t dh, mh; memcpy(&dh, p, 2); memcpy(&mh, p + 2, 2);
            float d = cw_fp16_to_fp32(dh), m = cw_fp16_to_fp32(mh);
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = (float)(p[4 + j] & 0x0F) * d + m;
                dst[b * 32 + j + 16] = (float)(p[4 + j] >> 4) * d + m;
            }
        }
        return 0;
    case CW_TYPE_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            uint16_t dh; memcpy(&dh, p, 2); float d = cw_fp16_to_fp32(dh);
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = (float)(int8_t)p[2 + j] * d;
        }
        return 0;
    default:
        return -1;
    }
}

float cw_dot_f32(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = 0;
    for (; i < n; i++) s += a[i] * b[i];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}
