// The scalar reference: portable C++ (ARM and Apple silicon build this, and the compiler vectorizes
// what it can); every SIMD file is tested against it on odd shapes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace gptoss_cpu {

const float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                         -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

const int8_t kE2M1Twice12[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

bool quantize_fixed(const float* x, int64_t K, uint8_t* out) {
  const int64_t G = K / kBlock;
  std::memset(out, 0, fixed_bytes(K));
  for (int64_t g = 0; g < G; ++g) {
    const float* xg = x + g * kBlock;
    float top = 0.0f;
    for (int i = 0; i < kBlock; ++i) {
      if (!std::isfinite(xg[i])) return false;
      top = std::max(top, std::fabs(xg[i]));
    }
    if (top != 0.0f && top < 1e-30f) return false;
    uint8_t* sb = out + (g / kSuper) * kSuperBytes;
    const int lane0 = static_cast<int>(g % kSuper) * 4;  // the group's first lane in its superblock
    const double inv = top == 0.0f ? 0.0 : kFixedTop / static_cast<double>(top);
    int32_t* corr = reinterpret_cast<int32_t*>(sb + 384);
    for (int j = 0; j < 16; ++j)
      for (int parity = 0; parity < 2; ++parity) {
        const auto v = static_cast<int32_t>(std::nearbyint(xg[2 * j + parity] * inv));
        const int32_t b2 = (v + 32896) >> 16;  // three balanced bytes: v = b2 * 65536 + b1 * 256 + b0
        const int32_t rest = v - b2 * 65536;
        const int32_t b1 = (rest + 128) >> 8;
        const int32_t b0 = rest - b1 * 256;
        const int64_t at = lane0 * 4 + j;  // the byte's index in each plane: group * 16 + j
        sb[(0 + parity) * 64 + at] = static_cast<uint8_t>(static_cast<int8_t>(b0));
        sb[(2 + parity) * 64 + at] = static_cast<uint8_t>(static_cast<int8_t>(b1));
        sb[(4 + parity) * 64 + at] = static_cast<uint8_t>(static_cast<int8_t>(b2));
        corr[at / 4] -= 12 * v;
      }
    float step = static_cast<float>(top / static_cast<double>(kFixedTop) / 2.0);
    for (int d = 0; d < 4; ++d) std::memcpy(sb + 448 + (lane0 + d) * 4, &step, 4);
  }
  return true;
}

const float* split_pairs(const float* x, int64_t K, int lanes) {
  thread_local std::vector<float> buf;
  buf.resize(K);
  for (int64_t b = 0; b < K; b += 2 * lanes)
    for (int j = 0; j < lanes; ++j) {
      buf[b + j] = x[b + 2 * j];
      buf[b + lanes + j] = x[b + 2 * j + 1];
    }
  return buf.data();
}

const float* e8m0_table() {
  static const auto* table = [] {
    static float t[256];
    for (int s = 0; s < 256; ++s) t[s] = std::ldexp(1.0f, s - 127);
    return t;
  }();
  return table;
}

namespace {

// An e2m1 code's value from its bits, with no table (a lookup would keep the compiler from vectorizing):
// exponent field e = bits 1-2, mantissa m = bit 0; e = 0 is 0 or 0.5, else (1 + m/2) * 2^(e-1); bit 3 the sign.
inline float e2m1(uint32_t code) {
  const uint32_t e = (code >> 1) & 3, m = code & 1;
  const uint32_t mag = e ? ((e + 126) << 23) | (m << 22) : m * (126u << 23);
  const uint32_t bits = mag | ((code & 8) << 28);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void mxfp4_rows(const float* xs, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales, int64_t r0,
                int64_t r1, float* out, int64_t ldo) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* b = blocks + r * G * 16;
    const uint8_t* s = scales + r * G;
    for (int64_t t = 0; t < n; ++t) {
      const float* x = xs + t * K;
      float acc[16] = {};  // one per byte of a group: the loop over j vectorizes
      for (int64_t g = 0; g < G; ++g) {
        const float sc = scale[s[g]];
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = b[g * 16 + j];
          acc[j] += (e2m1(byte & 15) * x[g * 32 + j] + e2m1(byte >> 4) * x[g * 32 + 16 + j]) * sc;
        }
      }
      float total = 0.0f;
      for (int j = 0; j < 16; ++j) total += acc[j];
      out[t * ldo + r] = total;
    }
  }
}

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Sixteen partial sums, one per column modulo 16: the compiler vectorizes them (NEON, SSE) without the
// reassociation a single sum would need (one sum ran a 2880-wide row at one multiply-add per FMA latency).
void bf16_rows(const float* x, int64_t n, int64_t K, const uint16_t* w, int64_t r0, int64_t r1, float* out,
               int64_t ldo) {
  constexpr int64_t L = 16;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * K;
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * K;
      float part[L] = {};
      int64_t k = 0;
      for (; k + L <= K; k += L)
        for (int64_t j = 0; j < L; ++j) part[j] += bf16_to_float(row[k + j]) * xt[k + j];
      float acc = 0.0f;
      for (int64_t j = 0; j < L; ++j) acc += part[j];
      for (; k < K; ++k) acc += bf16_to_float(row[k]) * xt[k];
      out[t * ldo + r] = acc;
    }
  }
}

void mxfp4_dequant(const uint8_t* blocks, const uint8_t* scales, int64_t K, int64_t r0, int64_t r1, float* out) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * K;
    for (int64_t g = 0; g < G; ++g) {
      const float s = scale[scales[r * G + g]];
      for (int j = 0; j < 16; ++j) {
        const uint8_t byte = blocks[(r * G + g) * 16 + j];
        o[g * 32 + 2 * j] = kE2M1[byte & 15] * s;
        o[g * 32 + 2 * j + 1] = kE2M1[byte >> 4] * s;
      }
    }
  }
}

}  // namespace

// No fixed-point kernel here: in portable C++ (byte planes, integer products) it ran at a third of the
// float loop's speed (0.6 vs 1.7 GB/s on x86 with SSE2), so the scalar table takes floats.
Kernels scalar_kernels() { return {"scalar", mxfp4_rows, bf16_rows, mxfp4_dequant, nullptr}; }

}  // namespace gptoss_cpu
