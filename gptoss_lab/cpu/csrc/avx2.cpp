// AVX2 + FMA: 8 floats a vector. A group's 16 bytes widen in two halves of 8; vpermps looks up the
// magnitude from an index's low 3 bits and the sign bit (bit 3, or bit 7 for the high nibble) is
// shifted to bit 31 and xor-ed in.
// The fixed-point kernel (mxfp4_fixed) takes two groups (32 bytes) a step: pshufb gives the doubled
// codes of each nibble, vpmaddubsw and vpmaddwd multiply them by the activations' three byte planes
// into 8 lane sums, and one conversion, multiply and FMA scale them.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define TARGET __attribute__((target("avx2,fma")))

namespace gptoss_cpu {
namespace {

TARGET inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// The 8 e2m1 values coded in the low nibbles of v (one code per 32-bit lane), and the high nibbles'.
TARGET inline void decode8(__m256i v, __m256 mags, __m256& lo, __m256& hi) {
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i vh = _mm256_srli_epi32(v, 4);
  const __m256 lo_mag = _mm256_permutevar8x32_ps(mags, v);
  const __m256 hi_mag = _mm256_permutevar8x32_ps(mags, vh);
  lo = _mm256_xor_ps(lo_mag, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(v, 28), sign)));
  hi = _mm256_xor_ps(hi_mag, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(vh, 28), sign)));
}

// The same, times the group's scale.
TARGET inline void decode8(__m256i v, __m256 mags, __m256 sc, __m256& lo, __m256& hi) {
  decode8(v, mags, lo, hi);
  lo = _mm256_mul_ps(lo, sc);
  hi = _mm256_mul_ps(hi, sc);
}

TARGET inline __m256i widen8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

template <int N>
TARGET void mxfp4_row(const float* xs, int64_t K, const uint8_t* b, const uint8_t* s, float* out, int64_t ldo) {
  // Independent accumulators so that the FMAs of a group do not wait on each other's latency; with
  // four tokens in flight two per token are enough (and sixteen registers are all AVX2 has).
  constexpr int A = N <= 2 ? 4 : 2;
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  const __m256 mags = _mm256_loadu_ps(kE2M1);  // the 8 magnitudes: codes 0..7
  __m256 acc[N][A];
  for (int t = 0; t < N; ++t)
    for (int a = 0; a < A; ++a) acc[t][a] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const __m256 sc = _mm256_set1_ps(scale[s[g]]);
    __m256 lo0, hi0, lo1, hi1;
    decode8(widen8(b + g * 16), mags, sc, lo0, hi0);      // bytes 0..7: even elements 0..7, odd 0..7
    decode8(widen8(b + g * 16 + 8), mags, sc, lo1, hi1);  // bytes 8..15
    for (int t = 0; t < N; ++t) {
      const float* x = xs + t * K + g * 32;  // split: evens x[0..15], odds x[16..31]
      acc[t][0] = _mm256_fmadd_ps(lo0, _mm256_loadu_ps(x), acc[t][0]);
      acc[t][1 % A] = _mm256_fmadd_ps(lo1, _mm256_loadu_ps(x + 8), acc[t][1 % A]);
      acc[t][2 % A] = _mm256_fmadd_ps(hi0, _mm256_loadu_ps(x + 16), acc[t][2 % A]);
      acc[t][3 % A] = _mm256_fmadd_ps(hi1, _mm256_loadu_ps(x + 24), acc[t][3 % A]);
    }
  }
  for (int t = 0; t < N; ++t) {
    __m256 sum = acc[t][0];
    for (int a = 1; a < A; ++a) sum = _mm256_add_ps(sum, acc[t][a]);
    out[t * ldo] = hsum(sum);
  }
}

// One token (decode): the scale applied once per group to the partial sum, two groups in flight.
template <>
TARGET void mxfp4_row<1>(const float* x, int64_t K, const uint8_t* b, const uint8_t* s, float* out, int64_t) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  const __m256 mags = _mm256_loadu_ps(kE2M1);
  auto group = [&](int64_t g) TARGET {
    __m256 lo0, hi0, lo1, hi1;
    decode8(widen8(b + g * 16), mags, lo0, hi0);
    decode8(widen8(b + g * 16 + 8), mags, lo1, hi1);
    const float* xg = x + g * 32;
    __m256 p = _mm256_mul_ps(lo0, _mm256_loadu_ps(xg));
    __m256 q = _mm256_mul_ps(lo1, _mm256_loadu_ps(xg + 8));
    p = _mm256_fmadd_ps(hi0, _mm256_loadu_ps(xg + 16), p);
    q = _mm256_fmadd_ps(hi1, _mm256_loadu_ps(xg + 24), q);
    return _mm256_mul_ps(_mm256_add_ps(p, q), _mm256_set1_ps(scale[s[g]]));
  };
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(b + g * 16 + kPrefetchAhead), _MM_HINT_T0);
    acc0 = _mm256_add_ps(acc0, group(g));
    acc1 = _mm256_add_ps(acc1, group(g + 1));
  }
  if (g < G) acc0 = _mm256_add_ps(acc0, group(g));
  *out = hsum(_mm256_add_ps(acc0, acc1));
}

TARGET inline __m256i dot_pairs(__m256i acc, __m256i wl, const uint8_t* even, __m256i wh, const uint8_t* odd) {
  const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(even));
  const __m256i o = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd));
  // |(code + 12) * byte| <= 24 * 128, so the 16-bit pair sums (4 products) cannot saturate
  const __m256i sums = _mm256_add_epi16(_mm256_maddubs_epi16(wl, e), _mm256_maddubs_epi16(wh, o));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(sums, _mm256_set1_epi16(1)));
}

// R consecutive rows (row i's blocks at b + i * G * 16, its scales at s + i * G) against one fixed-point token.
template <int R>
TARGET void fixed_rows(const uint8_t* xq, int64_t K, const uint8_t* b, const uint8_t* s, float* out) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kE2M1Twice12)));
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  auto pair = [&](int64_t g, bool both) TARGET {  // groups g and g + 1 (g even: one half of a superblock)
    const uint8_t* p = xq + (g / kSuper) * kSuperBytes + (g % kSuper) * 16;
    const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 384));  // lanes and steps: the same offsets
    const __m256 step = _mm256_loadu_ps(reinterpret_cast<const float*>(p + 448));
    for (int i = 0; i < R; ++i) {
      const uint8_t* row = b + i * G * 16 + g * 16;
      if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(row + kFixedAhead * R * G * 16), _MM_HINT_T1);
      const __m256i v = both ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row))
                             : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
      const __m256i wl = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low4));
      const __m256i wh = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
      const __m256i a0 = dot_pairs(corr, wl, p, wh, p + 64);
      const __m256i a1 = dot_pairs(_mm256_setzero_si256(), wl, p + 128, wh, p + 192);
      const __m256i a2 = dot_pairs(_mm256_setzero_si256(), wl, p + 256, wh, p + 320);
      const __m256i total = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(a2, 16), _mm256_slli_epi32(a1, 8)), a0);
      const __m256 sc = _mm256_set_m128(_mm_set1_ps(both ? scale[s[i * G + g + 1]] : 0.0f), _mm_set1_ps(scale[s[i * G + g]]));
      acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(total), step), sc, acc[i]);
    }
  };
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) pair(g, true);
  if (g < G) pair(g, false);
  for (int i = 0; i < R; ++i) out[i] = hsum(acc[i]);
}

TARGET void mxfp4_fixed(const uint8_t* xq, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                        int64_t r0, int64_t r1, float* out, int64_t ldo) {
  by_fixed_rows<2>(xq, n, K, blocks, scales, r0, r1, out, ldo,
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

TARGET inline __m256 bf16x8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

template <int N>
TARGET void bf16_row(const float* x, int64_t K, const uint16_t* w, float* out, int64_t ldo) {
  __m256 acc[N];
  for (int t = 0; t < N; ++t) acc[t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 wv = bf16x8(w + k);
    for (int t = 0; t < N; ++t) acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * K + k), acc[t]);
  }
  for (int t = 0; t < N; ++t) {
    float total = hsum(acc[t]);
    for (int64_t j = k; j < K; ++j) {
      const uint32_t bits = static_cast<uint32_t>(w[j]) << 16;
      float f;
      __builtin_memcpy(&f, &bits, sizeof f);
      total += f * x[t * K + j];
    }
    out[t * ldo] = total;
  }
}

// One token: four accumulators, so that the FMAs of a row do not wait on each other's latency (one
// accumulator held a 1.16-GB bf16 mat-vec to 30 GB/s on 2 cores even in cache; four: see the commit).
template <>
TARGET void bf16_row<1>(const float* x, int64_t K, const uint16_t* w, float* out, int64_t) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 32 <= K; k += 32)
    for (int u = 0; u < 4; ++u)
      acc[u] = _mm256_fmadd_ps(bf16x8(w + k + 8 * u), _mm256_loadu_ps(x + k + 8 * u), acc[u]);
  for (; k + 8 <= K; k += 8) acc[0] = _mm256_fmadd_ps(bf16x8(w + k), _mm256_loadu_ps(x + k), acc[0]);
  float total = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; k < K; ++k) {
    const uint32_t bits = static_cast<uint32_t>(w[k]) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    total += f * x[k];
  }
  *out = total;
}

// One token against rows whose width is a multiple of 16, x split per 16 columns (split_pairs, 8 lanes): a
// 32-byte load holds 16 bf16 values as 8 pairs; the even value becomes a float by a shift, the odd one by
// masking off the even one (see avx512.cpp: half the instructions of widening them).
TARGET void bf16_row_pairs(const float* xs, int64_t K, const uint16_t* w, float* out) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 32 <= K; k += 32)
    for (int u = 0; u < 2; ++u) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 16 * u));
      acc[2 * u] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(xs + k + 16 * u), acc[2 * u]);
      acc[2 * u + 1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), _mm256_loadu_ps(xs + k + 16 * u + 8),
                                       acc[2 * u + 1]);
    }
  if (k < K) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    acc[0] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(xs + k), acc[0]);
    acc[1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), _mm256_loadu_ps(xs + k + 8), acc[1]);
  }
  *out = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

TARGET void bf16_rows(const float* x, int64_t n, int64_t K, const uint16_t* w, int64_t r0, int64_t r1, float* out,
                      int64_t ldo) {
  if (n == 1 && K % 16 == 0) {
    const float* xs = split_pairs(x, K, 8);
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
  const __m256 mags = _mm256_loadu_ps(kE2M1);
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* b = blocks + (r * G + g) * 16;
      const __m256 sc = _mm256_set1_ps(scale[scales[r * G + g]]);
      for (int half = 0; half < 2; ++half) {
        __m256 lo, hi;
        decode8(widen8(b + half * 8), mags, sc, lo, hi);
        // interleave: (lo0 hi0 lo1 hi1 ...) within 128-bit lanes, then put the lanes in order
        const __m256 a = _mm256_unpacklo_ps(lo, hi);  // lo0 hi0 lo1 hi1 | lo4 hi4 lo5 hi5
        const __m256 c = _mm256_unpackhi_ps(lo, hi);  // lo2 hi2 lo3 hi3 | lo6 hi6 lo7 hi7
        _mm256_storeu_ps(o + g * 32 + half * 16, _mm256_permute2f128_ps(a, c, 0x20));
        _mm256_storeu_ps(o + g * 32 + half * 16 + 8, _mm256_permute2f128_ps(a, c, 0x31));
      }
    }
  }
}

}  // namespace

Kernels avx2_kernels() { return {"avx2", mxfp4_rows, bf16_rows, mxfp4_dequant, mxfp4_fixed}; }

Mxfp4FixedFn avx2_fixed() { return mxfp4_fixed; }

}  // namespace gptoss_cpu
#endif
