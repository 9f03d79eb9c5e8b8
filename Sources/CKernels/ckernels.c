// Dispatch, thread pool, drivers and the small vector operations. The kernel bodies live in
// kernels_impl.h, compiled per instruction-set level by kernels_x86.c and kernels_portable.c.
#include "cw_internal.h"
#include "include/lora_kernels.h"
#include <stdlib.h>
#include <stdatomic.h>
#include <pthread.h>
#include <sched.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

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


// ---- CPU features and dispatch -------------------------------------------------------------

static uint32_t cw_detect_features(void) {
    uint32_t f = 0;
#if defined(__x86_64__) || defined(_M_X64)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 0x6) != 0x6) return 0; // OS does not save YMM state
    if ((c >> 12) & 1) f |= CW_CPU_FMA;
    if ((c >> 29) & 1) f |= CW_CPU_F16C;
    unsigned maxleaf = __get_cpuid_max(0, NULL);
    if (maxleaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if ((b >> 5) & 1) f |= CW_CPU_AVX2;
        if ((xlo & 0xE0) == 0xE0) { // OS saves ZMM/opmask state
            if ((b >> 16) & 1) f |= CW_CPU_AVX512F;
            if ((b >> 17) & 1) f |= CW_CPU_AVX512DQ;
            if ((b >> 30) & 1) f |= CW_CPU_AVX512BW;
            if ((b >> 31) & 1) f |= CW_CPU_AVX512VL;
            if ((c >> 11) & 1) f |= CW_CPU_AVX512VNNI;
            __cpuid_count(7, 1, a, b, c, d);
            if ((a >> 5) & 1) f |= CW_CPU_AVX512BF16;
        }
    }
#elif defined(__aarch64__)
    f |= CW_CPU_NEON;
#if defined(__ARM_FEATURE_DOTPROD)
    f |= CW_CPU_DOTPROD;
#endif
#endif
    return f;
}

static _Atomic uint32_t cw_features_cache = 0xFFFFFFFFu;

uint32_t cw_cpu_features(void) {
    uint32_t f = atomic_load_explicit(&cw_features_cache, memory_order_relaxed);
    if (f == 0xFFFFFFFFu) {
        f = cw_detect_features();
        atomic_store_explicit(&cw_features_cache, f, memory_order_relaxed);
    }
    return f;
}

int cw_path_supported(int path) {
    const uint32_t f = cw_cpu_features();
    switch (path) {
    case CW_PATH_PORTABLE: return 1;
#if defined(__x86_64__) || defined(_M_X64)
    case CW_PATH_AVX2: {
        const uint32_t need = CW_CPU_AVX2 | CW_CPU_FMA | CW_CPU_F16C;
        return (f & need) == need;
    }
    case CW_PATH_AVX512: {
        const uint32_t need = CW_CPU_AVX2 | CW_CPU_FMA | CW_CPU_F16C | CW_CPU_AVX512F | CW_CPU_AVX512BW |
                              CW_CPU_AVX512VL | CW_CPU_AVX512DQ | CW_CPU_AVX512VNNI;
        return (f & need) == need;
    }
#endif
    default: return 0;
    }
}

const char *cw_path_name(int path) {
    switch (path) {
    case CW_PATH_PORTABLE: return "portable";
    case CW_PATH_AVX2: return "avx2";
    case CW_PATH_AVX512: return "avx512";
    default: return "unknown";
    }
}

static _Atomic int cw_path_current = -1;

int cw_kernel_path(void) {
    int p = atomic_load_explicit(&cw_path_current, memory_order_acquire);
    if (p >= 0) return p;
    p = CW_PATH_PORTABLE;
    if (cw_path_supported(CW_PATH_AVX512)) p = CW_PATH_AVX512;
    else if (cw_path_supported(CW_PATH_AVX2)) p = CW_PATH_AVX2;
    const char *env = getenv("CHUNKWISE_KERNELS");
    if (env) {
        for (int q = CW_PATH_PORTABLE; q <= CW_PATH_AVX512; q++)
            if (strcmp(env, cw_path_name(q)) == 0 && cw_path_supported(q)) p = q;
    }
    int expected = -1;
    atomic_compare_exchange_strong(&cw_path_current, &expected, p);
    return atomic_load_explicit(&cw_path_current, memory_order_acquire);
}

int cw_set_kernel_path(int path) {
    if (!cw_path_supported(path)) return -1;
    atomic_store_explicit(&cw_path_current, path, memory_order_release);
    return 0;
}

static const cw_ops *cw_ops_current(void) {
    switch (cw_kernel_path()) {
#if defined(__x86_64__) || defined(_M_X64)
    case CW_PATH_AVX2: return &cw_ops_avx2;
    case CW_PATH_AVX512: return &cw_ops_avx512;
#endif
    default: return &cw_ops_portable;
    }
}

// ---- Per-thread scratch --------------------------------------------------------------------

typedef struct { void *p[CW_TLS_SLOTS]; size_t cap[CW_TLS_SLOTS]; } cw_tls_t;
static pthread_key_t cw_tls_key;
static pthread_once_t cw_tls_once = PTHREAD_ONCE_INIT;
static void cw_tls_free(void *v) {
    cw_tls_t *t = (cw_tls_t *)v;
    for (int i = 0; i < CW_TLS_SLOTS; i++) free(t->p[i]);
    free(t);
}
static void cw_tls_init(void) { pthread_key_create(&cw_tls_key, cw_tls_free); }

void *cw_tls_scratch(int slot, size_t bytes) {
    pthread_once(&cw_tls_once, cw_tls_init);
    cw_tls_t *t = (cw_tls_t *)pthread_getspecific(cw_tls_key);
    if (!t) {
        t = (cw_tls_t *)calloc(1, sizeof *t);
        if (!t) return NULL;
        pthread_setspecific(cw_tls_key, t);
    }
    if (bytes > t->cap[slot]) {
        free(t->p[slot]);
        size_t cap = (bytes + 4095) & ~(size_t)4095;
        t->p[slot] = aligned_alloc(64, cap);
        t->cap[slot] = t->p[slot] ? cap : 0;
    }
    return t->p[slot];
}

// ---- Thread pool ---------------------------------------------------------------------------

static inline void cw_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

struct cw_pool {
    int n; // threads including the caller
    pthread_t *th;
    pthread_mutex_t run_lock; // one job at a time
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t gen;
    _Atomic int sleepers;
    _Atomic int pending;
    _Atomic int quit;
    // the current job
    cw_range_fn fn;
    void *ctx;
    int64_t count, g, units;
    int parts;
    _Atomic int next; // the next part to take
    _Atomic int rest; // set by cw_pool_rest: the waiting workers sleep at once instead of spinning
};

static _Thread_local int cw_in_job = 0;
enum { CW_SPIN = 1 << 14 }; // pause iterations (~0.5 ms) before a worker sleeps

// A job is cut into up to CW_PARTS_PER_THREAD parts per thread, which the threads take in turn
// until none is left: a thread that is descheduled for a while (a 2-core machine also runs the
// server's other threads) holds up only the part it has, and one that wakes late finds the others
// done. Tasks compute each index the same way whatever range it falls in, so results do not
// depend on who took what.
enum { CW_PARTS_PER_THREAD = 8 };

// Part i of `parts` starts at unit units·(1 − (1 − i/parts)²) ("guided"): sizes fall linearly from
// ~2/parts of the job to ~1/parts² at its end, so the threads finish within a small part of each
// other (equal parts left them up to one part apart: 2–5.5% of an 8-token product on two threads,
// Benchmarks/quick/ab_matmul.c). A job of fewer than 2·parts units keeps equal parts (guided ones
// would put two units in one part and leave the last parts empty). Boundaries depend only on
// (units, parts, i): results do not move.
static int64_t cw_part_start(int64_t units, int parts, int i) {
    if (units < 2 * (int64_t)parts) return units * i / parts;
    const int64_t r = parts - i;
    return units - (int64_t)((double)units * (double)(r * r) / ((double)parts * (double)parts));
}

static void cw_pool_work(cw_pool *p) {
    for (;;) {
        const int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->parts) return;
        const int64_t s = cw_part_start(p->units, p->parts, i) * p->g;
        int64_t e = cw_part_start(p->units, p->parts, i + 1) * p->g;
        if (e > p->count) e = p->count;
        if (s < e) p->fn(p->ctx, s, e);
    }
}

typedef struct { cw_pool *p; } cw_worker_arg;

static void *cw_worker(void *arg) {
    cw_worker_arg wa = *(cw_worker_arg *)arg;
    free(arg);
    cw_pool *p = wa.p;
    cw_in_job = 1;
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int spin = 0; g == seen && spin < CW_SPIN; spin++) {
            if (atomic_load_explicit(&p->quit, memory_order_relaxed)) return NULL;
            if (atomic_load_explicit(&p->rest, memory_order_relaxed)) break;
            // Yield now and then: on an oversubscribed machine the thread we wait for may need this core.
            if ((spin & 63) == 63) sched_yield();
            else cw_cpu_relax();
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = g;
        cw_pool_work(p);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

cw_pool *cw_pool_create(int threads) {
    if (threads < 1) threads = 1;
    cw_pool *p = (cw_pool *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = threads;
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (threads > 1) {
        p->th = (pthread_t *)calloc((size_t)threads - 1, sizeof(pthread_t));
        int started = 0;
        for (int i = 1; p->th && i < threads; i++) {
            cw_worker_arg *wa = (cw_worker_arg *)malloc(sizeof *wa);
            if (!wa) break;
            wa->p = p;
            if (pthread_create(&p->th[i - 1], NULL, cw_worker, wa) != 0) { free(wa); break; }
            started++;
        }
        p->n = started + 1;
    }
    return p;
}

void cw_pool_destroy(cw_pool *p) {
    if (!p) return;
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++) pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_mutex_destroy(&p->run_lock);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int cw_pool_threads(const cw_pool *p) { return p ? p->n : 1; }

// (A worker that already sleeps stays asleep; one spinning sees the flag within a pause and
// sleeps; the next job clears it before it is published, so no worker misses that job.)
void cw_pool_rest(cw_pool *p) {
    if (p) atomic_store_explicit(&p->rest, 1, memory_order_relaxed);
}

// cw_pool_parallel_for, with `first(first_ctx)` run on the calling thread once the job is published
// and before that thread takes a part (or, when the job runs on the calling thread alone, before it).
static void cw_pool_run(cw_pool *p, int64_t count, int64_t granularity, cw_range_fn fn, void *ctx,
                        void (*first)(void *), void *first_ctx) {
    if (count <= 0) return;
    const int64_t g = granularity < 1 ? 1 : granularity;
    const int64_t units = (count + g - 1) / g;
    if (!p || p->n <= 1 || units <= 1 || cw_in_job || pthread_mutex_trylock(&p->run_lock) != 0) {
        if (first) first(first_ctx);
        fn(ctx, 0, count);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->count = count;
    p->g = g;
    p->units = units;
    p->parts = (int)(units < (int64_t)p->n * CW_PARTS_PER_THREAD ? units : (int64_t)p->n * CW_PARTS_PER_THREAD);
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->rest, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); // seq_cst: publishes the job, ordered before the sleepers check
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    cw_in_job = 1;
    if (first) first(first_ctx);
    cw_pool_work(p);
    cw_in_job = 0;
    for (long spin = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spin++) {
        if (spin < CW_SPIN && (spin & 63) != 63) cw_cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&p->run_lock);
}

void cw_pool_parallel_for(cw_pool *p, int64_t count, int64_t granularity, cw_range_fn fn, void *ctx) {
    cw_pool_run(p, count, granularity, fn, ctx, NULL, NULL);
}

// ---- Drivers -------------------------------------------------------------------------------

int cw_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const int be = cw_block_elems(type);
    if (!be || n < 0 || n % be) return -1;
    cw_ops_current()->dequant(type, (const uint8_t *)src, dst, n);
    return 0;
}

float cw_dot_f32(const float *a, const float *b, int64_t n) { return cw_ops_current()->dot(a, b, n); }

// Fast mode: 1–3 tokens take the per-pair integer kernel (every quantized type); 4 or more
// tokens of the 32-element block types take the batched integer kernel on x86 (decode steps of
// several sequences and prefill: ~1.5× the fp32 GEMM's speed at every size measured, 8 to 128
// tokens); K-quants with 4+ tokens, and everything with 4+ tokens on the portable level, run the
// fp32 GEMM.
// Activations are quantized on the calling thread below CW_QUANT_PARALLEL_TOKENS tokens (a pool
// job costs more than quantizing a batched decode step's few rows).
enum { CW_FAST_MAX_TOKENS = 4, CW_TILED_MIN_TOKENS = 4, CW_QUANT_PARALLEL_TOKENS = 32 };
#define CW_TILED_MAX_TOKENS INT64_MAX

int cw_matmul_uniform_min_tokens(void) { return CW_FAST_MAX_TOKENS > CW_TILED_MIN_TOKENS ? CW_FAST_MAX_TOKENS : CW_TILED_MIN_TOKENS; }

// The batched kernel's token limit (none by default); CHUNKWISE_TILED_MAX=N sets one (0 turns
// the batched kernel off), for measurements.
static int64_t cw_tiled_max(void) {
    static _Atomic int64_t cached = -1;
    int64_t v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("CHUNKWISE_TILED_MAX");
        v = e ? atoll(e) : CW_TILED_MAX_TOKENS;
        if (v < 0) v = 0;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
}

static int cw_tiled_type(int type) {
    return type == CW_TYPE_Q4_0 || type == CW_TYPE_Q4_1 || type == CW_TYPE_Q5_0 || type == CW_TYPE_Q5_1 ||
           type == CW_TYPE_Q8_0;
}

typedef struct { const cw_ops *ops; cw_mm *a; } cw_mm_ctx;

#if defined(__x86_64__)
#include <immintrin.h>
// Single-token F16 matvec: decode is memory-bound, so stream each row once, converting 16 halves
// per instruction (F16C) straight into FMAs — no tile buffer, no token blocking. fp32 accurate.
__attribute__((target("avx512f,avx512vl,f16c,fma")))
static void cw_f16_mv_avx512(void *c, int64_t r0, int64_t r1) {
    const cw_mm *a = ((cw_mm_ctx *)c)->a;
    const int64_t n = a->cols;
    const float *x = a->x;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *w = (const uint16_t *)(a->w + r * a->row_bytes);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i))), _mm512_loadu_ps(x + i), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 16))), _mm512_loadu_ps(x + i + 16), acc1);
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        for (; i < n; i++) s += cw_fp16_to_fp32(w[i]) * x[i];
        a->y[r] = s;
    }
}

__attribute__((target("avx2,f16c,fma")))
static void cw_f16_mv_avx2(void *c, int64_t r0, int64_t r1) {
    const cw_mm *a = ((cw_mm_ctx *)c)->a;
    const int64_t n = a->cols;
    const float *x = a->x;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *w = (const uint16_t *)(a->w + r * a->row_bytes);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))), _mm256_loadu_ps(x + i), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8))), _mm256_loadu_ps(x + i + 8), acc1);
        }
        __m256 t = _mm256_add_ps(acc0, acc1);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float s = _mm_cvtss_f32(h);
        for (; i < n; i++) s += cw_fp16_to_fp32(w[i]) * x[i];
        a->y[r] = s;
    }
}
#endif
// Scratch for the quantized activations of a fast-mode product (per thread, reused): the tiled
// kernel's block-major layout (with the last group's unused lanes zeroed) or one row per token.
static int cw_fast_prepare(const cw_ops *ops, cw_mm *a, int tiled) {
    const int be = cw_block_elems(a->type);
    const int64_t nb = a->cols / be, tokens = a->tokens;
    if (tiled) {
        const int64_t groups = (tokens + 7) / 8;
        const int64_t tqb = ops->tq_block;
        const int64_t qbytes = groups * nb * tqb * (int64_t)sizeof(int16_t), nsc = groups * nb * 8;
        uint8_t *buf = (uint8_t *)cw_tls_scratch(CW_TLS_XQ, (size_t)(qbytes + 2 * nsc * (int64_t)sizeof(float)));
        if (!buf) return -1;
        a->tq = (int16_t *)buf;
        a->td = (float *)(buf + qbytes);
        a->tsd = a->td + nsc;
        if (tokens % 8) {
            const int64_t g = groups - 1;
            memset(a->tq + g * nb * tqb, 0, (size_t)(nb * tqb) * sizeof(int16_t));
            memset(a->td + g * nb * 8, 0, (size_t)(nb * 8) * sizeof(float));
            memset(a->tsd + g * nb * 8, 0, (size_t)(nb * 8) * sizeof(float));
        }
        return 0;
    }
    a->xq_row_bytes = be == 256 ? nb * (int64_t)sizeof(cw_q16k) : nb * (int64_t)sizeof(cw_q16b);
    a->xq = (uint8_t *)cw_tls_scratch(CW_TLS_XQ, (size_t)(tokens * a->xq_row_bytes));
    return a->xq ? 0 : -1;
}

static void cw_mm_exact_task(void *c, int64_t s, int64_t e) { cw_mm_ctx *m = (cw_mm_ctx *)c; m->ops->exact_rows(m->a, s, e); }
static void cw_mm_fast_task(void *c, int64_t s, int64_t e) { cw_mm_ctx *m = (cw_mm_ctx *)c; m->ops->fast_rows(m->a, s, e); }
static void cw_mm_quant_task(void *c, int64_t s, int64_t e) { cw_mm_ctx *m = (cw_mm_ctx *)c; m->ops->quantize(m->a, s, e); }
static void cw_mm_tiled_task(void *c, int64_t s, int64_t e) { cw_mm_ctx *m = (cw_mm_ctx *)c; m->ops->tiled_rows(m->a, s, e); }
static void cw_mm_tquant_task(void *c, int64_t s, int64_t e) { cw_mm_ctx *m = (cw_mm_ctx *)c; m->ops->quantize_tiled(m->a, s, e); }

// Prepares the scratch and quantizes a product's activations into the layout of the kernel that
// runs (tiled or one row per token): on the calling thread below CW_QUANT_PARALLEL_TOKENS tokens,
// otherwise over the pool (the tiled layout in steps of 8 tokens, one group per writer).
static int cw_fast_quantize(cw_mm_ctx *c, int tiled, cw_pool *pool) {
    if (cw_fast_prepare(c->ops, c->a, tiled) != 0) return -1;
    const int64_t tokens = c->a->tokens;
    if (tokens >= CW_QUANT_PARALLEL_TOKENS) cw_pool_parallel_for(pool, tokens, tiled ? 8 : 1, tiled ? cw_mm_tquant_task : cw_mm_quant_task, c);
    else if (tiled) c->ops->quantize_tiled(c->a, 0, tokens);
    else c->ops->quantize(c->a, 0, tokens);
    return 0;
}

int cw_matmul(int type, const void *w, int64_t rows, int64_t cols, int64_t row_bytes,
              const float *x, int64_t tokens, float *y, int precision, cw_pool *pool) {
    const int be = cw_block_elems(type);
    if (!be || rows <= 0 || cols <= 0 || cols % be || tokens < 0) return -1;
    if (row_bytes < cols / be * cw_block_bytes(type)) return -1;
    if (tokens == 0) return 0;
    cw_mm a = {.type = type, .w = (const uint8_t *)w, .rows = rows, .cols = cols, .row_bytes = row_bytes,
               .x = x, .tokens = tokens, .y = y, .xq = NULL, .xq_row_bytes = 0, .tq = NULL, .td = NULL, .tsd = NULL};
    cw_mm_ctx c = {cw_ops_current(), &a};
    // Fast mode takes the integer path for decode and small batches; for prefill-sized batches
    // the fp32 GEMM (dequantize a tile once, register-blocked FMAs) is faster than per-pair
    // integer dots here, and exact, so it serves both precisions.
#if defined(__x86_64__)
    if (type == CW_TYPE_F16 && tokens == 1 && cw_kernel_path() != CW_PATH_PORTABLE) {
        cw_pool_parallel_for(pool, rows, 16, cw_kernel_path() == CW_PATH_AVX512 ? cw_f16_mv_avx512 : cw_f16_mv_avx2, &c);
        return 0;
    }
#endif
    if (precision == CW_PRECISION_FAST && cw_tiled_type(type) && tokens >= CW_TILED_MIN_TOKENS &&
        tokens <= cw_tiled_max() && c.ops->tiled_rows) {
        if (cw_fast_quantize(&c, 1, pool) != 0) return -1;
        cw_pool_parallel_for(pool, rows, 16, cw_mm_tiled_task, &c);
    } else if (precision == CW_PRECISION_FAST && be > 1 && tokens < CW_FAST_MAX_TOKENS) {
        if (cw_fast_quantize(&c, 0, pool) != 0) return -1;
        cw_pool_parallel_for(pool, rows, 16, cw_mm_fast_task, &c);
    } else {
        cw_pool_parallel_for(pool, rows, 16, cw_mm_exact_task, &c);
    }
    return 0;
}

// ---- Several matrices, one activation ----------------------------------------------------

enum { CW_MANY_MAX = 8, CW_PF_MAX = 256 };

typedef struct {
    const cw_ops *ops;
    cw_mm mm[CW_MANY_MAX];
    int64_t start[CW_MANY_MAX + 1]; // first concatenated row of each matrix
    int count, tiled;
    int64_t pf_cum[CW_PF_MAX + 1];
    const cw_side *side;
    int64_t side_idx;  // side tasks take the first side->count units (CW_MANY_GRAIN indices each)
    // Activations quantized inside the job (`cw_many_quantize`, by the calling thread) while the
    // other threads start on the side tasks; rows wait for `quantized`.
    int deferred;
    _Atomic int quantized;
} cw_many_ctx;

enum { CW_MANY_GRAIN = 16 };

static void cw_many_task(void *c, int64_t s, int64_t e) {
    cw_many_ctx *m = (cw_many_ctx *)c;
    if (m->side_idx > 0) {
        for (int64_t i = s; i < e && i < m->side_idx; i += CW_MANY_GRAIN) m->side->fn(m->side->ctx, i / CW_MANY_GRAIN);
        s = s > m->side_idx ? s - m->side_idx : 0;
        e -= m->side_idx;
        if (e <= s) return;
    }
    for (long spin = 0; m->deferred && !atomic_load_explicit(&m->quantized, memory_order_acquire); spin++) {
        if ((spin & 63) == 63) sched_yield();
        else cw_cpu_relax();
    }
    for (int i = 0; i < m->count; i++) {
        const int64_t lo = s > m->start[i] ? s : m->start[i], hi = e < m->start[i + 1] ? e : m->start[i + 1];
        if (lo >= hi) continue;
        if (m->tiled) m->ops->tiled_rows(&m->mm[i], lo - m->start[i], hi - m->start[i]);  // (calls `after` itself)
        else {
            m->ops->fast_rows(&m->mm[i], lo - m->start[i], hi - m->start[i]);
            if (m->mm[i].after) m->mm[i].after->after(m->mm[i].after->ctx, i, lo - m->start[i], hi - m->start[i], 0, m->mm[i].tokens);
        }
    }
}

int cw_matmul_many(const cw_mat *mats, int count, int64_t cols, const float *x, int64_t tokens, int precision,
                   cw_pool *pool) {
    return cw_matmul_many_side(mats, count, cols, x, tokens, precision, NULL, 0, NULL, pool);
}

static void cw_many_quantize(void *c) {
    cw_many_ctx *m = (cw_many_ctx *)c;
    if (m->tiled) m->ops->quantize_tiled(&m->mm[0], 0, m->mm[0].tokens);
    else m->ops->quantize(&m->mm[0], 0, m->mm[0].tokens);
    atomic_store_explicit(&m->quantized, 1, memory_order_release);
}

static void cw_side_task(void *c, int64_t s, int64_t e) {
    const cw_side *side = (const cw_side *)c;
    for (int64_t i = s; i < e; i++) side->fn(side->ctx, i);
}

int cw_matmul_many_side(const cw_mat *mats, int count, int64_t cols, const float *x, int64_t tokens, int precision,
                        const cw_span *spans, int nspans, const cw_side *side, cw_pool *pool) {
    const int tasks = side && side->count > 0 && side->fn;  // side tasks to run (`after` may come alone)
    if (!tasks && !(side && side->after)) side = NULL;
    if (count <= 0 || tokens < 0) {
        if (count == 0 && tasks) cw_pool_parallel_for(pool, side->count, 1, cw_side_task, (void *)side);
        return count == 0 ? 0 : -1;
    }
    int shared = count <= CW_MANY_MAX && precision == CW_PRECISION_FAST && tokens > 0;
    int tiled = 1, be0 = cw_block_elems(mats[0].type);
    for (int i = 0; i < count && shared; i++) {
        const int be = cw_block_elems(mats[i].type);
        if (be != be0 || be <= 1 || mats[i].rows <= 0 || cols <= 0 || cols % be ||
            mats[i].row_bytes < cols / be * cw_block_bytes(mats[i].type))
            shared = 0;
        if (!cw_tiled_type(mats[i].type)) tiled = 0;
    }
    tiled = tiled && tokens >= CW_TILED_MIN_TOKENS && tokens <= cw_tiled_max() && cw_ops_current()->tiled_rows;
    if (shared && !tiled && tokens >= CW_FAST_MAX_TOKENS) shared = 0;
    if (!shared) {
        if (tasks) cw_pool_parallel_for(pool, side->count, 1, cw_side_task, (void *)side);
        for (int i = 0; i < count; i++) {
            const int rc = cw_matmul(mats[i].type, mats[i].w, mats[i].rows, cols, mats[i].row_bytes, x, tokens, mats[i].y,
                                     precision, pool);
            if (rc) return rc;
            if (side && side->after) side->after(side->ctx, i, 0, mats[i].rows, 0, tokens);
        }
        return 0;
    }
    cw_many_ctx c;
    c.ops = cw_ops_current();
    c.count = count;
    c.tiled = tiled;
    c.start[0] = 0;
    for (int i = 0; i < count; i++) {
        c.mm[i] = (cw_mm){.type = mats[i].type, .w = (const uint8_t *)mats[i].w, .rows = mats[i].rows, .cols = cols,
                          .row_bytes = mats[i].row_bytes, .x = x, .tokens = tokens, .y = mats[i].y,
                          .after = side && side->after ? side : NULL, .after_m = i};
        c.start[i + 1] = c.start[i] + mats[i].rows;
    }
    if (tiled && spans && nspans > 0) {
        if (nspans > CW_PF_MAX) nspans = CW_PF_MAX;
        c.pf_cum[0] = 0;
        for (int k = 0; k < nspans; k++) {
            const uintptr_t lo = (uintptr_t)spans[k].p & ~(uintptr_t)63;
            const int64_t lines = spans[k].p && spans[k].bytes > 0
                                      ? (int64_t)(((uintptr_t)spans[k].p + (uintptr_t)spans[k].bytes - lo + 63) / 64) : 0;
            c.pf_cum[k + 1] = c.pf_cum[k] + lines;
        }
        for (int i = 0; i < count; i++) {
            c.mm[i].pf = spans;
            c.mm[i].pf_cum = c.pf_cum;
            c.mm[i].npf = nspans;
            c.mm[i].pf_row0 = c.start[i];
            c.mm[i].pf_rows = c.start[count];
        }
    }
    // Quantize once, into the layout of the kernel that runs, for the first matrix; share it. A
    // small call with side tasks (a decode step's LoRA products) quantizes inside its pool job, on
    // the calling thread, while the other threads take the side tasks (which read x, not its
    // quants): a serial step less before every product of a decode step.
    cw_mm *a = &c.mm[0];
    cw_mm_ctx qc = {c.ops, a};
    c.deferred = tasks && tokens < CW_QUANT_PARALLEL_TOKENS;
    atomic_init(&c.quantized, 0);
    if (c.deferred ? cw_fast_prepare(c.ops, a, tiled) : cw_fast_quantize(&qc, tiled, pool)) return -1;
    for (int i = 1; i < count; i++) {
        c.mm[i].xq = a->xq; c.mm[i].xq_row_bytes = a->xq_row_bytes;
        c.mm[i].tq = a->tq; c.mm[i].td = a->td; c.mm[i].tsd = a->tsd;
    }
    c.side = side;
    c.side_idx = tasks ? side->count * CW_MANY_GRAIN : 0;
    cw_pool_run(pool, c.side_idx + c.start[count], CW_MANY_GRAIN, cw_many_task, &c, c.deferred ? cw_many_quantize : NULL, &c);
    return 0;
}

void cw_prefetch(const void *p, int64_t bytes) {
    if (!p || bytes <= 0) return;
    const uintptr_t lo = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + (uintptr_t)bytes;
    for (uintptr_t a = lo; a < end; a += 64) __builtin_prefetch((const void *)a, 0, 3);
}

typedef struct {
    const cw_mat *mats;
    const cw_lowrank_term *terms;
    int nterms;
} cw_terms_ctx;

static void cw_terms_after(void *c, int m, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
    const cw_terms_ctx *tc = (const cw_terms_ctx *)c;
    const int64_t out = tc->mats[m].rows;
    for (int i = 0; i < tc->nterms; i++) {
        const cw_lowrank_term *t = &tc->terms[i];
        if (t->mat != m) continue;
        (void)cw_lora_up_range(t->type, t->bt, t->ldb, t->k, out, t->u + t0 * t->k, t->k, t1 - t0,
                               tc->mats[m].y + t0 * out, out, NULL, r0, r1);
    }
}

int cw_matmul_many_terms(const cw_mat *mats, int count, int64_t cols, const float *x, int64_t tokens, int precision,
                         const cw_lowrank_term *terms, int nterms, const cw_span *spans, int nspans, cw_pool *pool) {
    if (nterms < 0 || (nterms > 0 && !terms) || count <= 0 || !mats) return -1;
    for (int i = 0; i < nterms; i++) {
        const cw_lowrank_term *t = &terms[i];
        if (t->mat < 0 || t->mat >= count || t->k < 0 || (t->k > 0 && (!t->bt || !t->u)) || t->ldb < mats[t->mat].rows) return -1;
    }
    for (int i = 0; i < nterms; i++) cw_prefetch(terms[i].bt, terms[i].k * cw_lora_row_bytes(terms[i].type, terms[i].ldb));
    for (int i = 0; spans && i < nspans; i++) cw_prefetch(spans[i].p, spans[i].bytes);
    if (nterms == 0) return cw_matmul_many(mats, count, cols, x, tokens, precision, pool);
    cw_terms_ctx tc = {mats, terms, nterms};
    const cw_side side = {.fn = NULL, .ctx = &tc, .count = 0, .after = cw_terms_after};
    return cw_matmul_many_side(mats, count, cols, x, tokens, precision, NULL, 0, &side, pool);
}

typedef struct { const cw_ops *ops; cw_attn *a; } cw_attn_ctx;
static void cw_attn_task(void *c, int64_t s, int64_t e) { cw_attn_ctx *m = (cw_attn_ctx *)c; m->ops->attn(m->a, s, e); }

void cw_attention(const float *q, const float *k, const float *v, float *out, int64_t tokens,
                  int64_t start_pos, int heads, int kv_heads, int head_dim, int64_t kv_stride,
                  float scale, cw_pool *pool) {
    if (tokens <= 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0 || heads % kv_heads) return;
    cw_attn a = {.q = q, .k = k, .v = v, .out = out, .tokens = tokens, .start_pos = start_pos,
                 .kv_stride = kv_stride, .heads = heads, .kv_heads = kv_heads, .head_dim = head_dim, .scale = scale};
    cw_attn_ctx c = {cw_ops_current(), &a};
    cw_pool_parallel_for(pool, tokens * heads, 1, cw_attn_task, &c);
}

// ---- Vector operations ---------------------------------------------------------------------

// The sum of squares runs in eight interleaved double partial sums: one sequential chain of
// double adds (~4 cycles each) made this ~0.6 µs per 576-wide token, a serial step between the
// pool jobs of a batched decode step. Each square is exact in double (24-bit mantissas), so
// only the order of the additions differs from one chain — a relative difference below 2⁻⁴⁴ in
// the sum, far below the float rounding of the scale.
void cw_rms_norm(const float *x, const float *weight, float *out, int64_t n, float eps) {
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) part[l] += (double)x[i + l] * (double)x[i + l];
    double ss = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    for (; i < n; i++) ss += (double)x[i] * (double)x[i];
    const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

void cw_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    const float inv = (float)(1.0 / cw_exp_weights(x, n, cw_max_f32(x, n), 1.0f, x));
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void cw_silu_mul(float *gate, const float *up, int64_t n) { cw_ops_current()->silu_mul(gate, up, n); }

void cw_rope(float *x, int64_t tokens, int heads, int head_dim, const float *cos, const float *sin, int interleaved) {
#pragma clang fp contract(off)
    const int half = head_dim / 2;
    for (int64_t t = 0; t < tokens; t++) {
        const float *restrict c = cos + t * half, *restrict s = sin + t * half;
        for (int h = 0; h < heads; h++) {
            float *restrict v = x + (t * heads + h) * (int64_t)head_dim;
            if (interleaved) {
                for (int i = 0; i < half; i++) {
                    const float a = v[2 * i], b = v[2 * i + 1];
                    v[2 * i] = a * c[i] - b * s[i];
                    v[2 * i + 1] = a * s[i] + b * c[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    const float a = v[i], b = v[i + half];
                    v[i] = a * c[i] - b * s[i];
                    v[i + half] = a * s[i] + b * c[i];
                }
            }
        }
    }
}

double cw_exp_weights(const float *x, int64_t n, float shift, float div, float *w) {
    return n > 0 ? cw_ops_current()->exp_weights(x, n, shift, div, w) : 0;
}

float cw_expf(float x) {
    float y;
    cw_ops_current()->exp_weights(&x, 1, 0.0f, 1.0f, &y);
    return y;
}

double cw_attention_entropy(const float *q, const float *keys, int64_t kv_stride, int64_t nk, int heads, int kv_heads,
                            int head_dim, float scale, float *scores) {
    if (nk < 2 || heads < 1 || kv_heads < 1 || head_dim < 1) return 0;
    const cw_ops *ops = cw_ops_current();
    const int group = heads / kv_heads > 0 ? heads / kv_heads : 1;
    double sum = 0;
    // Per KV head, the scores of its group's query heads in one pass over the keys (each key row
    // read once for all of them; the same bits as one head at a time), then their entropies in
    // head order.
    for (int h0 = 0; h0 < heads; h0 += group) {
        const int g = heads - h0 < group ? heads - h0 : group;
        ops->dots_group(g, q + (int64_t)h0 * head_dim, head_dim, keys + (int64_t)(h0 / group) * head_dim, kv_stride, nk, head_dim,
                        scale, scores);
        for (int i = 0; i < g; i++) {
            const double e = cw_normalized_entropy(scores + (int64_t)i * nk, nk);
            sum += e < 0 ? 0 : e;
        }
    }
    return sum / heads;
}

double cw_normalized_entropy(const float *x, int64_t n) {
    if (n < 2 || !x) return -1;
    const float m = cw_max_f32(x, n);
    if (!isfinite(m)) return -1;
    double z, ez;
    cw_ops_current()->entropy_sums(x, n, m, &z, &ez);
    if (!isfinite(z) || !isfinite(ez) || !(z > 0)) return -1; // a NaN logit propagates here
    const double h = (log(z) - ez / z) / log((double)n);
    return h < 0 ? 0 : h > 1 ? 1 : h;
}

float cw_max_f32(const float *x, int64_t n) {
    typedef float v8 __attribute__((ext_vector_type(8)));
    v8 m = -INFINITY;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 v;
        memcpy(&v, x + i, sizeof v);
        m = __builtin_elementwise_max(m, v);
    }
    float r = __builtin_reduce_max(m);
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

int64_t cw_cumulative_index(const float *w, int64_t n, double r) {
    double acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += w[i];
        if (r < acc) return i;
    }
    return n - 1;
}

void cw_add(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

// ---- Bandwidth probe -----------------------------------------------------------------------

typedef struct { const float *a; double *part; int64_t n, chunk; } cw_probe_ctx;
static void cw_probe_task(void *c, int64_t s, int64_t e) {
    cw_probe_ctx *p = (cw_probe_ctx *)c;
    const cw_ops *ops = cw_ops_current();
    double acc = 0;
    for (int64_t i = s; i < e; i++) {
        const int64_t lo = i * p->chunk, hi = lo + p->chunk < p->n ? lo + p->chunk : p->n;
        acc += ops->sum(p->a + lo, hi - lo);
    }
    p->part[s] = acc;
}

double cw_read_probe(const float *a, int64_t n, cw_pool *pool) {
    enum { CHUNK = 1 << 16 };
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
    double *part = (double *)calloc((size_t)chunks, sizeof(double));
    if (!part) return 0;
    cw_probe_ctx c = {a, part, n, CHUNK};
    cw_pool_parallel_for(pool, chunks, 1, cw_probe_task, &c);
    double s = 0;
    for (int64_t i = 0; i < chunks; i++) s += part[i];
    free(part);
    return s;
}
