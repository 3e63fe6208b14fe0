// AVX-512 (F + BW): 16 floats a vector. One group of 32 MXFP4 weights is one 16-byte load widened to
// 16 lanes; vpermps looks up the low nibble (it reads only an index's low 4 bits) and, after a shift,
// the high one, so a group costs two lookups, two scale multiplies and two FMAs per token.
// With VNNI, the fixed-point kernel (mxfp4_fixed) takes 64 bytes (4 groups) a step: one pshufb per
// nibble gives 64 doubled codes and six vpdpbusd multiply them by the activations' three byte planes; four
// rows share each load of the activations, and one conversion, multiply and FMA scale their 16 group sums.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

namespace gptoss_cpu {
namespace {

template <int N>
TARGET void mxfp4_row(const float* xs, int64_t K, const uint8_t* b, const uint8_t* s, float* out, int64_t ldo) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  const __m512 lut = _mm512_loadu_ps(kE2M1);
  __m512 lo_acc[N], hi_acc[N];
  for (int t = 0; t < N; ++t) lo_acc[t] = hi_acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + g * 16)));
    const __m512 sc = _mm512_set1_ps(scale[s[g]]);
    const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), sc);
    const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut), sc);
    for (int t = 0; t < N; ++t) {
      const float* x = xs + t * K + g * 32;
      lo_acc[t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), lo_acc[t]);
      hi_acc[t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), hi_acc[t]);
    }
  }
  for (int t = 0; t < N; ++t) out[t * ldo] = _mm512_reduce_add_ps(_mm512_add_ps(lo_acc[t], hi_acc[t]));
}

// One token (decode): two groups per step into independent accumulators, so that FMA latency never
// waits, and the scale applied once per group to the partial sum rather than to every weight.
template <>
TARGET void mxfp4_row<1>(const float* x, int64_t K, const uint8_t* b, const uint8_t* s, float* out, int64_t) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  const __m512 lut = _mm512_loadu_ps(kE2M1);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  auto group = [&](int64_t g) TARGET {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + g * 16)));
    const __m512 lo = _mm512_permutexvar_ps(v, lut);
    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
    const __m512 part = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + g * 32 + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(x + g * 32)));
    return _mm512_mul_ps(part, _mm512_set1_ps(scale[s[g]]));
  };
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(b + g * 16 + kPrefetchAhead), _MM_HINT_T0);
    acc0 = _mm512_add_ps(acc0, group(g));
    acc1 = _mm512_add_ps(acc1, group(g + 1));
  }
  if (g < G) acc0 = _mm512_add_ps(acc0, group(g));
  *out = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// One superblock (4 groups, 128 columns) of one row against a fixed-point token: 16 int32 lane sums, lanes
// 4g..4g+3 holding group g's (the activations' correction corr included). Exact: |sum| <= 8 * 12 * 8355711.
TARGET_VNNI inline __m512i row_sums(__m512i v, __m512i table, __m512i e0, __m512i o0, __m512i e1, __m512i o1, __m512i e2,
                                    __m512i o2, __m512i corr) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i wl = _mm512_shuffle_epi8(table, _mm512_and_si512(v, low4));
  const __m512i wh = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
  const __m512i a0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr, wl, e0), wh, o0);
  const __m512i a1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, e1), wh, o1);
  const __m512i a2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, e2), wh, o2);
  return _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(a2, 16), _mm512_slli_epi32(a1, 8)), a0);
}

// The scales of a superblock's `groups` groups (the rest 0) of one row, a byte each, lowest group first.
inline uint32_t four_scales(const uint8_t* s, int groups) {
  uint32_t four = 0;
  if (groups == kSuper) __builtin_memcpy(&four, s, 4);
  else for (int j = 0; j < groups; ++j) four |= static_cast<uint32_t>(s[j]) << (8 * j);
  return four;
}

// R (1 or 4) consecutive rows (row i's blocks at b + i * G * 16, its scales at s + i * G) against one
// fixed-point token. Four rows share each load of the activations (kept in registers: folded into each row's
// instructions they were loaded four times), and their lane sums are reduced together: the four rows'
// sums of group g land in lanes 4g..4g+3 of one vector, so that one conversion, one scale vector and one
// FMA serve all four (per row and superblock, 23 vector instructions instead of 28: 19 -> 21 GB/s a core).
template <int R>
TARGET_VNNI void fixed_rows(const uint8_t* xq, int64_t K, const uint8_t* b, const uint8_t* s, float* out) {
  static_assert(R == 1 || R == 4, "one row or four");
  const int64_t G = K / kBlock, full = G / kSuper, rest = G % kSuper;
  const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kE2M1Twice12)));
  // bytes r * 4 + g (row r's scale of group g) -> g * 4 + r
  const __m128i transpose = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512 acc = _mm512_setzero_ps();  // R == 4: lane 4g + r (row r); R == 1: lane 4g + j (group g)
  auto superblock = [&](int64_t q, int groups) TARGET_VNNI {
    const __mmask64 valid = groups == kSuper ? ~0ull : (1ull << (groups * 16)) - 1;
    const uint8_t* p = xq + q * kSuperBytes;
    __m512i e0 = _mm512_loadu_si512(p), o0 = _mm512_loadu_si512(p + 64);
    __m512i e1 = _mm512_loadu_si512(p + 128), o1 = _mm512_loadu_si512(p + 192);
    __m512i e2 = _mm512_loadu_si512(p + 256), o2 = _mm512_loadu_si512(p + 320);
    asm("" : "+v"(e0), "+v"(o0), "+v"(e1), "+v"(o1), "+v"(e2), "+v"(o2));  // loaded once, kept in registers
    const __m512i corr = _mm512_loadu_si512(p + 384);
    const __m512 step = _mm512_loadu_ps(reinterpret_cast<const float*>(p + 448));
    __m512i sums[R];
    uint32_t four[4] = {0, 0, 0, 0};
    for (int i = 0; i < R; ++i) {
      const uint8_t* row = b + i * G * 16 + q * 64;
      _mm_prefetch(reinterpret_cast<const char*>(row + kFixedAhead * R * G * 16), _MM_HINT_T1);  // R rows on
      __m512i v = _mm512_maskz_loadu_epi8(valid, row);
      asm("" : "+v"(v));  // one load (folded, it was loaded twice)
      sums[i] = row_sums(v, table, e0, o0, e1, o1, e2, o2, corr);
      four[i] = four_scales(s + i * G + q * kSuper, groups);
    }
    __m512 total;
    __m128i scale8;
    if constexpr (R == 4) {
      // lanes 4g..4g+3 of row r -> lane 4g + r: pairs added in int32 (exact), the rest in float
      const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(sums[0], sums[1]), _mm512_unpackhi_epi32(sums[0], sums[1]));
      const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(sums[2], sums[3]), _mm512_unpackhi_epi32(sums[2], sums[3]));
      const __m512d f01 = _mm512_castps_pd(_mm512_cvtepi32_ps(s01)), f23 = _mm512_castps_pd(_mm512_cvtepi32_ps(s23));
      total = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(f01, f23)), _mm512_castpd_ps(_mm512_unpackhi_pd(f01, f23)));
      scale8 = _mm_shuffle_epi8(_mm_setr_epi32(static_cast<int>(four[0]), static_cast<int>(four[1]),
                                               static_cast<int>(four[2]), static_cast<int>(four[3])), transpose);
    } else {
      total = _mm512_cvtepi32_ps(sums[0]);
      scale8 = _mm_shuffle_epi8(_mm_cvtsi32_si128(static_cast<int>(four[0])), _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
    }
    // E8M0 -> float: the byte into the exponent field; 0 -> 2^-127, a subnormal (0x00400000)
    const __m512i bits = _mm512_slli_epi32(_mm512_cvtepu8_epi32(scale8), 23);
    const __m512 scale = _mm512_castsi512_ps(_mm512_max_epu32(bits, _mm512_set1_epi32(0x00400000)));
    acc = _mm512_fmadd_ps(_mm512_mul_ps(total, step), scale, acc);  // step first: a product of small scale
                                                                     // and step could be subnormal
  };
  for (int64_t q = 0; q < full; ++q) superblock(q, kSuper);
  if (rest) superblock(full, static_cast<int>(rest));
  if constexpr (R == 4) {  // row r: lanes r, 4 + r, 8 + r, 12 + r
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  } else {
    out[0] = _mm512_reduce_add_ps(acc);
  }
}

TARGET_VNNI void mxfp4_fixed(const uint8_t* xq, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                             int64_t r0, int64_t r1, float* out, int64_t ldo) {
  by_fixed_rows<4>(xq, n, K, blocks, scales, r0, r1, out, ldo,
                   [K](auto chunk, const uint8_t* x, const uint8_t* b, const uint8_t* s, float* got) {
                     fixed_rows<decltype(chunk)::value>(x, K, b, s, got);
                   });
}

TARGET void mxfp4_rows(const float* xs, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                       int64_t r0, int64_t r1, float* out, int64_t ldo) {
  const int64_t G = K / kBlock;
  for (int64_t r = r0; r < r1; ++r)
    by_token_chunks(n, [&](int64_t t, auto chunk) {
      mxfp4_row<decltype(chunk)::value>(xs + t * K, K, blocks + r * G * 16, scales + r * G, out + t * ldo + r, ldo);
    });
}

TARGET inline __m512 bf16x16(const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

TARGET inline __m512 bf16_tail(const uint16_t* p, int64_t count) {
  const __mmask16 m = static_cast<__mmask16>((1u << count) - 1);
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <int N>
TARGET void bf16_row(const float* x, int64_t K, const uint16_t* w, float* out, int64_t ldo) {
  __m512 acc[N];
  for (int t = 0; t < N; ++t) acc[t] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 wv = bf16x16(w + k);
    for (int t = 0; t < N; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * K + k), acc[t]);
  }
  if (k < K) {
    const int64_t rest = K - k;
    const __mmask16 m = static_cast<__mmask16>((1u << rest) - 1);
    const __m512 wv = bf16_tail(w + k, rest);
    for (int t = 0; t < N; ++t) acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * K + k), acc[t]);
  }
  for (int t = 0; t < N; ++t) out[t * ldo] = _mm512_reduce_add_ps(acc[t]);
}

// One token: four accumulators, so that the FMAs of a row do not wait on each other's latency.
template <>
TARGET void bf16_row<1>(const float* x, int64_t K, const uint16_t* w, float* out, int64_t) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t k = 0;
  for (; k + 64 <= K; k += 64)
    for (int u = 0; u < 4; ++u)
      acc[u] = _mm512_fmadd_ps(bf16x16(w + k + 16 * u), _mm512_loadu_ps(x + k + 16 * u), acc[u]);
  for (; k + 16 <= K; k += 16) acc[0] = _mm512_fmadd_ps(bf16x16(w + k), _mm512_loadu_ps(x + k), acc[0]);
  if (k < K) {
    const int64_t rest = K - k;
    const __mmask16 m = static_cast<__mmask16>((1u << rest) - 1);
    acc[1] = _mm512_fmadd_ps(bf16_tail(w + k, rest), _mm512_maskz_loadu_ps(m, x + k), acc[1]);
  }
  *out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// One token against rows whose width is a multiple of 32, x split per 32 columns (split_pairs, 16 lanes):
// a 64-byte load of a row holds 32 bf16 values, lane i of it the pair (2i, 2i+1); the even value becomes a
// float by a shift, the odd one by masking off the even one. Widening 16 values to floats (a cross-lane
// vpmovzxwd) and a shift per 16 weights kept a core below the bus: a 1.16-GB mat-vec on 2 cores at a
// moment the bus gave a plain read 62.7 GB/s ran at 52.8 GB/s, this way at 60.7.
TARGET void bf16_row_pairs(const float* xs, int64_t K, const uint16_t* w, float* out) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t k = 0;
  for (; k + 64 <= K; k += 64)
    for (int u = 0; u < 2; ++u) {
      const __m512i v = _mm512_loadu_si512(w + k + 32 * u);
      acc[2 * u] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(xs + k + 32 * u), acc[2 * u]);
      acc[2 * u + 1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), _mm512_loadu_ps(xs + k + 32 * u + 16),
                                       acc[2 * u + 1]);
    }
  if (k < K) {
    const __m512i v = _mm512_loadu_si512(w + k);
    acc[0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(xs + k), acc[0]);
    acc[1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), _mm512_loadu_ps(xs + k + 16), acc[1]);
  }
  *out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

TARGET void bf16_rows(const float* x, int64_t n, int64_t K, const uint16_t* w, int64_t r0, int64_t r1, float* out,
                      int64_t ldo) {
  if (n == 1 && K % 32 == 0) {
    const float* xs = split_pairs(x, K, 16);
    for (int64_t r = r0; r < r1; ++r) bf16_row_pairs(xs, K, w + r * K, out + r);
    return;
  }
  for (int64_t r = r0; r < r1; ++r)
    by_token_chunks(n, [&](int64_t t, auto chunk) {
      bf16_row<decltype(chunk)::value>(x + t * K, K, w + r * K, out + t * ldo + r, ldo);
    });
}

TARGET void mxfp4_dequant(const uint8_t* blocks, const uint8_t* scales, int64_t K, int64_t r0, int64_t r1,
                          float* out) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  const __m512 lut = _mm512_loadu_ps(kE2M1);
  // interleave lo/hi lanes back into natural order: out[2j] = lo[j], out[2j+1] = hi[j]
  const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const __m512i v =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + (r * G + g) * 16)));
      const __m512 sc = _mm512_set1_ps(scale[scales[r * G + g]]);
      const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), sc);
      const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut), sc);
      _mm512_storeu_ps(o + g * 32, _mm512_permutex2var_ps(lo, first, hi));
      _mm512_storeu_ps(o + g * 32 + 16, _mm512_permutex2var_ps(lo, second, hi));
    }
  }
}

}  // namespace

bool avx512_has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
}

Kernels avx512_kernels() {
  return {"avx512", mxfp4_rows, bf16_rows, mxfp4_dequant, avx512_has_vnni() ? mxfp4_fixed : avx2_fixed()};
}

}  // namespace gptoss_cpu
#endif
