// Two builds of the CKernels sources in one process, alternating: the way to compare kernel
// changes on a machine whose speed drifts between runs (separate runs of one binary can differ by
// ±30% on a shared host; blocks of calls alternating in one process see the same drift). Each build
// is a shared object loaded with RTLD_LOCAL, so both keep their own symbols and thread pool; the
// first call of each is compared bit for bit (`same=1`: the change kept the results).
//   K=../../Sources/CKernels   (and the same for the other revision, e.g. from `git archive REV`)
//   clang -O3 -march=native -fPIC -shared -ffp-contract=fast -fno-math-errno -I $K/include $K/*.c -o libA.so -lpthread -lm
//   clang -O2 -I $K/include ab_matmul.c -o ab_matmul -ldl
// (SwiftPM builds CKernels without -march; leaving it out here too compiles the levels as the
// package does, which the 2026-12-02 AVX-512 numbers did.)
//   ./ab_matmul ./libA.so ./libB.so THREADS TYPE ROWS COLS TOKENS [PAIRS]   (TYPE: 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0)
// Prints the medians of A's and B's time per call and of the per-pair ratio B/A, with its quartiles;
// the order within a pair alternates.
#include "ckernels.h"
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int block_bytes(int t) { switch (t) { case 2: return 18; case 3: return 20; case 6: return 22; case 7: return 24; case 8: return 34; } return 0; }
static int cmpd(const void *a, const void *b) { const double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
typedef int (*matmul_fn)(int, const void *, int64_t, int64_t, int64_t, const float *, int64_t, float *, int, cw_pool *);
typedef cw_pool *(*pool_fn)(int);

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: ab_matmul libA.so libB.so THREADS TYPE ROWS COLS TOKENS [PAIRS]\n");
        return 2;
    }
    const int threads = atoi(argv[3]), type = atoi(argv[4]), rows = atoi(argv[5]), cols = atoi(argv[6]), tokens = atoi(argv[7]);
    int pairs = argc > 8 ? atoi(argv[8]) : 40;
    if (pairs < 4) pairs = 4;
    if (pairs > 1000) pairs = 1000;
    if (!block_bytes(type) || rows < 1 || cols < 32 || cols % 32 || tokens < 1) { fprintf(stderr, "bad shape or type\n"); return 2; }
    matmul_fn mm[2];
    cw_pool *pool[2];
    for (int i = 0; i < 2; i++) {
        void *h = dlopen(argv[1 + i], RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        mm[i] = (matmul_fn)dlsym(h, "cw_matmul");
        pool_fn create = (pool_fn)dlsym(h, "cw_pool_create");
        if (!mm[i] || !create) { fprintf(stderr, "%s: no cw_matmul/cw_pool_create\n", argv[1 + i]); return 1; }
        pool[i] = create(threads);
    }
    const int64_t rb = (int64_t)cols / 32 * block_bytes(type);
    const size_t wbytes = (size_t)rows * (size_t)rb;
    uint8_t *w = aligned_alloc(64, (wbytes + 63) / 64 * 64);
    float *x = malloc(sizeof(float) * (size_t)cols * tokens), *y0 = malloc(sizeof(float) * (size_t)rows * tokens),
          *y1 = malloc(sizeof(float) * (size_t)rows * tokens);
    if (!w || !x || !y0 || !y1) return 1;
    for (size_t i = 0; i < wbytes; i++) w[i] = (uint8_t)rand();
    const uint16_t scale = 0x211e;  // fp16 ≈ 0.01 for every block's d (and m)
    for (size_t b = 0; b < wbytes / (size_t)block_bytes(type); b++) {
        uint8_t *p = w + b * (size_t)block_bytes(type);
        memcpy(p, &scale, 2);
        if (type == 3 || type == 7) memcpy(p + 2, &scale, 2);
    }
    for (int i = 0; i < cols * tokens; i++) x[i] = (float)(rand() % 200 - 100) / 100.f;
    mm[0](type, w, rows, cols, rb, x, tokens, y0, 1, pool[0]);
    mm[1](type, w, rows, cols, rb, x, tokens, y1, 1, pool[1]);
    const int same = !memcmp(y0, y1, sizeof(float) * (size_t)rows * tokens);
    int iters = 1;
    double t;
    do {  // calls per timed block: at least 50 ms
        iters *= 2;
        t = now();
        for (int i = 0; i < iters; i++) mm[0](type, w, rows, cols, rb, x, tokens, y0, 1, pool[0]);
        t = now() - t;
    } while (t < 0.05);
    static double ratio[1000], ta[1000], tb[1000];
    for (int p = 0; p < pairs; p++) {
        for (int k = 0; k < 2; k++) {
            const int v = (p & 1) ? 1 - k : k;
            t = now();
            for (int i = 0; i < iters; i++) mm[v](type, w, rows, cols, rb, x, tokens, y0, 1, pool[v]);
            t = (now() - t) / iters;
            (v ? tb : ta)[p] = t;
        }
        ratio[p] = tb[p] / ta[p];
    }
    qsort(ratio, (size_t)pairs, sizeof(double), cmpd);
    qsort(ta, (size_t)pairs, sizeof(double), cmpd);
    qsort(tb, (size_t)pairs, sizeof(double), cmpd);
    printf("type %d %dx%d, %d tokens, %d threads, same=%d: A %.1f us, B %.1f us (medians); B/A median %.3f [quartiles %.3f %.3f], %d pairs\n",
           type, rows, cols, tokens, threads, same, ta[pairs / 2] * 1e6, tb[pairs / 2] * 1e6, ratio[pairs / 2],
           ratio[pairs / 4], ratio[3 * pairs / 4], pairs);
    return 0;
}
