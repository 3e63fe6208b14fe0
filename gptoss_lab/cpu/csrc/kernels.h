// The CPU MXFP4 engine's kernels: one file per instruction set (scalar.cpp, avx2.cpp, avx512.cpp)
// behind this one table, chosen at run time in ops.cpp.
//
// Layouts (gpt-oss's checkpoints, used as they are):
//   MXFP4 weight W (M rows, K columns): blocks uint8 [M][K/32][16] (two e2m1 codes per byte, the
//   lower-indexed element in the low nibble) and scales uint8 [M][K/32] (E8M0: 2^(s-127)).
//   bf16 weight W (M rows, K columns): uint16 [M][K], row-major.
// Activations are float32. The MXFP4 kernels take them in one of two forms:
//  - "fixed" (mxfp4_fixed, used where the table has one: AVX2, AVX-512): quantize_fixed turns each group of 32 into 24-bit fixed point
//    scaled to the group's largest magnitude (+-8355711 steps: a float32 mantissa's precision), so that
//    a weight's e2m1 code, doubled, is an integer in [-12, 12] that multiplies it exactly in 32-bit
//    integers (vpdpbusd / vpmaddubsw on the value's three bytes), and only the group's sum is scaled in
//    float32. Per element that is half as many vector instructions as the float lookup below; the result
//    agrees with float32 arithmetic to its own rounding (see fixed_bytes for the layout);
//  - "split" (mxfp4_rows, for what quantize_fixed refuses: a non-finite or vanishingly small group):
//    for every group of 32 columns, the 16 even-indexed values then the 16 odd-indexed ones
//    (split_groups), so that a byte's low nibble meets the first half and its high nibble the second.
#pragma once
#include <cstdint>
#include <type_traits>

// Portable loops (attention.cpp, layers.cpp) compiled once per x86-64 level and picked when the library
// loads (GCC on x86-64 Linux; elsewhere the compiler's default target).
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

namespace gptoss_cpu {

constexpr int64_t kBlock = 32;
// How far ahead (bytes) a one-token MXFP4 row kernel asks for its blocks: decoding is compute-heavy, and
// the hardware prefetcher alone left the core waiting on memory (2 cores here: 18 -> 21-24 GB/s at 2048,
// less at 1024 or 4096). Rows are contiguous, so this reaches into the next rows of the same matrix.
// The bf16 kernels stream at the bandwidth already; a prefetch there made them slower.
constexpr int64_t kPrefetchAhead = 2048;
// The fixed-point kernels read R rows side by side: each asks for the line kFixedAhead sets of R rows on,
// at the same column, into L2, one per 64 bytes read (2 cores here, 1.2-GB mat-vec at 31-33 GB/s of read
// bandwidth: none 12-13 GB/s, 2048 bytes ahead into L1 15-17, the next rows into L1 19-21, into L2 24-25;
// a decoded token's 4 experts of 20b's shape, at 32 GB/s: the next set 26.3 GB/s, two sets on 27.8).
constexpr int64_t kFixedAhead = 2;

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
// The same with tokens in fixed point (xq: n tokens of fixed_bytes(K) bytes each, from quantize_fixed).
using Mxfp4FixedFn = void (*)(const uint8_t* xq, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales,
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
  Mxfp4FixedFn mxfp4_fixed;  // nullptr: this instruction set takes split floats only
};

// Fixed-point activations, a superblock (4 groups, 128 columns) at a time, 512 bytes each:
//   [0, 384)    six planes of 64 int8: plane 2p + parity holds byte p (0: lowest) of the values, each
//               balanced to [-128, 127], of the even (parity 0) or odd (1) elements: plane byte j is
//               element 2 * (j % 16) + parity of the superblock's group j / 16, the same position as the
//               code it meets in the low (parity 0) or high nibble of the weight's byte j;
//   [384, 448)  16 int32, one per 4 bytes of a plane (a lane): -12 * the sum of the lane's 8 values, which
//               undoes the +12 that makes the doubled codes unsigned for vpdpbusd / vpmaddubsw;
//   [448, 512)  16 float32: the lane's group's step (its largest magnitude / 8355711) / 2.
// A last, partial superblock is zero in the groups it lacks.
constexpr int64_t kSuper = 4;
constexpr int64_t kSuperBytes = 512;
constexpr int32_t kFixedTop = 8355711;  // 127 * 65536 + 127 * 256 + 127: three balanced bytes
inline int64_t fixed_bytes(int64_t K) { return (K / kBlock + kSuper - 1) / kSuper * kSuperBytes; }

// The fixed-point kernels' walk (mxfp4_fixed): for each of n tokens (xq: fixed_bytes(K) bytes each), the rows
// [r0, r1) R at a time (they share each load of the activations), then one at a time for the rows left:
// rows(std::integral_constant<int, C>, token, blocks of row r, scales of row r, out[C]) with C = R or 1.
template <int R, typename F>
inline void by_fixed_rows(const uint8_t* xq, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                          int64_t r0, int64_t r1, float* out, int64_t ldo, F&& rows) {
  const int64_t G = K / kBlock, stride = fixed_bytes(K);
  auto run = [&](int64_t t, int64_t r, auto chunk) {
    constexpr int C = decltype(chunk)::value;
    float got[C];
    rows(chunk, xq + t * stride, blocks + r * G * 16, scales + r * G, got);
    for (int i = 0; i < C; ++i) out[t * ldo + r + i] = got[i];
  };
  for (int64_t t = 0; t < n; ++t) {
    int64_t r = r0;
    for (; r + R <= r1; r += R) run(t, r, std::integral_constant<int, R>{});
    for (; r < r1; ++r) run(t, r, std::integral_constant<int, 1>{});
  }
}
// One token's K floats for the bf16 kernels that read a row's bf16 pairs as 32-bit lanes: each block of
// 2 * lanes columns as its `lanes` even-indexed values, then its odd-indexed ones (K a multiple of 2 * lanes).
// Written into this thread's buffer, which it returns.
const float* split_pairs(const float* x, int64_t K, int lanes);
// False (out unspecified) if a group's largest magnitude is not finite or below 1e-30 (whose steps would
// lose precision in float32): the caller then uses the split-float kernels for these tokens.
bool quantize_fixed(const float* x, int64_t K, uint8_t* out);
// The doubled e2m1 codes plus 12 (unsigned, for the byte dot products), in pshufb's table order.
extern const int8_t kE2M1Twice12[16];

Kernels scalar_kernels();
// The table ops.cpp chose (from what the CPU reports, or set_isa): what every op runs.
const Kernels& active_kernels();
#if defined(__x86_64__) || defined(_M_X64)
Kernels avx2_kernels();
Kernels avx512_kernels();
bool avx512_has_vnni();        // else avx512_kernels() takes AVX2's mxfp4_fixed
Mxfp4FixedFn avx2_fixed();
#endif

// The 16 e2m1 values by code (sign in bit 3) and the 256 E8M0 scales, as the MX spec defines them
// (255, NaN in the spec, decodes to +inf here, as torch.ldexp and transformers do).
extern const float kE2M1[16];
const float* e8m0_table();

}  // namespace gptoss_cpu
