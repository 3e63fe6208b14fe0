// One decoded token's attention, fused: gpt-oss's eager math (scores + mask, the head's sink as one
// more logit, softmax, the sink dropped, weights @ values) in one pass per key/value head, where torch
// ran a dozen ops and a batched matmul with 8 rows. Measured at 4k tokens of context on 2 AVX2 cores:
// torch 2.35-2.8 ms a layer, this 0.97 ms (2.1 ms on one thread). The query heads that share a key/value
// head are processed side by side, 8 at a time, as GCC/clang vector-extension values (one AVX register,
// two NEON ones); with GCC on x86-64 Linux the functions are cloned per ISA level and the clone is chosen
// when the library loads. exp is a branch-free polynomial (relative error ~1e-7) on those vectors.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>
#include <algorithm>

#include "kernels.h"
#include "ops.h"

namespace gptoss_cpu {
namespace {

// 8 query heads side by side (GCC and clang vector extensions; NEON: two registers). Buffers hold
// floats and go through ld/st (unaligned moves), so that nothing needs an over-aligned allocation.
typedef float v8 __attribute__((vector_size(32)));

inline v8 ld(const float* p) {
  v8 x;
  __builtin_memcpy(&x, p, sizeof x);
  return x;
}
inline void st8(float* p, v8 x) { __builtin_memcpy(p, &x, sizeof x); }

typedef int32_t v8i __attribute__((vector_size(32)));

inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

// e^x for x <= 0 (a softmax's shifted logits), 8 at a time: 2^n * p(r), x = n ln2 + r, |r| <= ln2/2
// (n rounded by the 1.5 * 2^23 trick), relative error ~1e-7; exactly 0 below -87.
inline v8 exp_nonpositive(v8 x) {
  const v8 xc = x < -87.0f ? splat(-87.0f) : x;
  const v8 n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;
  const v8 r = (xc - n * 0.693145752f) - n * 1.42860677e-6f;
  v8 p = splat(1.98756912e-4f);
  p = p * r + 1.39819994e-3f;
  p = p * r + 8.33345205e-3f;
  p = p * r + 4.16657962e-2f;
  p = p * r + 1.66666657e-1f;
  p = p * r + 5.0e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  const v8 e = p * (v8)bits;
  return x < -87.0f ? splat(0.0f) : e;
}
inline v8 vmax(v8 a, v8 b) { return a > b ? a : b; }

// Query heads [0, rep) of one key/value head against keys [0, n) (already past a window's start).
// Lanes are query heads (rep padded to 8 with zero queries): the scores of a key are 8 lanes of FMAs
// over d with the key's element broadcast, so no horizontal sums. The softmax runs on lanes too; then probs (rep rows of stride ldp) are
// written and out (rep x D) = probs @ values, heads on lanes again: a block of keys at a time, 8 columns of
// accumulators per pass over the block, so each value row comes from memory once (one head at a time read
// them 8 times, from L3 or memory at 4k tokens: 1.99 -> 1.65 ms a layer at 4k on 2 AVX2 cores, AMD EPYC).
// Both passes ask for their rows ahead (keys two steps on, values a block on) into L2: the hardware prefetcher
// alone left each pass waiting on memory at every new line (4k tokens, 2 AVX-512 cores: 1.6 -> 1.0 ms a layer).
constexpr int64_t kKeyBlock = 64;  // keys whose values (64 x D floats: 16 KB at D = 64) one pass of PV keeps in L1
constexpr int64_t kKeyAhead = 16;  // how far ahead (keys) the scores pass asks for its key rows: two steps

CLONES void attend_group(const float* q, int64_t rep, int64_t D, const float* k, const float* v, int64_t ldkv,
                         int64_t n, const float* mask, const float* sinks, float scaling, float* probs, int64_t ldp,
                         float* out) {
  for (int64_t r0 = 0; r0 < rep; r0 += 8) {
    const int64_t lanes = std::min<int64_t>(8, rep - r0);
    std::vector<float> qt(D * 8), st(n * 8);  // qt: the 8 heads' d-th elements, scaled; st: key t's 8 scores
    for (int64_t d = 0; d < D; ++d)
      for (int64_t r = 0; r < 8; ++r) qt[d * 8 + r] = r < lanes ? q[(r0 + r) * D + d] * scaling : 0.0f;
    const float* Q = qt.data();
    float* S = st.data();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {  // eight keys at a time: eight FMA chains in flight
      const float* kt = k + t * ldkv;
      if (t + kKeyAhead + 8 <= n)  // a line per 16 floats
        for (int j = 0; j < 8; ++j)
          for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(kt + (kKeyAhead + j) * ldkv + d, 0, 2);
      v8 a[8] = {};
      for (int64_t d = 0; d < D; ++d) {
        const v8 c = ld(Q + d * 8);
        for (int j = 0; j < 8; ++j) a[j] += c * kt[j * ldkv + d];
      }
      for (int j = 0; j < 8; ++j) st8(S + (t + j) * 8, a[j]);
    }
    for (; t < n; ++t) {
      v8 a = splat(0.0f);
      for (int64_t d = 0; d < D; ++d) a += ld(Q + d * 8) * k[t * ldkv + d];
      st8(S + t * 8, a);
    }
    v8 sink = splat(-std::numeric_limits<float>::infinity());
    for (int64_t r = 0; r < lanes; ++r) sink[r] = sinks[r0 + r];
    v8 m = sink;
    for (t = 0; t < n; ++t) {
      v8 x = ld(S + t * 8);
      if (mask) st8(S + t * 8, x += mask[t]);
      m = vmax(m, x);
    }
    for (int64_t r = 0; r < 8; ++r)
      if (m[r] == -std::numeric_limits<float>::infinity()) m[r] = 0.0f;  // every logit -inf: all weights 0
    v8 sum = splat(0.0f);
    for (t = 0; t < n; ++t) {
      const v8 e = exp_nonpositive(ld(S + t * 8) - m);
      st8(S + t * 8, e);
      sum += e;
    }
    const v8 inv = 1.0f / (sum + exp_nonpositive(sink - m));
    for (t = 0; t < n; ++t) st8(S + t * 8, ld(S + t * 8) * inv);
    for (int64_t r = 0; r < lanes && probs; ++r) {
      float* p = probs + (r0 + r) * ldp;
      for (t = 0; t < n; ++t) p[t] = S[t * 8 + r];
    }
    if (D % 8 == 0) {  // out = probs @ values with heads on lanes: each row of values is read once
      std::vector<float> acc(D * 8, 0.0f);  // acc[d * 8 + r]: head r's output at column d
      for (int64_t t0 = 0; t0 < n; t0 += kKeyBlock) {  // a block of keys' values stays in L1 across the chunks
        const int64_t t1 = std::min(n, t0 + kKeyBlock);
        for (int64_t d0 = 0; d0 < D; d0 += 8) {  // 8 columns at a time: 8 vectors of accumulators
          v8 a[8];
          for (int j = 0; j < 8; ++j) a[j] = ld(acc.data() + (d0 + j) * 8);
          for (t = t0; t < t1; ++t) {
            const v8 p = ld(S + t * 8);
            const float* vt = v + t * ldkv + d0;
            if (d0 == 0 && t + kKeyBlock < n)  // the next block's row, a line per 16 floats
              for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(v + (t + kKeyBlock) * ldkv + d, 0, 2);
            for (int j = 0; j < 8; ++j) a[j] += p * vt[j];
          }
          for (int j = 0; j < 8; ++j) st8(acc.data() + (d0 + j) * 8, a[j]);
        }
      }
      for (int64_t r = 0; r < lanes; ++r)
        for (int64_t d = 0; d < D; ++d) out[(r0 + r) * D + d] = acc[d * 8 + r];
    } else {
      for (int64_t r = 0; r < lanes; ++r) {  // out row r = sum_t w[t] v[t]
        float* o = out + (r0 + r) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
        for (t = 0; t < n; ++t)
          for (int64_t d = 0; d < D; ++d) o[d] += S[t * 8 + r] * v[t * ldkv + d];
      }
    }
  }
}

}  // namespace

// query (B, H, 1, D); key, value (B, KV, k, D) with rows contiguous (views of the cache's buffer);
// mask: none or (B, k) additive; sinks (H); keys before `start` take no part (a sliding window).
// Returns out (B, 1, H, D) and the weights (B, H, 1, k), zero before start, as eager returns them.
std::tuple<at::Tensor, at::Tensor> decode_attention(const at::Tensor& query, const at::Tensor& key,
                                                    const at::Tensor& value, const c10::optional<at::Tensor>& mask,
                                                    const at::Tensor& sinks, double scaling, int64_t start,
                                                    bool with_weights) {
  TORCH_CHECK(query.dim() == 4 && query.size(2) == 1, "decode_attention takes one query token");
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat && value.scalar_type() == at::kFloat,
              "decode_attention takes float32");
  const int64_t B = query.size(0), H = query.size(1), D = query.size(3);
  const int64_t KV = key.size(1), k = key.size(2);
  TORCH_CHECK(H % KV == 0 && key.sizes() == value.sizes() && key.size(3) == D, "query/key/value shapes do not match");
  TORCH_CHECK(key.stride(3) == 1 && value.stride(3) == 1 && key.stride(2) == value.stride(2) &&
                  key.stride(1) == value.stride(1) && key.stride(0) == value.stride(0),
              "key and value rows must be contiguous, with the same strides");
  TORCH_CHECK(start >= 0 && start < k, "start out of range");
  auto q = query.contiguous();
  auto s = sinks.to(at::kFloat).contiguous();
  at::Tensor m;
  if (mask.has_value() && mask->defined()) {
    m = mask->to(at::kFloat).contiguous();
    TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == k, "mask must be (B, k)");
  }
  const int64_t rep = H / KV, n = k - start;
  auto probs = with_weights ? at::zeros({B, H, 1, k}, at::kFloat) : at::Tensor();
  auto out = at::empty({B, 1, H, D}, at::kFloat);
  const float* qp = q.data_ptr<float>();
  const float* kp = key.data_ptr<float>();
  const float* vp = value.data_ptr<float>();
  const float* mp = m.defined() ? m.data_ptr<float>() : nullptr;
  const float* sp = s.data_ptr<float>();
  float* pp = with_weights ? probs.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t sb = key.stride(0), sh = key.stride(1), ldkv = key.stride(2);
  at::parallel_for(0, B * KV, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const int64_t b = i / KV, g = i % KV;
      attend_group(qp + (b * H + g * rep) * D, rep, D, kp + b * sb + g * sh + start * ldkv,
                   vp + b * sb + g * sh + start * ldkv, ldkv, n, mp ? mp + b * k + start : nullptr, sp + g * rep,
                   static_cast<float>(scaling), pp ? pp + (b * H + g * rep) * k + start : nullptr, k,
                   op + (b * H + g * rep) * D);
    }
  });
  return {out, probs};
}

}  // namespace gptoss_cpu
