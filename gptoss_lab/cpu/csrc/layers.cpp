// A decoded token's small layers, each in one call: gpt-oss's RMSNorm, its router (linear, top-k, softmax
// of the top-k) and the attention's q/k/v projections with the rotary embedding. The arithmetic is
// transformers' (float32 throughout); what goes is the overhead around it. In the model a decoded token
// ran ~12 torch ops a layer for these (each a dispatch, an allocation, a pass over its data), and on 2
// cores they cost 20 ms of a 20b token's ~120 ms, far more than their arithmetic: 49 norms took 60 us
// each, the router's 32 x 2880 linear 56 us. The q/k/v weights, bf16, go through the bf16 row kernels of
// the active instruction set in one parallel pass over the three matrices.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

#include "kernels.h"
#include "ops.h"

namespace gptoss_cpu {
namespace {

constexpr int L = 16;  // partial sums per dot product: the compiler vectorizes over them

CLONES float dot(const float* a, const float* b, int64_t n) {
  float part[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) part[j] += a[i + j] * b[i + j];
  float acc = 0.0f;
  for (int j = 0; j < L; ++j) acc += part[j];
  for (; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

CLONES void norm_row(const float* x, const float* w, float eps, int64_t H, float* out) {
  const float sq = dot(x, x, H);
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(H) + eps);
  for (int64_t h = 0; h < H; ++h) out[h] = w[h] * (x[h] * inv);
}

void check_rows(const at::Tensor& x, int64_t width, const char* what) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(), what,
              " takes contiguous float32 CPU tensors");
  TORCH_CHECK(x.size(-1) == width, what, ": last dimension ", x.size(-1), ", expected ", width);
}

}  // namespace

// x (..., H) -> weight * x / sqrt(mean(x^2) + eps), row by row.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t H = weight.numel();
  check_rows(x, H, "rms_norm");
  check_rows(weight, H, "rms_norm");
  auto out = at::empty_like(x);
  const int64_t n = x.numel() / H;
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const auto e = static_cast<float>(eps);
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t end) {
    for (int64_t t = b; t < end; ++t) norm_row(xp + t * H, wp, e, H, op + t * H);
  });
  return out;
}

// gpt-oss's router for tokens x (n, H): logits = x W^T + b (n, E); the top k logits, largest first, and
// their indices; scores = softmax over those k. As transformers' GptOssTopKRouter returns them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> router(const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& bias, int64_t k) {
  const int64_t E = weight.size(0), H = weight.size(1);
  check_rows(x, H, "router");
  check_rows(weight, H, "router");
  TORCH_CHECK(bias.numel() == E && bias.scalar_type() == at::kFloat && bias.is_contiguous(), "router: bias must be float32 (E,)");
  TORCH_CHECK(k >= 1 && k <= E, "router: top-k ", k, " of ", E, " experts");
  const int64_t n = x.numel() / H;
  auto logits = at::empty({n, E}, at::kFloat);
  auto scores = at::empty({n, k}, at::kFloat);
  auto indices = at::empty({n, k}, at::kLong);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* lp = logits.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  int64_t* ip = indices.data_ptr<int64_t>();
  at::parallel_for(0, n, 8, [&](int64_t b, int64_t end) {
    std::vector<int64_t> order(E);
    for (int64_t t = b; t < end; ++t) {
      float* row = lp + t * E;
      for (int64_t e = 0; e < E; ++e) row[e] = dot(xp + t * H, wp + e * H, H) + bp[e];
      std::iota(order.begin(), order.end(), 0);
      // largest first; a NaN sorts as the largest (torch.topk's order), ties by index
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t c) {
        const float va = row[a], vc = row[c];
        if (std::isnan(va) || std::isnan(vc)) return std::isnan(va) && !std::isnan(vc);
        return va > vc || (va == vc && a < c);
      });
      const float top = row[order[0]];
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        ip[t * k + j] = order[j];
        sp[t * k + j] = std::exp(row[order[j]] - top);
        sum += sp[t * k + j];
      }
      for (int64_t j = 0; j < k; ++j) sp[t * k + j] /= sum;
    }
  });
  return {logits, scores, indices};
}

// The attention's projections for n tokens x (n, H) and the rotary embedding (cos, sin: (n, D/2), the
// half-split form transformers applies): q (1, Hq, n, D), k and v (1, Hkv, n, D), as GptOssAttention
// has them after apply_rotary_pos_emb. The three bf16 weights (rows of Hq * D, Hkv * D, Hkv * D) are
// multiplied in one parallel pass.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_rope(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq,
                                                        const at::Tensor& wk, const at::Tensor& bk, const at::Tensor& wv,
                                                        const at::Tensor& bv, const at::Tensor& cos, const at::Tensor& sin,
                                                        int64_t head_dim) {
  const int64_t H = wq.size(1), D = head_dim, half = D / 2;
  check_rows(x, H, "qkv_rope");
  const at::Tensor* w[3] = {&wq, &wk, &wv};
  const at::Tensor* bias[3] = {&bq, &bk, &bv};
  int64_t first[4] = {0, 0, 0, 0};
  for (int m = 0; m < 3; ++m) {
    TORCH_CHECK(w[m]->scalar_type() == at::kBFloat16 && w[m]->is_contiguous() && w[m]->size(1) == H,
                "qkv_rope: weights must be contiguous bf16 (rows, ", H, ")");
    TORCH_CHECK(bias[m]->scalar_type() == at::kFloat && bias[m]->is_contiguous() && bias[m]->numel() == w[m]->size(0),
                "qkv_rope: biases must be contiguous float32");
    TORCH_CHECK(w[m]->size(0) % D == 0, "qkv_rope: rows not a multiple of the head size");
    first[m + 1] = first[m] + w[m]->size(0);
  }
  const int64_t n = x.numel() / H;
  check_rows(cos, half, "qkv_rope");
  check_rows(sin, half, "qkv_rope");
  TORCH_CHECK(cos.numel() == n * half && sin.numel() == n * half, "qkv_rope: one cos/sin row per token");
  auto flat = at::empty({n, first[3]}, at::kFloat);  // (n, q | k | v)
  const float* xp = x.data_ptr<float>();
  float* fp = flat.data_ptr<float>();
  const auto fn = active_kernels().bf16_rows;
  at::parallel_for(0, first[3], 16, [&](int64_t b, int64_t e) {
    for (int m = 0; m < 3; ++m) {
      const int64_t r0 = std::max(b, first[m]), r1 = std::min(e, first[m + 1]);
      if (r0 >= r1) continue;
      const auto* wp = reinterpret_cast<const uint16_t*>(w[m]->data_ptr<at::BFloat16>());
      fn(xp, n, H, wp, r0 - first[m], r1 - first[m], fp + first[m], first[3]);
    }
  });
  const int64_t heads[3] = {first[1] / D, (first[2] - first[1]) / D, (first[3] - first[2]) / D};
  auto q = at::empty({1, heads[0], n, D}, at::kFloat);
  auto k = at::empty({1, heads[1], n, D}, at::kFloat);
  auto v = at::empty({1, heads[2], n, D}, at::kFloat);
  float* out[3] = {q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>()};
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  for (int m = 0; m < 3; ++m) {
    const float* bp = bias[m]->data_ptr<float>();
    for (int64_t h = 0; h < heads[m]; ++h)
      for (int64_t t = 0; t < n; ++t) {
        const float* src = fp + t * first[3] + first[m] + h * D;
        const float* b = bp + h * D;
        float* dst = out[m] + (h * n + t) * D;
        if (m == 2) {
          for (int64_t d = 0; d < D; ++d) dst[d] = src[d] + b[d];
          continue;
        }
        const float* c = cp + t * half;
        const float* s = sp + t * half;
        for (int64_t d = 0; d < half; ++d) {  // as transformers: each product rounded, then the difference
          const float x1 = src[d] + b[d], x2 = src[d + half] + b[d + half];
          const float x1c = x1 * c[d], x2s = x2 * s[d], x2c = x2 * c[d], x1s = x1 * s[d];
          dst[d] = x1c - x2s;
          dst[d + half] = x2c + x1s;
        }
      }
  }
  return {q, k, v};
}

// A decoder layer for one token, in two calls around the cache's update (GptOssDecoderLayer's steps, in
// transformers' order): decode_layer_qkv is the input norm and the projections with the rotary
// embedding; decode_layer_rest the attention over the updated cache (keys from `start`), o_proj, the
// residual, the second norm, the router, the experts and the residual. hidden: (1, 1, H).
std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_layer_qkv(const at::Tensor& hidden, const at::Tensor& norm,
                                                                double eps, const at::Tensor& wq, const at::Tensor& bq,
                                                                const at::Tensor& wk, const at::Tensor& bk,
                                                                const at::Tensor& wv, const at::Tensor& bv,
                                                                const at::Tensor& cos, const at::Tensor& sin,
                                                                int64_t head_dim) {
  return qkv_rope(rms_norm(hidden.reshape({1, -1}).contiguous(), norm, eps), wq, bq, wk, bk, wv, bv, cos, sin, head_dim);
}

at::Tensor decode_layer_rest(const at::Tensor& hidden, const at::Tensor& q, const at::Tensor& key, const at::Tensor& value,
                             const c10::optional<at::Tensor>& mask, const at::Tensor& sinks, double scaling,
                             int64_t start, const at::Tensor& wo, const at::Tensor& bo, const at::Tensor& norm,
                             double eps, const at::Tensor& router_w, const at::Tensor& router_b, int64_t top_k,
                             const at::Tensor& gu_blocks, const at::Tensor& gu_scales, const at::Tensor& gu_bias,
                             const at::Tensor& dn_blocks, const at::Tensor& dn_scales, const at::Tensor& dn_bias,
                             double alpha, double limit) {
  const auto attn = std::get<0>(decode_attention(q, key, value, mask, sinks, scaling, start, false));  // (1, 1, heads, D)
  constexpr int64_t kOne = 1;  // one token: the few-token paths (packed kernels) of bf16_linear and moe_forward
  const auto h = hidden.reshape({1, -1}) + bf16_linear(attn.reshape({1, -1}), wo, bo, kOne);  // residual + attention
  const auto x = rms_norm(h, norm, eps);
  const auto routed = router(x, router_w, router_b, top_k);
  const auto moe = moe_forward(x, std::get<2>(routed), std::get<1>(routed), gu_blocks, gu_scales, gu_bias, dn_blocks,
                               dn_scales, dn_bias, alpha, limit, kOne);
  return (h + moe).reshape(hidden.sizes());
}

}  // namespace gptoss_cpu
