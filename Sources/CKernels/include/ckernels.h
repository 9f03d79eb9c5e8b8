// CKernels — the numeric core of ChunkWise, in C.
//
// Why C and not Swift: the hot loops need integer dot-product instructions (AVX2 vpmaddwd,
// AVX-512 VNNI, NEON sdot) selected at run time for the CPU at hand, so that one binary runs
// fast on a Zen 4 and correctly on any x86-64 or arm64. Swift's SIMD types cannot express these
// instructions, and Swift has no per-function target attributes; C (clang) has both.
// Every entry point has a portable scalar path; fast paths are chosen once by cw_cpu_features().
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// GGML tensor type ids (as stored in GGUF files).
enum cw_type {
    CW_TYPE_F32 = 0,
    CW_TYPE_F16 = 1,
    CW_TYPE_Q4_0 = 2,
    CW_TYPE_Q4_1 = 3,
    CW_TYPE_Q5_0 = 6,
    CW_TYPE_Q5_1 = 7,
    CW_TYPE_Q8_0 = 8,
    CW_TYPE_Q8_1 = 9,
    CW_TYPE_Q4_K = 12,
    CW_TYPE_Q5_K = 13,
    CW_TYPE_Q6_K = 14,
    CW_TYPE_Q8_K = 15,
    CW_TYPE_BF16 = 30,
};

float cw_fp16_to_fp32(uint16_t h);
uint16_t cw_fp32_to_fp16(float f);
float cw_bf16_to_fp32(uint16_t h);

/// Dequantizes `n` consecutive elements (a multiple of the type's block size) starting at `src`.
/// Returns 0 on success, -1 for an unsupported type.
int cw_dequantize_row(int type, const void *src, float *dst, int64_t n);

/// Merges `delta` (n floats) into one row of `type` without changing its encoding, writing the
/// row to `dst` (may equal `src`). Quantized blocks (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) keep their
/// scale and min; each index moves by floor(delta/step + u), u uniform in [0,1) drawn from a hash
/// of (seed, row, column) — an unbiased rounding onto the block's own grid, clamped to the
/// index range. F32 adds exactly; F16 rounds the sum to nearest. Returns 0, -1 for a bad
/// argument, -2 for a type it cannot merge into (K-quants, BF16).
int cw_grid_merge_row(int type, const void *src, const float *delta, void *dst, int64_t n, uint64_t seed, int64_t row);

/// Dot product of two float vectors.
float cw_dot_f32(const float *a, const float *b, int64_t n);

// ---- CPU features and kernel dispatch ------------------------------------------------------

enum cw_cpu_feature {
    CW_CPU_AVX2 = 1 << 0,
    CW_CPU_FMA = 1 << 1,
    CW_CPU_F16C = 1 << 2,
    CW_CPU_AVX512F = 1 << 3,
    CW_CPU_AVX512BW = 1 << 4,
    CW_CPU_AVX512VL = 1 << 5,
    CW_CPU_AVX512VNNI = 1 << 6,
    CW_CPU_AVX512BF16 = 1 << 7,
    CW_CPU_AVX512DQ = 1 << 8,
    CW_CPU_NEON = 1 << 9,
    CW_CPU_DOTPROD = 1 << 10,
};

/// Kernel implementation levels.
enum cw_path { CW_PATH_PORTABLE = 0, CW_PATH_AVX2 = 1, CW_PATH_AVX512 = 2 };

/// Bit set of `cw_cpu_feature` found on this CPU.
uint32_t cw_cpu_features(void);
/// Whether `path` can run on this CPU.
int cw_path_supported(int path);
/// The level in use. Chosen at first use: the best the CPU supports, or the one named by the
/// environment variable CHUNKWISE_KERNELS=portable|avx2|avx512 when the CPU supports it.
int cw_kernel_path(void);
/// Forces a level (tests, benchmarks). Returns 0, or -1 when the CPU does not support it.
int cw_set_kernel_path(int path);
/// Name of a level ("portable", "avx2", "avx512").
const char *cw_path_name(int path);

// ---- Thread pool ---------------------------------------------------------------------------

/// A persistent pool: `threads - 1` workers created once, spinning briefly and then sleeping
/// between jobs; the calling thread runs the first part of every job itself.
typedef struct cw_pool cw_pool;
typedef void (*cw_range_fn)(void *ctx, int64_t start, int64_t end);

cw_pool *cw_pool_create(int threads);
void cw_pool_destroy(cw_pool *pool);
int cw_pool_threads(const cw_pool *pool);
// The pool's waiting workers go to sleep at once instead of spinning for the next job (the next
// job wakes them). For a caller that knows the pool will be idle for a while (between a server's
// steps), so that the spinning does not take a core from the threads that run meanwhile.
void cw_pool_rest(cw_pool *pool);
/// Splits 0..<count into at most `threads` contiguous ranges whose boundaries are multiples of
/// `granularity` and runs `fn` on each, returning when all are done. A call made from inside a
/// job, or while another thread is using the pool, runs serially on the calling thread.
/// `pool` may be NULL (serial).
void cw_pool_parallel_for(cw_pool *pool, int64_t count, int64_t granularity, cw_range_fn fn, void *ctx);

// ---- Kernels -------------------------------------------------------------------------------

enum cw_precision { CW_PRECISION_EXACT = 0, CW_PRECISION_FAST = 1 };

/// Precision:
///  * EXACT: weights dequantized exactly (as ggml) to fp32, fp32 FMA accumulation; error vs a
///    float64 reference ≲ 1e-6·Σ|w·x| (tests assert 1e-5); results do not depend on the thread
///    count (every output element is computed by the same instruction sequence).
///  * FAST: for the quantized types, activations are quantized to int16 (per 32 elements for
///    Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, per 256 for the K-quants; scale amax/32767, round to nearest)
///    and multiplied with integer dot products on weights widened to int16 in registers (AVX2
///    vpmaddwd, AVX512-VNNI vpdpwssd). Error ≤ Σ_blocks (amax_block/65534)·Σ_block|w| plus fp32
///    rounding. One to three tokens take a per-pair kernel (every quantized type); four or more
///    tokens of the 32-element types take the batched kernel on x86 (tokens in vector lanes, each
///    weight block unpacked once for up to 128 tokens; ~1.5× the fp32 GEMM from 8 to 128 tokens),
///    in which a token's result does not depend on the other tokens of the call
///    (CHUNKWISE_TILED_MAX=N caps its token count, 0 turns it off, for measurements). K-quants
///    with 4+ tokens, F32/F16/BF16 weights and, on the portable level, all products of 4+ tokens
///    run the exact path.
/// y[t][r] = Σ_c W[r][c]·x[t][c]. `w`: `rows` rows of `cols` elements of `type`, `row_bytes`
/// apart; `x`: tokens × cols floats; `y`: tokens × rows floats. Returns 0, or -1 for an
/// unsupported type or shape (cols not a multiple of the block size) or out of memory.
int cw_matmul(int type, const void *w, int64_t rows, int64_t cols, int64_t row_bytes,
              const float *x, int64_t tokens, float *y, int precision, cw_pool *pool);

/// The token count from which no product takes the per-pair kernel (above): from it on, a
/// token's result does not depend on how many tokens the call has (a prompt cache computes at
/// least this many of a prompt's tokens, so that they get a whole prefill's bits).
int cw_matmul_uniform_min_tokens(void);

/// One weight matrix of a `cw_matmul_many` call and where its products go (tokens × rows floats).
typedef struct {
    int type;
    const void *w;
    int64_t rows, row_bytes;
    float *y;
} cw_mat;

/// Several matrices with the same `cols` times the same activations (e.g. a layer's q, k and v
/// projections): results identical to one `cw_matmul` per matrix, but the activations are
/// quantized once and all the matrices' rows are split over the pool in one job (one
/// synchronisation instead of `count`). Returns 0, or -1 as `cw_matmul`.
int cw_matmul_many(const cw_mat *mats, int count, int64_t cols, const float *x, int64_t tokens, int precision,
                   cw_pool *pool);

/// Memory to pull into cache while a product computes (e.g. the LoRA factors applied next).
typedef struct {
    const void *p;
    int64_t bytes;
} cw_span;

/// Work run beside a product in the same pool job: `fn(ctx, i)` for `i < count`, each task whole on
/// one thread, handed out before the product's rows (so the threads that take them do fewer rows).
/// `after` (may be NULL): called with rows [r0, r1) × tokens [t0, t1) of matrix `m` as soon as the
/// thread that computed them has written them (the batched kernel: per chunk of up to 128 tokens)
/// — a prefill's LoRA up product then adds to that part of y while it is in that core's cache,
/// instead of reading and writing all of y again after the product. Calls for disjoint parts may
/// run at the same time on different threads; each part is reported once.
typedef struct {
    void (*fn)(void *ctx, int64_t i);
    void *ctx;
    int64_t count;
    void (*after)(void *ctx, int m, int64_t r0, int64_t r1, int64_t t0, int64_t t1);
} cw_side;

/// `cw_matmul_many` with two additions that change no result:
/// - `spans` (may be NULL): while the batched integer kernel runs (4+ tokens, `fast`, 32-element
///   types; ignored otherwise) they are prefetched a slice per row tile, in proportion to the rows
///   done: a compute-bound batched product leaves memory idle, and the adapter factors read right
///   after it then come from cache instead of DRAM (for one token, whose product streams the
///   weights, it made no difference measured). Up to 256 spans are used (later ones are ignored).
/// - `side` (may be NULL or have count 0): tasks in the same pool job. A decode step's LoRA products
///   (latency-bound reads of small factors) then overlap the weight stream instead of running on
///   one thread after it while the others wait. They must not touch the products' outputs. Without
///   the shared product path (exact precision, mixed widths) they run first, split over the pool,
///   then the products (and `after` once per matrix, for all its rows and tokens, on the calling
///   thread).
int cw_matmul_many_side(const cw_mat *mats, int count, int64_t cols, const float *x, int64_t tokens, int precision,
                        const cw_span *spans, int nspans, const cw_side *side, cw_pool *pool);

/// A low-rank term of a product's output: `y[t][o] += Σ_{j<k} u[t·k + j] · bt[j][o]` for target
/// `mat` (`cw_lora_up`'s arithmetic and bits, `bt` a `CW_LORA_*` factor slice of `k` rows of `ldb`
/// elements, `ldb` ≥ the target's rows). A one-token LoRA / rank-ladder delta whose down product
/// the caller has already run.
typedef struct {
    int mat;
    int type;
    const void *bt;
    int64_t ldb;
    int64_t k;
    const float *u;
} cw_lowrank_term;

/// Asks for the cache lines of `bytes` bytes at `p` (software prefetch; changes nothing else).
void cw_prefetch(const void *p, int64_t bytes);

/// `cw_matmul_many` that adds `terms` to each part of the outputs as soon as the thread that
/// computed it has written it (in the order given, per output element): no buffers, no adds
/// after the product, nothing but C inside the pool job. The same bits as the product followed
/// by `cw_lora_up` of each term in order. The terms' factor slices, and `spans` (e.g. the factors
/// the next product's delta reads first), are prefetched before the job starts: a part's epilogue
/// reads a few cache lines of each of the slice's rows, which from DRAM is a chain of misses.
/// Returns 0, or -1 as `cw_matmul_many` or for a bad term.
int cw_matmul_many_terms(const cw_mat *mats, int count, int64_t cols, const float *x, int64_t tokens, int precision,
                         const cw_lowrank_term *terms, int nterms, const cw_span *spans, int nspans, cw_pool *pool);

/// Causal grouped-query attention (see Attention.causal in CWKernels).
void cw_attention(const float *q, const float *k, const float *v, float *out, int64_t tokens,
                  int64_t start_pos, int heads, int kv_heads, int head_dim, int64_t kv_stride,
                  float scale, cw_pool *pool);

/// Reads `n` floats once (split over the pool) and returns their sum: a STREAM-like probe of
/// the machine's read bandwidth for the benchmarks (bytes = 4·n over the elapsed time).
double cw_read_probe(const float *a, int64_t n, cw_pool *pool);

void cw_rms_norm(const float *x, const float *weight, float *out, int64_t n, float eps);
void cw_softmax(float *x, int64_t n);
void cw_silu_mul(float *gate, const float *up, int64_t n);
/// Rotary position embedding in place: x holds `tokens` rows of `heads` × `head_dim`; token t's
/// angles' cosines and sines are cos/sin[t·head_dim/2 + i]. Element pairs (2i, 2i+1) when
/// `interleaved` (GGUF/llama2.c order), else (i, i + head_dim/2) (HF order):
/// a' = a·c − b·s, b' = a·s + b·c, each product rounded (no fused multiply-add, on every target).
void cw_rope(float *x, int64_t tokens, int heads, int head_dim, const float *cos, const float *sin, int interleaved);
/// w[i] = exp((x[i] - shift) / div) with the kernels' vector exp (≤ 2 ulp from libm); returns the
/// sum of w in double (a fixed order for a given n and instruction-set level).
double cw_exp_weights(const float *x, int64_t n, float shift, float div, float *w);
/// The kernels' exp of one value (for tests).
float cw_expf(float x);
/// Entropy of softmax(x) divided by log(n), in [0, 1], or -1 when n < 2 or the logits are not all
/// finite or -inf (a NaN or +inf logit, or every logit -inf). H = log Z - Σ e·d / Z over
/// d = x - max, e = exp(max(d, -87)) with the kernels' vector exp (fp32 lanes folded into
/// double every 64 vectors); within 1e-5 of a double evaluation with libm (tested).
double cw_normalized_entropy(const float *x, int64_t n);
/// The difficulty estimator's attention statistic for one query token: for each of `heads` query
/// heads (q: heads × head_dim contiguous; head h reads kv head h / (heads / kv_heads)), the scores
/// s_j = cw_dot_f32(q_h, k_j) · scale over `nk` key rows (`kv_stride` floats apart, kv heads'
/// dims contiguous within a row), then cw_normalized_entropy(s) (0 where that returns -1),
/// averaged over the heads. 0 for nk < 2. `scores`: scratch for (heads / kv_heads) × nk floats (or nk
/// when kv_heads ≥ heads).
double cw_attention_entropy(const float *q, const float *keys, int64_t kv_stride, int64_t nk, int heads, int kv_heads,
                            int head_dim, float scale, float *scores);
/// max x[i] (NaNs skipped; -inf when n is 0 or all are NaN).
float cw_max_f32(const float *x, int64_t n);
/// The first i with r < w[0] + … + w[i] (sums in double, index order); n - 1 if none.
int64_t cw_cumulative_index(const float *w, int64_t n, double r);
void cw_add(float *a, const float *b, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
