// Torch bindings of the CPU MXFP4 engine: the instruction set is chosen here, once, from what the CPU
// reports (AVX-512 F+BW, else AVX2+FMA, else the scalar reference), and every op runs on torch's
// intra-op thread pool (at::parallel_for), so torch.set_num_threads governs it.
//
//   mxfp4_linear(x, blocks, scales, bias)   x (n, K) f32 @ W^T, W packed (M, K/32, 16) + (M, K/32)
//   mxfp4_dequantize(blocks, scales)         W as float32 (M, K)
//   bf16_linear(x, w, bias)                  x (n, K) f32 @ W^T, W bf16 (M, K)
//   moe_forward(x, idx, weights, ...)        gpt-oss's expert block for tokens x (T, H) routed to idx (T, k)
//   decode_attention(q, k, v, mask, sinks, scaling, start)   one token's attention (attention.cpp)
//   rms_norm, router, qkv_rope               a decoded token's small layers, one call each (layers.cpp)
//   decode_layer_qkv, decode_layer_rest      a decoded token's decoder layer, before and after the cache (layers.cpp)
//   set_fixed_point(on)                      the MXFP4 kernels on fixed-point activations (default) or floats
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "kernels.h"
#include "ops.h"

namespace gptoss_cpu {

namespace {

Kernels pick_best() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return avx512_kernels();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2_kernels();
#endif
  return scalar_kernels();
}

Kernels& active() {
  static Kernels k = pick_best();
  return k;
}

std::vector<std::string> available() {
  std::vector<std::string> out{"scalar"};
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back("avx2");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    out.push_back("avx512");
#endif
  return out;
}

void set_isa(const std::string& name) {
  if (name == "best") { active() = pick_best(); return; }
  for (const auto& a : available()) {
    if (a != name) continue;
    if (name == "scalar") active() = scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
    if (name == "avx2") active() = avx2_kernels();
    if (name == "avx512") active() = avx512_kernels();
#endif
    return;
  }
  TORCH_CHECK(false, "this CPU cannot run the '", name, "' kernels");
}

std::string isa() { return active().name; }

constexpr int64_t kGrain = 16;  // rows per task: small enough to spread 2880 rows over many cores
constexpr int64_t kTileRows = 512;  // rows of an expert dequantized at once for a prefill (512 x 2880 floats: 5.9 MB)

// Each group of 32 values as its 16 even-indexed values then its 16 odd-indexed ones.
void split_groups(const float* x, int64_t n, int64_t K, float* xs) {
  for (int64_t t = 0; t < n; ++t) {
    const float* src = x + t * K;
    float* dst = xs + t * K;
    for (int64_t g = 0; g < K; g += kBlock)
      for (int j = 0; j < 16; ++j) {
        dst[g + j] = src[g + 2 * j];
        dst[g + 16 + j] = src[g + 2 * j + 1];
      }
  }
}

void check_packed(const at::Tensor& blocks, const at::Tensor& scales, int64_t K) {
  TORCH_CHECK(blocks.scalar_type() == at::kByte && scales.scalar_type() == at::kByte, "blocks and scales must be uint8");
  TORCH_CHECK(blocks.is_contiguous() && scales.is_contiguous(), "blocks and scales must be contiguous");
  TORCH_CHECK(K % kBlock == 0, "MXFP4 rows must have a multiple of 32 columns, got ", K);
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float32 (n, K)");
  TORCH_CHECK(x.device().is_cpu(), "the CPU MXFP4 engine takes CPU tensors");
}

void add_bias(at::Tensor& out, const c10::optional<at::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) out.add_(bias->to(at::kFloat).unsqueeze(0));
}

// n tokens of K floats as the MXFP4 kernels take them: fixed point (quantize_fixed), or split floats for
// tokens it refuses (a non-finite or vanishingly small group).
struct Prepared {
  at::Tensor data;  // (n, fixed_bytes(K)) uint8, or (n, K) float32 split
  bool fixed;
  int64_t K;
  const uint8_t* token(int64_t t) const {
    return data.data_ptr<uint8_t>() + t * (fixed ? fixed_bytes(K) : K * static_cast<int64_t>(sizeof(float)));
  }
};

std::atomic<bool> g_fixed{true};  // set_fixed_point(False): the split-float kernels only, for comparison

Prepared prepare(const float* x, int64_t n, int64_t K) {
  if (g_fixed && active().mxfp4_fixed != nullptr) {  // the scalar table has none
    const int64_t stride = fixed_bytes(K);
    auto buf = at::empty({n, stride}, at::kByte);
    std::atomic<bool> ok{true};
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {  // a few tokens already fill the threads (~8 us each)
      for (int64_t t = b; t < e && ok; ++t)
        if (!quantize_fixed(x + t * K, K, buf.data_ptr<uint8_t>() + t * stride)) ok = false;
    });
    if (ok) return {buf, true, K};
  }
  auto xs = at::empty({n, K}, at::kFloat);
  split_groups(x, n, K, xs.data_ptr<float>());
  return {xs.view(at::kByte), false, K};
}

// Rows [r0, r1) of a packed weight against tokens [t0, t0 + n) of x, on this thread.
void rows(const Prepared& x, int64_t t0, int64_t n, const uint8_t* b, const uint8_t* s, int64_t r0, int64_t r1,
          float* out, int64_t ldo) {
  if (x.fixed)
    active().mxfp4_fixed(x.token(t0), n, x.K, b, s, r0, r1, out, ldo);
  else
    active().mxfp4_rows(reinterpret_cast<const float*>(x.token(t0)), n, x.K, b, s, r0, r1, out, ldo);
}

at::Tensor dequantize_rows(const uint8_t* b, const uint8_t* s, int64_t M, int64_t K) {
  auto out = at::empty({M, K}, at::kFloat);
  float* o = out.data_ptr<float>();
  const auto fn = active().mxfp4_dequant;
  at::parallel_for(0, M, kGrain, [&](int64_t r0, int64_t r1) { fn(b, s, K, r0, r1, o + r0 * K); });
  return out;
}

at::Tensor mxfp4_linear(const at::Tensor& x, const at::Tensor& blocks, const at::Tensor& scales,
                        const c10::optional<at::Tensor>& bias) {
  check_x(x);
  const int64_t n = x.size(0), K = x.size(1), M = blocks.size(0);
  check_packed(blocks, scales, K);
  TORCH_CHECK(blocks.numel() == M * K / 2 && scales.numel() == M * K / kBlock, "blocks/scales do not match x's width ", K);
  auto out = at::empty({n, M}, at::kFloat);
  const Prepared xp = prepare(x.data_ptr<float>(), n, K);
  const uint8_t* b = blocks.data_ptr<uint8_t>();
  const uint8_t* s = scales.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, M, kGrain, [&](int64_t r0, int64_t r1) { rows(xp, 0, n, b, s, r0, r1, o, M); });
  add_bias(out, bias);
  return out;
}

at::Tensor mxfp4_dequantize(const at::Tensor& blocks, const at::Tensor& scales) {
  const int64_t M = scales.size(0), K = scales.numel() / M * kBlock;
  check_packed(blocks, scales, K);
  return dequantize_rows(blocks.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), M, K);
}

}  // namespace

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                       int64_t small_n) {
  check_x(x);
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.dim() == 2, "w must be contiguous bf16 (M, K)");
  const int64_t n = x.size(0), K = x.size(1), M = w.size(0);
  TORCH_CHECK(w.size(1) == K, "w has ", w.size(1), " columns, x has ", K);
  auto out = at::empty({n, M}, at::kFloat);
  if (n <= small_n) {
    const auto fn = active().bf16_rows;
    const float* xp = x.data_ptr<float>();
    const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    float* o = out.data_ptr<float>();
    at::parallel_for(0, M, kGrain, [&](int64_t r0, int64_t r1) { fn(xp, n, K, wp, r0, r1, o, M); });
  } else {
    // Many tokens: float32 tiles of W through torch's GEMM (compute-bound; a tile is a few MB).
    const int64_t tile = 2048;
    for (int64_t r = 0; r < M; r += tile) {
      const int64_t e = std::min(M, r + tile);
      auto wt = w.slice(0, r, e).to(at::kFloat);
      out.slice(1, r, e).copy_(at::mm(x, wt.t()));
    }
  }
  add_bias(out, bias);
  return out;
}

namespace {

// gpt-oss's clamped SwiGLU of one token's interleaved (gate, up) pairs plus their bias: 2I -> I values.
void swiglu_row(const float* gate_up, const float* bias, int64_t I, double alpha, double limit, float* out) {
  const float a = static_cast<float>(alpha), lim = static_cast<float>(limit);
  for (int64_t i = 0; i < I; ++i) {
    const float gate = std::min(gate_up[2 * i] + bias[2 * i], lim);
    const float up = std::max(std::min(gate_up[2 * i + 1] + bias[2 * i + 1], lim), -lim);
    const float glu = gate / (1.0f + std::exp(-gate * a));
    out[i] = (up + 1.0f) * glu;
  }
}

}  // namespace

// The expert block: for every token, sum over its k experts of weight * down(swiglu(gate_up(x))).
// Experts with few tokens (decode, short continuations) run packed; all of them in one pass over the
// thread pool per projection. Experts with more than small_n tokens (a prefill) are dequantized one at
// a time and go through torch's GEMM: the prompt's tokens are grouped by expert, never one mat-vec each.
at::Tensor moe_forward(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weights,
                       const at::Tensor& gu_blocks, const at::Tensor& gu_scales, const at::Tensor& gu_bias,
                       const at::Tensor& dn_blocks, const at::Tensor& dn_scales, const at::Tensor& dn_bias,
                       double alpha, double limit, int64_t small_n) {
  check_x(x);
  const int64_t T = x.size(0), H = x.size(1), k = idx.size(1);
  const int64_t E = gu_blocks.size(0), I2 = gu_blocks.size(1), I = I2 / 2;
  check_packed(gu_blocks, gu_scales, H);
  check_packed(dn_blocks, dn_scales, I);
  TORCH_CHECK(gu_blocks.numel() == E * I2 * H / 2 && dn_blocks.numel() == E * H * I / 2, "expert shapes do not match");
  auto idx64 = idx.to(at::kLong).contiguous();
  auto w32 = weights.to(at::kFloat).contiguous();
  auto gub = gu_bias.to(at::kFloat).contiguous();
  auto dnb = dn_bias.to(at::kFloat).contiguous();
  const int64_t* ip = idx64.data_ptr<int64_t>();
  const float* wp = w32.data_ptr<float>();

  std::vector<std::vector<int64_t>> tokens(E);  // expert -> (token * k + slot) entries
  for (int64_t i = 0; i < T * k; ++i) {
    const int64_t e = ip[i];
    TORCH_CHECK(e >= 0 && e < E, "expert index ", e, " out of range");
    tokens[e].push_back(i);
  }
  auto out = at::zeros({T, H}, at::kFloat);
  float* op = out.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const uint8_t* gbp = gu_blocks.data_ptr<uint8_t>();
  const uint8_t* gsp = gu_scales.data_ptr<uint8_t>();
  const uint8_t* dbp = dn_blocks.data_ptr<uint8_t>();
  const uint8_t* dsp = dn_scales.data_ptr<uint8_t>();

  // out[token] += weight * (y + bias) for each (token, slot) entry of one expert; y: (entries, H)
  auto accumulate = [&](const std::vector<int64_t>& entries, const float* y, const float* bias) {
    for (size_t j = 0; j < entries.size(); ++j) {
      float* dst = op + (entries[j] / k) * H;
      const float wgt = wp[entries[j]];
      const float* yj = y + j * H;
      for (int64_t h = 0; h < H; ++h) dst[h] += wgt * (yj[h] + bias[h]);
    }
  };
  const float* gub_p = gub.data_ptr<float>();
  const float* dnb_p = dnb.data_ptr<float>();

  // Few tokens: gather each expert's tokens, then one parallel pass over all experts' rows. Biases, the
  // SwiGLU and the weighted sum are plain loops (as torch ops they were ~10 dispatches an expert).
  std::vector<int64_t> small;
  for (int64_t e = 0; e < E; ++e)
    if (!tokens[e].empty() && static_cast<int64_t>(tokens[e].size()) <= small_n) small.push_back(e);
  if (!small.empty()) {
    std::vector<int64_t> first(small.size() + 1, 0);  // token offset of each expert in the gathered batch
    for (size_t a = 0; a < small.size(); ++a) first[a + 1] = first[a] + tokens[small[a]].size();
    const int64_t n = first.back();
    // The experts' inputs, prepared once per distinct token (a decoded token goes to all its k experts)
    // and their prepared rows gathered in expert order.
    std::vector<int64_t> token_of(n), distinct;
    for (size_t a = 0; a < small.size(); ++a)
      for (size_t j = 0; j < tokens[small[a]].size(); ++j) token_of[first[a] + j] = tokens[small[a]][j] / k;
    distinct = token_of;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    auto xd = at::empty({static_cast<int64_t>(distinct.size()), H}, at::kFloat);
    for (size_t u = 0; u < distinct.size(); ++u) std::copy_n(xp + distinct[u] * H, H, xd.data_ptr<float>() + u * H);
    const Prepared once = prepare(xd.data_ptr<float>(), distinct.size(), H);
    const int64_t row_bytes = once.data.numel() / static_cast<int64_t>(distinct.size());
    Prepared xg{at::empty({n, row_bytes}, at::kByte), once.fixed, H};
    for (int64_t j = 0; j < n; ++j) {
      const int64_t u = std::lower_bound(distinct.begin(), distinct.end(), token_of[j]) - distinct.begin();
      std::copy_n(once.token(u), row_bytes, xg.data.data_ptr<uint8_t>() + j * row_bytes);
    }
    auto gate_up = at::empty({n, I2}, at::kFloat);
    auto act = at::empty({n, I}, at::kFloat);
    auto down = at::empty({n, H}, at::kFloat);
    const int64_t A = small.size();
    std::vector<int64_t> expert_of(n);  // each gathered token's expert
    for (int64_t a = 0; a < A; ++a) std::fill(expert_of.begin() + first[a], expert_of.begin() + first[a + 1], small[a]);
    auto run_rows = [&](int64_t M, int64_t Kin, const Prepared& in, const uint8_t* bb, const uint8_t* ss, float* o) {
      at::parallel_for(0, A * M, kGrain, [&](int64_t b, int64_t e) {
        for (int64_t a = b / M; a < A && a * M < e; ++a) {
          const int64_t r0 = std::max(b, a * M) - a * M, r1 = std::min(e, (a + 1) * M) - a * M;
          const int64_t ex = small[a];
          rows(in, first[a], first[a + 1] - first[a], bb + ex * M * Kin / 2, ss + ex * M * Kin / kBlock, r0, r1,
               o + first[a] * M, M);
        }
      });
    };
    run_rows(I2, H, xg, gbp, gsp, gate_up.data_ptr<float>());
    const float* gp = gate_up.data_ptr<float>();
    float* ap = act.data_ptr<float>();
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) swiglu_row(gp + t * I2, gub_p + expert_of[t] * I2, I, alpha, limit, ap + t * I);
    });
    run_rows(H, I, prepare(ap, n, I), dbp, dsp, down.data_ptr<float>());
    for (int64_t a = 0; a < A; ++a)
      accumulate(tokens[small[a]], down.data_ptr<float>() + first[a] * H, dnb_p + small[a] * H);
  }

  // Many tokens: one expert at a time, dequantized to float32 a tile of rows at a time (a few MB, never
  // the whole expert) and multiplied by torch's GEMM.
  auto tiled = [&](const at::Tensor& in, const uint8_t* bb, const uint8_t* ss, int64_t M, int64_t Kin) {
    auto y = at::empty({in.size(0), M}, at::kFloat);
    for (int64_t r = 0; r < M; r += kTileRows) {
      const int64_t rows = std::min(kTileRows, M - r);
      auto w = dequantize_rows(bb + r * Kin / 2, ss + r * Kin / kBlock, rows, Kin);
      y.slice(1, r, r + rows).copy_(at::mm(in, w.t()));
    }
    return y;
  };
  for (int64_t e = 0; e < E; ++e) {
    const auto& entries = tokens[e];
    if (static_cast<int64_t>(entries.size()) <= small_n) continue;
    std::vector<int64_t> rows;
    for (auto i : entries) rows.push_back(i / k);
    auto xe = x.index_select(0, at::tensor(rows, at::kLong));
    auto gate_up = tiled(xe, gbp + e * I2 * H / 2, gsp + e * I2 * H / kBlock, I2, H);
    auto act = at::empty({xe.size(0), I}, at::kFloat);
    const float* gp = gate_up.data_ptr<float>();
    float* ap = act.data_ptr<float>();
    at::parallel_for(0, xe.size(0), 16, [&](int64_t b, int64_t end) {
      for (int64_t t = b; t < end; ++t) swiglu_row(gp + t * I2, gub_p + e * I2, I, alpha, limit, ap + t * I);
    });
    auto y = tiled(act, dbp + e * H * I / 2, dsp + e * H * I / kBlock, H, I);
    accumulate(entries, y.data_ptr<float>(), dnb_p + e * H);
  }
  return out;
}

const Kernels& active_kernels() { return active(); }

}  // namespace gptoss_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace gptoss_cpu;
  m.def("isa", &isa, "the instruction set the kernels run on: avx512, avx2 or scalar");
  m.def("available", &available, "the instruction sets this CPU can run");
  m.def("set_isa", &set_isa, "run the kernels of one instruction set (scalar, avx2, avx512, or best)");
  m.def("set_fixed_point", [](bool on) { g_fixed = on; },
        "MXFP4 kernels on fixed-point activations (True, the default) or on floats (False: the slower lookup)");
  m.def("fixed_point", [] { return g_fixed.load(); }, "whether the MXFP4 kernels take fixed-point activations (where the instruction set has such kernels: "
        "AVX-512 and AVX2, not the scalar one)");
  m.def("mxfp4_linear", &mxfp4_linear, "x @ W^T (+ bias) with W packed in MXFP4", py::arg("x"), py::arg("blocks"),
        py::arg("scales"), py::arg("bias") = py::none());
  m.def("mxfp4_dequantize", &mxfp4_dequantize, "W as float32", py::arg("blocks"), py::arg("scales"));
  m.def("bf16_linear", &bf16_linear, "x @ W^T (+ bias) with W in bf16", py::arg("x"), py::arg("w"),
        py::arg("bias") = py::none(), py::arg("small_n") = 32);
  m.def("moe_forward", &moe_forward, "gpt-oss's expert block with packed MXFP4 experts", py::arg("x"), py::arg("idx"),
        py::arg("weights"), py::arg("gu_blocks"), py::arg("gu_scales"), py::arg("gu_bias"), py::arg("dn_blocks"),
        py::arg("dn_scales"), py::arg("dn_bias"), py::arg("alpha"), py::arg("limit"), py::arg("small_n") = 32);
  m.def("decode_attention", &decode_attention, "one query token's attention with sinks: (out (B,1,H,D), weights (B,H,1,k))",
        py::arg("query"), py::arg("key"), py::arg("value"), py::arg("mask"), py::arg("sinks"), py::arg("scaling"),
        py::arg("start") = 0, py::arg("with_weights") = true);
  m.def("decode_layer_qkv", &decode_layer_qkv, "a decoder layer for one token, up to the cache: (q, k, v)");
  m.def("decode_layer_rest", &decode_layer_rest, "a decoder layer for one token, from the updated cache: hidden");
  m.def("rms_norm", &rms_norm, "gpt-oss's RMSNorm of float32 rows", py::arg("x"), py::arg("weight"), py::arg("eps"));
  m.def("router", &router, "gpt-oss's router: (logits, top-k softmax scores, top-k indices)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("k"));
  m.def("qkv_rope", &qkv_rope, "q, k, v projections (bf16 weights) with the rotary embedding on q and k", py::arg("x"),
        py::arg("wq"), py::arg("bq"), py::arg("wk"), py::arg("bk"), py::arg("wv"), py::arg("bv"), py::arg("cos"),
        py::arg("sin"), py::arg("head_dim"));
}
