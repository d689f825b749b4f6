#include "moe/router.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/progress.h"
#include "infer/matmul.h"
#include "tensor/tensor.h"

namespace amalgam::moe {

namespace {

// v /= max(||v||, 1e-8), in fp64 as torch's norm of a float vector is close to.
void normalise(float* v, int64_t n) {
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) sq += static_cast<double>(v[i]) * v[i];
  const double norm = std::max(std::sqrt(sq), 1e-8);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(v[i] / norm);
}

// (layers, hidden): the mean over prompts of each layer's input at the last token.
std::vector<double> mean_last_token_states(const infer::Model& base,
                                           const tokenizer::Tokenizer& tokenizer,
                                           const std::vector<std::string>& prompts,
                                           core::ProgressBar& progress) {
  const int64_t L = base.num_layers(), D = base.hidden_size();
  std::vector<double> sum(static_cast<size_t>(L * D), 0.0);
  infer::KVCache cache = base.new_cache();
  infer::ForwardOptions options;
  options.hidden_states = true;
  for (const std::string& prompt : prompts) {
    infer::Batch batch;
    batch.add_sequence(prompt_tokens(tokenizer, prompt), 0, 0, false);
    cache.clear();
    const infer::ForwardResult r = base.forward(batch, cache, options);
    const std::vector<float>& h = r.hidden.at(0);  // (L + 1, D); rows 0..L-1 = layer inputs
    for (int64_t i = 0; i < L * D; ++i) sum[i] += h[i];
    progress.advance(1);
  }
  for (double& v : sum) v /= static_cast<double>(prompts.size());
  return sum;
}

// The normalised sum of the embedding rows of every prompt token (D).
std::vector<double> embedding_sum(const infer::Model& base, const tokenizer::Tokenizer& tokenizer,
                                  const std::vector<std::string>& prompts) {
  const infer::WeightMatrix& embed = base.weights().embed;
  const int64_t D = embed.cols;
  std::vector<double> sum(static_cast<size_t>(D), 0.0);
  std::vector<float> row(static_cast<size_t>(D));
  for (const std::string& prompt : prompts) {
    for (int32_t id : prompt_tokens(tokenizer, prompt)) {
      infer::rows_to_f32(embed, id, 1, row.data());
      for (int64_t j = 0; j < D; ++j) sum[j] += row[j];
    }
  }
  double sq = 0.0;
  for (double v : sum) sq += v * v;
  const double norm = std::max(std::sqrt(sq), 1e-8);
  for (double& v : sum) v /= norm;
  return sum;
}

}  // namespace

std::vector<int32_t> prompt_tokens(const tokenizer::Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids;
  if (tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
  const std::vector<int32_t> body = tokenizer.encode(text, false);
  ids.insert(ids.end(), body.begin(), body.end());
  if (ids.empty()) fail("prompt '{}' encodes to no tokens", text);
  return ids;
}

GateVectors hidden_gates(const infer::Model& base, const tokenizer::Tokenizer& tokenizer,
                         const std::vector<ExpertConfig>& experts) {
  const int64_t L = base.num_layers(), E = static_cast<int64_t>(experts.size()),
                D = base.hidden_size();
  GateVectors gates(L, E, D);
  uint64_t total = 0;
  for (const ExpertConfig& e : experts)
    total += e.positive_prompts.size() + e.negative_prompts.size();
  core::ProgressBar progress("router prompts", total, "prompts");
  for (int64_t e = 0; e < E; ++e) {
    std::vector<double> v =
        mean_last_token_states(base, tokenizer, experts[e].positive_prompts, progress);
    if (!experts[e].negative_prompts.empty()) {
      const std::vector<double> neg =
          mean_last_token_states(base, tokenizer, experts[e].negative_prompts, progress);
      for (size_t i = 0; i < v.size(); ++i) v[i] -= neg[i];
    }
    for (int64_t l = 0; l < L; ++l) {
      float* row = gates.row(l, e);
      for (int64_t j = 0; j < D; ++j) row[j] = static_cast<float>(v[l * D + j]);
      normalise(row, D);
    }
  }
  progress.finish();
  return gates;
}

GateVectors cheap_embed_gates(const infer::Model& base, const tokenizer::Tokenizer& tokenizer,
                              const std::vector<ExpertConfig>& experts) {
  const int64_t L = base.num_layers(), E = static_cast<int64_t>(experts.size()),
                D = base.hidden_size();
  GateVectors gates(L, E, D);
  for (int64_t e = 0; e < E; ++e) {
    std::vector<double> v = embedding_sum(base, tokenizer, experts[e].positive_prompts);
    if (!experts[e].negative_prompts.empty()) {
      const std::vector<double> neg = embedding_sum(base, tokenizer, experts[e].negative_prompts);
      for (size_t i = 0; i < v.size(); ++i) v[i] -= neg[i];
    }
    std::vector<float> row(v.begin(), v.end());
    normalise(row.data(), D);
    for (int64_t l = 0; l < L; ++l) std::copy(row.begin(), row.end(), gates.row(l, e));
  }
  return gates;
}

GateVectors random_gates(int64_t layers, int64_t experts, int64_t hidden, bool uniform,
                         uint64_t seed) {
  GateVectors gates(layers, experts, hidden);
  std::mt19937_64 rng(seed);
  if (uniform) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(hidden));
    std::uniform_real_distribution<double> dist(-scale, scale);
    for (float& v : gates.data) v = static_cast<float>(dist(rng));
  } else {
    std::normal_distribution<double> dist(0.0, 1.0);
    for (float& v : gates.data) v = static_cast<float>(dist(rng));
  }
  return gates;
}

std::vector<double> condition_numbers(const GateVectors& gates) {
  std::vector<double> out;
  for (int64_t l = 0; l < gates.layers; ++l) {
    Eigen::MatrixXd m(gates.experts, gates.hidden);
    for (int64_t e = 0; e < gates.experts; ++e) {
      for (int64_t j = 0; j < gates.hidden; ++j) m(e, j) = gates.row(l, e)[j];
    }
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(m);
    const auto& s = svd.singularValues();
    const double smin = s.minCoeff(), smax = s.maxCoeff();
    out.push_back(smin > 0 ? smax / smin : std::numeric_limits<double>::infinity());
  }
  return out;
}

}  // namespace amalgam::moe
