// The scalar reference: portable C++ (ARM and Apple silicon build this, and the compiler vectorizes
// what it can); every SIMD file is tested against it on odd shapes.
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace gptoss_cpu {

const float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                         -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

const float* e8m0_table() {
  static const auto* table = [] {
    static float t[256];
    for (int s = 0; s < 256; ++s) t[s] = std::ldexp(1.0f, s - 127);
    return t;
  }();
  return table;
}

namespace {

void mxfp4_rows(const float* xs, int64_t n, int64_t K, const uint8_t* blocks, const uint8_t* scales, int64_t r0,
                int64_t r1, float* out, int64_t ldo) {
  const int64_t G = K / kBlock;
  const float* scale = e8m0_table();
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* b = blocks + r * G * 16;
    const uint8_t* s = scales + r * G;
    for (int64_t t = 0; t < n; ++t) {
      const float* x = xs + t * K;
      float acc = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        float part = 0.0f;
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = b[g * 16 + j];
          part += kE2M1[byte & 15] * x[g * 32 + j] + kE2M1[byte >> 4] * x[g * 32 + 16 + j];
        }
        acc += part * scale[s[g]];
      }
      out[t * ldo + r] = acc;
    }
  }
}

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void bf16_rows(const float* x, int64_t n, int64_t K, const uint16_t* w, int64_t r0, int64_t r1, float* out,
               int64_t ldo) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * K;
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * K;
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += bf16_to_float(row[k]) * xt[k];
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

Kernels scalar_kernels() { return {"scalar", mxfp4_rows, bf16_rows, mxfp4_dequant}; }

}  // namespace gptoss_cpu
