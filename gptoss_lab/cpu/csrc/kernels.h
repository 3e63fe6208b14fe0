// The CPU MXFP4 engine's kernels: one file per instruction set (scalar.cpp, avx2.cpp, avx512.cpp)
// behind this one table, chosen at run time in ops.cpp.
//
// Layouts (gpt-oss's checkpoints, used as they are):
//   MXFP4 weight W (M rows, K columns): blocks uint8 [M][K/32][16] (two e2m1 codes per byte, the
//   lower-indexed element in the low nibble) and scales uint8 [M][K/32] (E8M0: 2^(s-127)).
//   bf16 weight W (M rows, K columns): uint16 [M][K], row-major.
// Activations are float32. An MXFP4 kernel takes them "split": for every group of 32 columns, the 16
// even-indexed values then the 16 odd-indexed ones (split_groups), so that a byte's low nibble meets
// the first half and its high nibble the second, with no shuffle in the inner loop.
#pragma once
#include <cstdint>
#include <type_traits>

namespace gptoss_cpu {

constexpr int64_t kBlock = 32;
// How far ahead (bytes) a one-token MXFP4 row kernel asks for its blocks: decoding is compute-heavy, and
// the hardware prefetcher alone left the core waiting on memory (2 cores here: 18 -> 21-24 GB/s at 2048,
// less at 1024 or 4096). Rows are contiguous, so this reaches into the next rows of the same matrix.
// The bf16 kernels stream at the bandwidth already; a prefetch there made them slower.
constexpr int64_t kPrefetchAhead = 2048;

// f(t, std::integral_constant<int, N>) over the tokens [0, n): four at a time (kept in registers
// through a pass over a row), then the one to three left. Each ISA file's row kernels take N as a template.
template <typename F>
inline void by_token_chunks(int64_t n, F&& f) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) f(t, std::integral_constant<int, 4>{});
  switch (n - t) {
    case 3: f(t, std::integral_constant<int, 3>{}); break;
    case 2: f(t, std::integral_constant<int, 2>{}); break;
    case 1: f(t, std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// out[t * ldo + r] = sum_k W[r][k] * x[t][k] for rows r in [r0, r1) and tokens t < n
// (xs: n tokens of K split floats, one after another).
using Mxfp4RowsFn = void (*)(const float* xs, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                             int64_t r0, int64_t r1, float* out, int64_t ldo);
// The same for a bf16 weight; x: n tokens of K floats in natural order.
using Bf16RowsFn = void (*)(const float* x, int64_t n, int64_t K, const uint16_t* w, int64_t r0, int64_t r1,
                            float* out, int64_t ldo);
// Rows [r0, r1) of W as float32, natural order: out[(r - r0) * K + k].
using Mxfp4DequantFn = void (*)(const uint8_t* blocks, const uint8_t* scales, int64_t K, int64_t r0, int64_t r1,
                                float* out);

struct Kernels {
  const char* name;  // "scalar", "avx2", "avx512"
  Mxfp4RowsFn mxfp4_rows;
  Bf16RowsFn bf16_rows;
  Mxfp4DequantFn mxfp4_dequant;
};

Kernels scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
Kernels avx2_kernels();
Kernels avx512_kernels();
#endif

// The 16 e2m1 values by code (sign in bit 3) and the 256 E8M0 scales, as the MX spec defines them
// (255, NaN in the spec, decodes to +inf here, as torch.ldexp and transformers do).
extern const float kE2M1[16];
const float* e8m0_table();

}  // namespace gptoss_cpu
