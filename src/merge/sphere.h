// Shared pieces of the spherical merge methods (nuslerp, multislerp, karcher, model_stock).
// Their results are linear combinations of the inputs (x_k, or x_k - base): the iterates of a
// spherical mean stay in the span of its points. So one scan that computes the Gram matrix of the
// inputs in fp64 lets a method run its geometry on N x N numbers, and the output is then streamed
// as a combination of the input chunks, without a whole fp32 copy of any tensor.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "merge/method.h"

namespace amalgam::merge {

// Indices into entry.sources of every input but the base (all of them without one), in order.
std::vector<size_t> inputs_without_base(const PlanEntry& entry);

// Elements per "row" for per-row statistics: the last dimension, 1 for a scalar.
size_t row_length(const tensor::Shape& shape);

// Inner products of vectors held by their coefficients over x_1..x_N (x_k = X_{inputs[k]}, or
// X_{inputs[k]} - X_base), given the Gram matrix G_kl = x_k . x_l.
class GramSpace {
 public:
  using Vec = std::vector<double>;
  GramSpace(std::vector<double> gram, size_t n) : gram_(std::move(gram)), n_(n) {}
  size_t size() const { return n_; }
  double at(size_t k, size_t l) const { return gram_[k * n_ + l]; }
  double dot(const Vec& a, const Vec& b) const;  // a^T G b
  // sqrt(a^T G a), clamped at 0: a combination that cancels can round to a tiny negative square.
  double norm(const Vec& a) const;

 private:
  std::vector<double> gram_;  // N x N, row-major
  size_t n_;
};

// One scan of the whole tensor: x_k . x_l in fp64 for x_k = X_{inputs[k]} - X_base (the fp32
// difference, as the merge streams it) or X_{inputs[k]} without a base.
GramSpace gram_matrix(const TensorReader& reader, const std::vector<size_t>& inputs,
                      std::optional<size_t> base);

// |sum_k c_k x_k| by a scan that forms the combination element by element in fp64. The Gram
// matrix gives that norm only to about 1e-8 of the terms' size (the square root of a cancelling
// quadratic form); deciding whether inputs cancel exactly needs this.
double combination_norm(const TensorReader& reader, const std::vector<size_t>& inputs,
                        const std::vector<double>& coefs, std::optional<size_t> base);

// Streams out = X_base + sum_k c_k (X_{inputs[k]} - X_base), or sum_k c_k X_{inputs[k]} without
// a base, in fp32.
std::unique_ptr<ChunkMerger> combination_merger(std::vector<size_t> inputs,
                                                const std::vector<double>& coefs,
                                                std::optional<size_t> base);

// Streams input `input` unchanged.
std::unique_ptr<ChunkMerger> copy_merger(size_t input);

}  // namespace amalgam::merge
