// The extension's torch-level ops, for the files that build on one another (layers.cpp's decoder layer
// runs attention.cpp's and ops.cpp's). Bound to Python in ops.cpp.
#pragma once
#include <torch/extension.h>

#include <tuple>

namespace gptoss_cpu {

// ops.cpp
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias, int64_t small_n);
at::Tensor moe_forward(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weights,
                       const at::Tensor& gu_blocks, const at::Tensor& gu_scales, const at::Tensor& gu_bias,
                       const at::Tensor& dn_blocks, const at::Tensor& dn_scales, const at::Tensor& dn_bias,
                       double alpha, double limit, int64_t small_n);
// attention.cpp; with_weights false: the weights are not written (an undefined tensor is returned)
std::tuple<at::Tensor, at::Tensor> decode_attention(const at::Tensor& query, const at::Tensor& key,
                                                    const at::Tensor& value, const c10::optional<at::Tensor>& mask,
                                                    const at::Tensor& sinks, double scaling, int64_t start,
                                                    bool with_weights = true);
// layers.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> router(const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& bias, int64_t k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_rope(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq,
                                                        const at::Tensor& wk, const at::Tensor& bk, const at::Tensor& wv,
                                                        const at::Tensor& bv, const at::Tensor& cos, const at::Tensor& sin,
                                                        int64_t head_dim);
std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_layer_qkv(const at::Tensor& hidden, const at::Tensor& norm,
                                                                double eps, const at::Tensor& wq, const at::Tensor& bq,
                                                                const at::Tensor& wk, const at::Tensor& bk,
                                                                const at::Tensor& wv, const at::Tensor& bv,
                                                                const at::Tensor& cos, const at::Tensor& sin,
                                                                int64_t head_dim);
at::Tensor decode_layer_rest(const at::Tensor& hidden, const at::Tensor& q, const at::Tensor& key, const at::Tensor& value,
                             const c10::optional<at::Tensor>& mask, const at::Tensor& sinks, double scaling,
                             int64_t start, const at::Tensor& wo, const at::Tensor& bo, const at::Tensor& norm,
                             double eps, const at::Tensor& router_w, const at::Tensor& router_b, int64_t top_k,
                             const at::Tensor& gu_blocks, const at::Tensor& gu_scales, const at::Tensor& gu_bias,
                             const at::Tensor& dn_blocks, const at::Tensor& dn_scales, const at::Tensor& dn_bias,
                             double alpha, double limit);

}  // namespace gptoss_cpu
