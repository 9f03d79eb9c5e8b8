// The issue rate of the integer dot-product instructions the batched kernel is built from, with no
// memory traffic: 16 independent accumulator chains of vpdpwssd at 256 and 512 bits (the weight
// operand broadcast from memory, as the kernel does, or from a register) and of vpdpbusd (the 8-bit
// form llama.cpp uses), in ns per instruction. On a core that splits 512-bit operations into two
// 256-bit halves (AMD Zen 4), the 512-bit form takes twice as long per instruction: same
// multiply-adds per second, so wider vectors would not speed the kernel up. On an Intel Xeon with
// two 512-bit ports (2026-12-02) the 512-bit form from registers issued as fast as the 256-bit one
// (0.173–0.178 against 0.173–0.193 ns, two runs): twice the multiply-adds, which is why the
// AVX-512 level's batched kernel takes rows in 512-bit pairs (kernels_impl.h, FN(tb2_tile)).
//   clang -O2 -march=native vnni_rate.c -o vnni_rate && ./vnni_rate
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int16_t wq[4096] __attribute__((aligned(64)));
enum { N = 20000000, C = 16 };

int main(void) {
    for (int i = 0; i < 4096; i++) wq[i] = (int16_t)(i & 15);
    {   // 256-bit, weight pair broadcast from memory (the batched kernel's form)
        __m256i a[C], x = _mm256_set1_epi16(3), y = _mm256_set1_epi16(5);
        for (int i = 0; i < C; i++) a[i] = _mm256_set1_epi32(i);
        const double t = now();
        for (long n = 0; n < N; n++) {
            const int16_t *p = wq + ((n * 64) & 2047);
#pragma clang loop unroll(full)
            for (int i = 0; i < C; i++) { int32_t v; memcpy(&v, p + 2 * i, 4); a[i] = _mm256_dpwssd_epi32(a[i], (i & 1) ? x : y, _mm256_set1_epi32(v)); }
            __asm__ volatile("" : "+x"(x));
        }
        const double s = now() - t;
        int k = 0; for (int i = 0; i < C; i++) k += _mm256_extract_epi32(a[i], 0);
        printf("vpdpwssd ymm, broadcast from memory: %.3f ns/instruction (%d)\n", s * 1e9 / ((double)N * C), k);
    }
    {   // 256-bit, registers only
        __m256i a[C], x = _mm256_set1_epi16(3), y = _mm256_set1_epi16(5);
        for (int i = 0; i < C; i++) a[i] = _mm256_set1_epi32(i);
        const double t = now();
        for (long n = 0; n < N; n++) {
#pragma clang loop unroll(full)
            for (int i = 0; i < C; i++) a[i] = _mm256_dpwssd_epi32(a[i], x, y);
            __asm__ volatile("" : "+x"(x), "+x"(y));
        }
        const double s = now() - t;
        int k = 0; for (int i = 0; i < C; i++) k += _mm256_extract_epi32(a[i], 0);
        printf("vpdpwssd ymm, registers:             %.3f ns/instruction (%d)\n", s * 1e9 / ((double)N * C), k);
    }
    {   // 512-bit, two weight pairs (64 bits) broadcast from memory
        __m512i a[C], x = _mm512_set1_epi16(3), y = _mm512_set1_epi16(5);
        for (int i = 0; i < C; i++) a[i] = _mm512_set1_epi32(i);
        const double t = now();
        for (long n = 0; n < N; n++) {
            const int16_t *p = wq + ((n * 64) & 2047);
#pragma clang loop unroll(full)
            for (int i = 0; i < C; i++) { int64_t v; memcpy(&v, p + 4 * i, 8); a[i] = _mm512_dpwssd_epi32(a[i], (i & 1) ? x : y, _mm512_set1_epi64(v)); }
            __asm__ volatile("" : "+v"(x));
        }
        const double s = now() - t;
        int k = 0; for (int i = 0; i < C; i++) k += _mm_cvtsi128_si32(_mm512_castsi512_si128(a[i]));
        printf("vpdpwssd zmm, broadcast from memory: %.3f ns/instruction (%d)\n", s * 1e9 / ((double)N * C), k);
    }
    {   // 512-bit, registers only
        __m512i a[C], x = _mm512_set1_epi16(3), y = _mm512_set1_epi16(5);
        for (int i = 0; i < C; i++) a[i] = _mm512_set1_epi32(i);
        const double t = now();
        for (long n = 0; n < N; n++) {
#pragma clang loop unroll(full)
            for (int i = 0; i < C; i++) a[i] = _mm512_dpwssd_epi32(a[i], x, y);
            __asm__ volatile("" : "+v"(x), "+v"(y));
        }
        const double s = now() - t;
        int k = 0; for (int i = 0; i < C; i++) k += _mm_cvtsi128_si32(_mm512_castsi512_si128(a[i]));
        printf("vpdpwssd zmm, registers:             %.3f ns/instruction (%d)\n", s * 1e9 / ((double)N * C), k);
    }
    {   // 256-bit 8-bit dot products, registers only
        __m256i a[C], x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(5);
        for (int i = 0; i < C; i++) a[i] = _mm256_set1_epi32(i);
        const double t = now();
        for (long n = 0; n < N; n++) {
#pragma clang loop unroll(full)
            for (int i = 0; i < C; i++) a[i] = _mm256_dpbusd_epi32(a[i], x, y);
            __asm__ volatile("" : "+x"(x), "+x"(y));
        }
        const double s = now() - t;
        int k = 0; for (int i = 0; i < C; i++) k += _mm256_extract_epi32(a[i], 0);
        printf("vpdpbusd ymm, registers:             %.3f ns/instruction (%d)\n", s * 1e9 / ((double)N * C), k);
    }
    return 0;
}
