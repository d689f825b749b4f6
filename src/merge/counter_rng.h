// A counter-based random generator: the value drawn for element i of a stream is a pure function
// of (seed, stream key, i). Random methods (DARE, DELLA) therefore give bit-identical output
// whatever the thread count, chunk size or order in which elements are visited.
#pragma once

#include <cstdint>
#include <string_view>

namespace amalgam::merge {

// MurmurHash3's 64-bit finaliser: a bijection that mixes every input bit into every output bit.
constexpr uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

constexpr uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

class CounterRng {
 public:
  // One stream per (seed, tensor name, model index).
  CounterRng(uint64_t seed, std::string_view tensor, uint64_t model)
      : key_(mix64(seed ^ mix64(fnv1a64(tensor) + 0x9e3779b97f4a7c15ULL * (model + 1)))) {}

  // 24 uniform bits for element i: compare with threshold(p) to draw Bernoulli(p).
  uint32_t bits24(uint64_t i) const {
    return static_cast<uint32_t>(mix64(key_ ^ (i * 0x9e3779b97f4a7c15ULL)) >> 40);
  }
  // Bernoulli(p) is bits24(i) < threshold(p); exact for p a multiple of 2^-24.
  static uint32_t threshold(double p) {
    if (p <= 0) return 0;
    if (p >= 1) return uint32_t{1} << 24;
    return static_cast<uint32_t>(p * 16777216.0 + 0.5);
  }

 private:
  uint64_t key_;
};

}  // namespace amalgam::merge
