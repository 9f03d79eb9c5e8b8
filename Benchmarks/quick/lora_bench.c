// Quick harness for the low-rank kernels (compiles the CKernels sources directly, like
// matmul_bench.c): the down product u = A·x and the up product y += Bᵀᵀ·u of a prefill-sized call,
// fp32 factors by default, one thread, at ranks 4/6/8/12/16 — how their time scales with the rank. The up
// product runs per range of COLS output columns as the split deltas do inside the base product's
// job (cw_lora_up_range); COLS should be a multiple of the vector width, as the job's parts are.
// Usage: lora_bench [OUT [TOKENS [COLS [IN [TYPE]]]]]   (defaults 1536 128 192 576 0: SmolLM2's gate/up;
// TYPE: the factors' storage, 0 fp32, 1 fp16, 2 int8 blocks — the engine's `fast` precision binds int8;
// e.g. `lora_bench 1536 2 1536 576 2` times a batched step's 2-token adapter group)
//   K=../../Sources/CKernels
//   clang -O3 -ffp-contract=fast -fno-math-errno -I $K/include $K/*.c lora_bench.c -o lora_bench -lpthread -lm
#include "lora_kernels.h"
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    const int out = argc > 1 ? atoi(argv[1]) : 1536, T = argc > 2 ? atoi(argv[2]) : 128;
    const int cols = argc > 3 ? atoi(argv[3]) : 192, in = argc > 4 ? atoi(argv[4]) : 576, type = argc > 5 ? atoi(argv[5]) : 0;
    if (out <= 0 || T <= 0 || cols <= 0 || in <= 0 || type < 0 || type > 2) {
        fprintf(stderr, "usage: lora_bench [OUT [TOKENS [COLS [IN [TYPE 0|1|2]]]]]\n");
        return 1;
    }
    float *bt = malloc(sizeof(float) * 16 * out), *u = malloc(sizeof(float) * T * 16), *y = calloc((size_t)T * out, sizeof(float));
    float *a = malloc(sizeof(float) * 16 * in), *x = malloc(sizeof(float) * T * in), *ud = malloc(sizeof(float) * T * 16);
    if (!bt || !u || !y || !a || !x || !ud) return 1;
    for (int i = 0; i < 16 * out; i++) bt[i] = (rand() % 100) / 100.f;
    for (int i = 0; i < T * 16; i++) u[i] = (rand() % 100) / 100.f;
    for (int i = 0; i < 16 * in; i++) a[i] = (rand() % 100) / 100.f;
    for (int i = 0; i < T * in; i++) x[i] = (rand() % 100) / 100.f;
    // The factors in `type` (rows of 16 · out and 16 · in values).
    void *btf = bt, *af = a;
    if (type) {
        const int64_t rbo = cw_lora_row_bytes(type, out), rbi = cw_lora_row_bytes(type, in);
        uint8_t *bq = malloc((size_t)(16 * rbo)), *aq = malloc((size_t)(16 * rbi));
        if (!bq || !aq) return 1;
        for (int i = 0; i < 16; i++) {
            if (type == 1) { cw_f32_to_f16_row(bt + i * out, (uint16_t *)(bq + i * rbo), out); cw_f32_to_f16_row(a + i * in, (uint16_t *)(aq + i * rbi), in); }
            else { cw_lora_q8_row(bt + i * out, bq + i * rbo, out); cw_lora_q8_row(a + i * in, aq + i * rbi, in); }
        }
        btf = bq;
        af = aq;
    }
    const int ks[] = {4, 6, 8, 12, 16};
    printf("out %d, %d tokens, up in ranges of %d columns, in %d, factors %s (best of 200)\n", out, T, cols, in,
           type == 2 ? "int8" : type == 1 ? "fp16" : "fp32");
    for (int ki = 0; ki < 5; ki++) {
        const int k = ks[ki];
        double up = 1e9, down = 1e9;
        for (int rep = 0; rep < 200; rep++) {
            double t0 = now();
            for (int o0 = 0; o0 < out; o0 += cols)
                cw_lora_up_range(type, btf, out, k, out, u, 16, T, y, out, NULL, o0, o0 + cols < out ? o0 + cols : out);
            double t1 = now();
            if (t1 - t0 < up) up = t1 - t0;
            t0 = now();
            cw_lora_down(type, af, in, k, in, x, in, NULL, T, ud, 16, NULL);
            t1 = now();
            if (t1 - t0 < down) down = t1 - t0;
        }
        printf("rank %2d: up %7.1f us (%5.1f GFLOP/s), down %7.1f us (%5.1f GFLOP/s)\n", k, up * 1e6, 2.0 * k * out * T / up / 1e9,
               down * 1e6, 2.0 * k * in * T / down / 1e9);
    }
    return 0;
}
