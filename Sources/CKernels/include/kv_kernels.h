// KV-cache kernels of ChunkWise: paged attention over blocks stored as fp32, fp16 or int8, and the
// conversions between those formats. Used by CWTransformer's KVCache (see KV/KVBlock.swift).
#ifndef KV_KERNELS_H
#define KV_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "ckernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Storage formats of one block's keys or values.
enum kv_format { KV_FMT_F32 = 0, KV_FMT_F16 = 1, KV_FMT_I8 = 2 };

/// One KV head's part of one block: `n` consecutive cached entries.
///  * fp32 / fp16: `n` rows of `head_dim` elements.
///  * int8 keys: `n` rows of `head_dim` int8, with `k_scale[head_dim]` per-channel scales
///    (symmetric: k ≈ q·k_scale[d]) — KIVI-style per-channel key quantization within the block.
///  * int8 values: `n` rows of `head_dim` int8, with `v_scale[n]` per-entry scales (per token,
///    per head; symmetric).
typedef struct kv_slab {
    const void *k;
    const void *v;
    const float *k_scale;
    const float *v_scale;
    int32_t k_fmt;
    int32_t v_fmt;
    int32_t n;
    int32_t reserved;
} kv_slab;

/// Causal grouped-query attention over paged KV blocks, each read in its own format (no
/// dequantized copy of the cache is made: non-fp32 rows are widened in registers).
///
/// Two kernels: an all-fp32 cache takes the one that matches `cw_attention` (below); a cache with
/// any fp16/int8 slab takes the fast one, which reads each cached row once for all query heads of
/// its group, folds the softmax scale and int8 key scales into the query and int8 value scales
/// into the probabilities, scores rows a chunk at a time with an online softmax (vectorized exp),
/// and for decode splits each query's entries across threads and merges the partial softmaxes.
/// Its results equal the all-fp32 kernel run on the widened entries to rounding (~1e-6).
///
///  * `q`, `out`: `tokens × heads·head_dim`. Query `t` sees cached entries `0 ..< base + t + 1`
///    (entries are numbered in block order; the last `tokens` entries are the queries' own).
///  * `slabs`: `blocks × kv_heads`, block-major.
///  * `mass`: NULL, or `heads × (base + tokens)` floats to which every query's softmax
///    probabilities are added (accumulated attention per entry, for heavy-hitter eviction).
///
/// Returns 0, or -1 for an unsupported shape (more than 64 query heads per KV head, no heads).
/// For all-fp32 slabs and `fast` = 0 the arithmetic per query is the same instruction sequence
/// as `cw_attention`'s on the same kernel path, so results are bit-identical to it; `fast` ≠ 0
/// sends all-fp32 slabs through the blocked kernel above too (several times faster in decode;
/// equal to rounding, ~1e-6).
int kv_attention(const float *q, float *out, int64_t tokens, int64_t base, int heads, int kv_heads,
                  int head_dim, const kv_slab *slabs, int64_t blocks, float scale, float *mass,
                  int fast, cw_pool *pool);

/// fp32 → fp16 (round to nearest even), `n` elements.
void kv_f32_to_f16(const float *src, uint16_t *dst, int64_t n);
/// fp16 → fp32, `n` elements.
void kv_f16_to_f32(const uint16_t *src, float *dst, int64_t n);
/// Quantizes `n` rows of `head_dim` floats per channel: scale[d] = max_j |x[j][d]| / 127,
/// q = round(x / scale) (scale 0 → q 0).
void kv_quantize_per_channel(const float *src, int64_t n, int head_dim, int8_t *dst, float *scale);
/// Quantizes `n` rows of `head_dim` floats per row: scale[j] = max_d |x[j][d]| / 127.
void kv_quantize_per_row(const float *src, int64_t n, int head_dim, int8_t *dst, float *scale);
/// Widens `n` rows stored in `fmt` (with its scales, as in `kv_slab`) to fp32.
void kv_widen(int fmt, int per_channel, const void *src, const float *scale, int64_t n, int head_dim, float *dst);

#ifdef __cplusplus
}
#endif
#endif
