#include "merge/sphere.h"

#include <algorithm>
#include <cmath>

#include "merge/registry.h"

namespace amalgam::merge {

namespace {

// a (n) . b (n) in fp64; four partial sums so that the loop is not one long dependency chain.
double dot64(const float* a, const float* b, size_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    s0 += static_cast<double>(a[j]) * b[j];
    s1 += static_cast<double>(a[j + 1]) * b[j + 1];
    s2 += static_cast<double>(a[j + 2]) * b[j + 2];
    s3 += static_cast<double>(a[j + 3]) * b[j + 3];
  }
  for (; j < n; ++j) s0 += static_cast<double>(a[j]) * b[j];
  return (s0 + s1) + (s2 + s3);
}

class CombinationMerger : public ChunkMerger {
 public:
  CombinationMerger(std::vector<size_t> inputs, std::vector<float> coefs,
                    std::optional<size_t> base)
      : inputs_(std::move(inputs)), coefs_(std::move(coefs)), base_(base) {}

  // inputs: X_k chunks (n) [and X_base] -> out (n) = X_base + sum_k c_k (X_k - X_base)
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    std::fill(out, out + n, 0.0f);
    const float* b = base_ ? inputs[*base_] : nullptr;
    for (size_t k = 0; k < inputs_.size(); ++k) {
      const float c = coefs_[k];
      const float* x = inputs[inputs_[k]];
      if (b) {
        for (size_t j = 0; j < n; ++j) out[j] += c * (x[j] - b[j]);
      } else {
        for (size_t j = 0; j < n; ++j) out[j] += c * x[j];
      }
    }
    if (b) {
      for (size_t j = 0; j < n; ++j) out[j] += b[j];
    }
  }

 private:
  std::vector<size_t> inputs_;
  std::vector<float> coefs_;
  std::optional<size_t> base_;
};


}  // namespace

std::vector<size_t> inputs_without_base(const PlanEntry& entry) {
  std::vector<size_t> out;
  for (size_t i = 0; i < entry.sources.size(); ++i) {
    if (!entry.base || i != *entry.base) out.push_back(i);
  }
  return out;
}

size_t row_length(const tensor::Shape& shape) {
  return shape.empty() || shape.back() <= 0 ? 1 : static_cast<size_t>(shape.back());
}

double GramSpace::dot(const Vec& a, const Vec& b) const {
  double s = 0;
  for (size_t k = 0; k < n_; ++k) {
    if (a[k] == 0) continue;
    double row = 0;
    for (size_t l = 0; l < n_; ++l) row += at(k, l) * b[l];
    s += a[k] * row;
  }
  return s;
}

double GramSpace::norm(const Vec& a) const { return std::sqrt(std::max(0.0, dot(a, a))); }

GramSpace gram_matrix(const TensorReader& reader, const std::vector<size_t>& inputs,
                      std::optional<size_t> base) {
  const size_t count = inputs.size();
  const size_t total = reader.numel();
  const size_t chunk = std::min(reader.chunk_elements(), total);
  std::vector<std::vector<float>> x(count, std::vector<float>(chunk));
  std::vector<float> b(base ? chunk : 0);
  std::vector<double> gram(count * count, 0.0);
  for (size_t begin = 0; begin < total; begin += chunk) {
    const size_t len = std::min(chunk, total - begin);
    if (base) reader.read(*base, begin, len, b.data());
    for (size_t k = 0; k < count; ++k) {
      reader.read(inputs[k], begin, len, x[k].data());
      if (base) {
        for (size_t j = 0; j < len; ++j) x[k][j] -= b[j];
      }
    }
    for (size_t k = 0; k < count; ++k) {
      for (size_t l = k; l < count; ++l)
        gram[k * count + l] += dot64(x[k].data(), x[l].data(), len);
    }
  }
  for (size_t k = 0; k < count; ++k) {
    for (size_t l = 0; l < k; ++l) gram[k * count + l] = gram[l * count + k];
  }
  return GramSpace(std::move(gram), count);
}

double combination_norm(const TensorReader& reader, const std::vector<size_t>& inputs,
                        const std::vector<double>& coefs, std::optional<size_t> base) {
  const size_t total = reader.numel();
  const size_t chunk = std::min(reader.chunk_elements(), total);
  std::vector<float> x(chunk), b(base ? chunk : 0);
  std::vector<double> sum(chunk);
  double square = 0;
  for (size_t begin = 0; begin < total; begin += chunk) {
    const size_t len = std::min(chunk, total - begin);
    std::fill_n(sum.begin(), len, 0.0);
    if (base) reader.read(*base, begin, len, b.data());
    for (size_t k = 0; k < inputs.size(); ++k) {
      reader.read(inputs[k], begin, len, x.data());
      if (base) {
        for (size_t j = 0; j < len; ++j) x[j] -= b[j];
      }
      for (size_t j = 0; j < len; ++j) sum[j] += coefs[k] * static_cast<double>(x[j]);
    }
    for (size_t j = 0; j < len; ++j) square += sum[j] * sum[j];
  }
  return std::sqrt(square);
}

std::unique_ptr<ChunkMerger> combination_merger(std::vector<size_t> inputs,
                                                const std::vector<double>& coefs,
                                                std::optional<size_t> base) {
  std::vector<float> c(coefs.begin(), coefs.end());
  return std::make_unique<CombinationMerger>(std::move(inputs), std::move(c), base);
}

std::unique_ptr<ChunkMerger> copy_merger(size_t input) {
  return copy_input(input);
}

}  // namespace amalgam::merge
