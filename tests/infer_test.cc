// The inference engine on tiny random-weight checkpoints (Llama, Mistral with sliding window,
// Qwen2 with biases + tied embeddings + per-layer window, Mixtral with both expert layouts)
// against the naive fp64 reference forward of infer_reference.h, and batched evaluation against
// one-by-one evaluation.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "infer/generate.h"
#include "infer/matmul.h"
#include "infer/model.h"
#include "infer/perplexity.h"
#include "infer/rope.h"
#include "infer/sampler.h"
#include "infer_reference.h"
#include "test_util.h"

namespace amalgam::infer {
namespace {

using testing::random_ids;
using testing::RefModel;
using testing::TempDir;
using testing::TinySpec;

// Engine (fp32 arithmetic) vs reference (fp64) on logits of magnitude ~1-5.
constexpr double kRefTolerance = 2e-4;
// Batched vs one-by-one: the same arithmetic except the summation order of gemv vs sgemm, so
// differences are fp32 rounding: at most 1e-5 relative to the row's largest |logit| (or 1e-5
// absolute when logits are below 1). Attention and routing are order-identical by construction.
constexpr double kBatchTolerance = 1e-5;

double max_abs_diff(std::span<const float> a, const std::vector<double>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

// Difference scaled by max(1, largest |logit| of the row), see kBatchTolerance.
double batch_diff(std::span<const float> a, std::span<const float> b) {
  double scale = 1.0;
  for (float v : b) scale = std::max(scale, static_cast<double>(std::abs(v)));
  return max_abs_diff(a, b) / scale;
}

struct Case {
  std::string name;
  TinySpec spec;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  std::vector<Case> out;
  TinySpec llama;
  out.push_back({"llama_bf16", llama});
  TinySpec llama_f16 = llama;
  llama_f16.dtype = tensor::DType::kF16;
  llama_f16.biases = true;  // attention_bias: q/k/v/o biases
  out.push_back({"llama_f16_bias", llama_f16});
  TinySpec mistral;
  mistral.arch = "mistral";
  mistral.window = 5;
  mistral.dtype = tensor::DType::kF32;
  out.push_back({"mistral_window5_f32", mistral});
  TinySpec qwen;
  qwen.arch = "qwen2";
  qwen.tied = true;
  qwen.window = 4;
  qwen.max_window_layers = 1;  // layer 0 full, layer 1 sliding
  qwen.theta = 1e6;
  qwen.eps = 1e-6;
  out.push_back({"qwen2_tied_window", qwen});
  TinySpec mixtral;
  mixtral.arch = "mixtral";
  mixtral.E = 4;
  mixtral.K = 2;
  mixtral.I = 48;
  out.push_back({"mixtral_classic", mixtral});
  TinySpec fused = mixtral;
  fused.fused_experts = true;
  out.push_back({"mixtral_fused", fused});
  TinySpec gqa1 = llama;
  gqa1.H = 4;
  gqa1.Hkv = 1;
  gqa1.d = 8;  // head_dim != D / H
  out.push_back({"llama_mqa_headdim8", gqa1});
  return out;
}

class EngineVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(EngineVsReference, LogitsAndHiddenStatesMatch) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  const TinySpec& spec = GetParam().spec;
  RefModel ref = testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  const auto ids = random_ids(20, spec.V, 42);
  testing::RefOutput expected = testing::ref_forward(ref, ids);
  KVCache cache = model->new_cache();
  Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  ForwardOptions opt;
  opt.hidden_states = true;
  ForwardResult r = model->forward(batch, cache, opt);
  ASSERT_EQ(r.rows.size(), ids.size());
  ASSERT_EQ(r.vocab, spec.V);
  for (size_t t = 0; t < ids.size(); ++t) {
    EXPECT_LT(max_abs_diff(r.row(t), expected.logits[t]), kRefTolerance) << "token " << t;
  }
  const auto& hidden = r.hidden.at(0);
  ASSERT_EQ(hidden.size(), static_cast<size_t>((spec.L + 1) * spec.D));
  for (int64_t l = 0; l <= spec.L; ++l) {
    std::span<const float> row(hidden.data() + l * spec.D, static_cast<size_t>(spec.D));
    EXPECT_LT(max_abs_diff(row, expected.hidden[l]), kRefTolerance) << "hidden " << l;
  }
}

// One token at a time, one whole-sequence batch, small micro-batches, and a packed batch of
// three prompts (one sequence id each, positions restarting at 0, tokens interleaved) all give
// the same logits for the same (sequence, position).
TEST_P(EngineVsReference, BatchedEqualsOneByOne) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  const TinySpec& spec = GetParam().spec;
  testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  const std::vector<std::vector<int32_t>> prompts = {
      random_ids(17, spec.V, 1), random_ids(9, spec.V, 2), random_ids(12, spec.V, 3)};
  // Reference: each prompt alone, token by token.
  std::vector<std::vector<std::vector<float>>> single(prompts.size());
  for (size_t p = 0; p < prompts.size(); ++p) {
    KVCache cache = model->new_cache();
    for (size_t i = 0; i < prompts[p].size(); ++i) {
      Batch b;
      b.add(prompts[p][i], static_cast<int32_t>(i), 7, true);
      ForwardResult r = model->forward(b, cache);
      single[p].emplace_back(r.row(0).begin(), r.row(0).end());
    }
  }
  // Whole prompt in one batch, also sliced into micro-batches of 4.
  for (int64_t micro : {512, 4}) {
    KVCache cache = model->new_cache();
    Batch b;
    b.add_sequence(prompts[0], 3, 0, true);
    ForwardOptions opt;
    opt.micro_batch = micro;
    ForwardResult r = model->forward(b, cache, opt);
    for (size_t i = 0; i < prompts[0].size(); ++i) {
      EXPECT_LT(batch_diff(r.row(i), single[0][i]), kBatchTolerance) << "micro " << micro;
    }
  }
  // Packed: tokens of the three prompts interleaved in one batch.
  {
    KVCache cache = model->new_cache();
    Batch b;
    std::vector<std::pair<size_t, size_t>> where;
    for (size_t i = 0; i < 17; ++i) {
      for (size_t p = 0; p < prompts.size(); ++p) {
        if (i < prompts[p].size()) {
          b.add(prompts[p][i], static_cast<int32_t>(i), static_cast<int32_t>(10 + p), true);
          where.push_back({p, i});
        }
      }
    }
    ForwardResult r = model->forward(b, cache);
    for (size_t k = 0; k < where.size(); ++k) {
      EXPECT_LT(batch_diff(r.row(k), single[where[k].first][where[k].second]), kBatchTolerance)
          << "prompt " << where[k].first << " token " << where[k].second;
    }
  }
  // Prefill of several prompts, then lock-step decoding of one token per sequence.
  {
    KVCache cache = model->new_cache();
    Batch b;
    for (size_t p = 0; p < prompts.size(); ++p) {
      std::vector<int32_t> head(prompts[p].begin(), prompts[p].begin() + 6);
      b.add_sequence(head, static_cast<int32_t>(p), 0, false);
    }
    model->forward(b, cache);
    for (size_t i = 6; i < 9; ++i) {
      Batch step;
      for (size_t p = 0; p < prompts.size(); ++p) {
        step.add(prompts[p][i], static_cast<int32_t>(i), static_cast<int32_t>(p), true);
      }
      ForwardResult r = model->forward(step, cache);
      for (size_t p = 0; p < prompts.size(); ++p) {
        EXPECT_LT(batch_diff(r.row(p), single[p][i]), kBatchTolerance) << p << " " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, EngineVsReference, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// The attention of a sliding-window layer, recomputed in fp64 from the engine's own dumped
// q_rope / k_rope / v with a naive masked softmax (kv position > q position - window).
TEST(SlidingWindow, AttentionMatchesNaiveMaskedReference) {
  TempDir dir;
  TinySpec spec;
  spec.arch = "mistral";
  spec.window = 3;
  testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  ASSERT_EQ(model->weights().layers[1].window, 3);
  const auto ids = random_ids(16, spec.V, 5);
  Dumper dump({"q_rope.1", "k_rope.1", "v.1", "attn.1"});
  KVCache cache = model->new_cache();
  Batch b;
  b.add_sequence(ids, 0, 0, false);
  ForwardOptions opt;
  opt.dump = &dump;
  model->forward(b, cache, opt);
  const auto& q = dump.tensors().at("q_rope.1").data;
  const auto& k = dump.tensors().at("k_rope.1").data;
  const auto& v = dump.tensors().at("v.1").data;
  const auto& att = dump.tensors().at("attn.1").data;
  const int64_t n = 16, H = spec.H, Hkv = spec.Hkv, d = spec.d;
  double worst = 0.0, window_effect = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      auto attend = [&](int64_t window) {
        std::vector<double> w(n, 0.0), out(d, 0.0);
        double mx = -1e300, sum = 0.0;
        for (int64_t j = 0; j <= t; ++j) {
          if (window > 0 && j <= t - window) continue;
          double s = 0.0;
          for (int64_t i = 0; i < d; ++i)
            s += q[t * H * d + h * d + i] * k[j * Hkv * d + g * d + i];
          w[j] = s / std::sqrt(double(d));
          mx = std::max(mx, w[j]);
        }
        for (int64_t j = 0; j <= t; ++j) {
          if (window > 0 && j <= t - window) continue;
          sum += w[j] = std::exp(w[j] - mx);
        }
        for (int64_t j = 0; j <= t; ++j) {
          if (window > 0 && j <= t - window) continue;
          for (int64_t i = 0; i < d; ++i) out[i] += w[j] / sum * v[j * Hkv * d + g * d + i];
        }
        return out;
      };
      auto windowed = attend(3), full = attend(0);
      for (int64_t i = 0; i < d; ++i) {
        worst = std::max(worst, std::abs(att[t * H * d + h * d + i] - windowed[i]));
        window_effect = std::max(window_effect, std::abs(windowed[i] - full[i]));
      }
    }
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_GT(window_effect, 1e-2);  // the window really changes the result on this input
}

// Qwen2: sliding window only when use_sliding_window, only in layers >= max_window_layers;
// layer_types overrides both.
TEST(SlidingWindow, PerLayerWindowsFollowConfig) {
  TinySpec spec;
  spec.arch = "qwen2";
  spec.L = 4;
  spec.window = 8;
  spec.max_window_layers = 2;
  auto c = io::parse_model_config(testing::tiny_config(spec), "config.json");
  EXPECT_EQ(layer_windows(c), (std::vector<int64_t>{0, 0, 8, 8}));
  spec.window = 0;
  c = io::parse_model_config(testing::tiny_config(spec), "config.json");
  EXPECT_EQ(layer_windows(c), (std::vector<int64_t>{0, 0, 0, 0}));
  spec.arch = "mistral";
  spec.window = 8;
  auto j = testing::tiny_config(spec);
  c = io::parse_model_config(j, "config.json");
  EXPECT_EQ(layer_windows(c), (std::vector<int64_t>{8, 8, 8, 8}));
  j["layer_types"] = {"full_attention", "sliding_attention", "full_attention", "sliding_attention"};
  c = io::parse_model_config(j, "config.json");
  EXPECT_EQ(layer_windows(c), (std::vector<int64_t>{0, 8, 0, 8}));
}

// Long prompt against a window: a prompt longer than the window evaluated in one batch equals
// the same prompt fed token by token.
TEST(SlidingWindow, LongPromptMatchesReference) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  TinySpec spec;
  spec.arch = "mistral";
  spec.window = 4;
  spec.L = 3;
  RefModel ref = testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  const auto ids = random_ids(40, spec.V, 8);
  auto expected = testing::ref_forward(ref, ids);
  KVCache cache = model->new_cache();
  Batch b;
  b.add_sequence(ids, 0, 0, true);
  ForwardResult r = model->forward(b, cache);
  for (size_t t = 0; t < ids.size(); ++t) {
    EXPECT_LT(max_abs_diff(r.row(t), expected.logits[t]), kRefTolerance) << t;
  }
}

// Mixtral routing in isolation: the engine's dumped router logits and FFN output against a
// naive top-k softmax-renormalised mixture computed here from the reference weights.
TEST(Moe, RoutingMatchesNaiveReference) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  TinySpec spec;
  spec.arch = "mixtral";
  spec.E = 5;
  spec.K = 2;
  spec.I = 32;
  spec.L = 1;
  RefModel ref = testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  const auto ids = random_ids(12, spec.V, 4);
  Dumper dump({"ffn_norm.0", "router.0", "ffn_out.0"});
  KVCache cache = model->new_cache();
  Batch b;
  b.add_sequence(ids, 0, 0, false);
  ForwardOptions opt;
  opt.dump = &dump;
  model->forward(b, cache, opt);
  const auto& h = dump.tensors().at("ffn_norm.0").data;
  const auto& router = dump.tensors().at("router.0").data;
  const auto& out = dump.tensors().at("ffn_out.0").data;
  const auto& layer = ref.layers[0];
  std::set<std::pair<int64_t, int64_t>> pairs_seen;
  for (int64_t t = 0; t < 12; ++t) {
    std::vector<double> x(h.begin() + t * spec.D, h.begin() + (t + 1) * spec.D);
    auto z = testing::ref_linear(layer.router, x, spec.E);
    for (int64_t e = 0; e < spec.E; ++e) EXPECT_NEAR(router[t * spec.E + e], z[e], 1e-5);
    // softmax over all experts, take the two largest, renormalise.
    std::vector<int64_t> order(spec.E);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return z[a] > z[b]; });
    const double w0 = 1.0 / (1.0 + std::exp(z[order[1]] - z[order[0]]));
    const double w1 = 1.0 - w0;
    pairs_seen.insert({std::min(order[0], order[1]), std::max(order[0], order[1])});
    auto y0 = testing::ref_swiglu(layer.w1[order[0]], layer.w3[order[0]], layer.w2[order[0]], x,
                                  spec.I, spec.D);
    auto y1 = testing::ref_swiglu(layer.w1[order[1]], layer.w3[order[1]], layer.w2[order[1]], x,
                                  spec.I, spec.D);
    for (int64_t i = 0; i < spec.D; ++i) {
      EXPECT_NEAR(out[t * spec.D + i], w0 * y0[i] + w1 * y1[i], 1e-5) << t << " " << i;
    }
  }
  EXPECT_GT(pairs_seen.size(), 2u);  // the input exercises several expert pairs
}

// The two Mixtral layouts hold the same weights, so they must give identical logits.
TEST(Moe, FusedAndClassicLayoutsAgree) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir a, b;
  TinySpec spec;
  spec.arch = "mixtral";
  spec.E = 3;
  spec.K = 2;
  spec.I = 24;
  testing::write_tiny_model(a.path(), spec);
  spec.fused_experts = true;
  RefModel ref_b = testing::write_tiny_model(b.path(), spec);
  // Same seed but different tensor order gives different values; compare each to its reference.
  auto model = load_model(b.path());
  const auto ids = random_ids(8, spec.V, 1);
  auto expected = testing::ref_forward(ref_b, ids);
  KVCache cache = model->new_cache();
  Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  auto r = model->forward(batch, cache);
  for (size_t t = 0; t < ids.size(); ++t)
    EXPECT_LT(max_abs_diff(r.row(t), expected.logits[t]), kRefTolerance);
}

// ---------------------------------------------------------------------------------------------
// RoPE variants against direct formulas (double precision, written from the transformers
// definitions). The engine computes angles as transformers does (float32 inv_freq x position),
// so the tolerance grows with the angle: 1e-6 + 4e-7 * angle.

io::ModelConfig rope_config(nlohmann::ordered_json rope_scaling, int64_t head_dim = 64) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = head_dim * 2;
  j["num_attention_heads"] = 2;
  j["head_dim"] = head_dim;
  j["num_hidden_layers"] = 1;
  j["max_position_embeddings"] = 256;
  j["rope_theta"] = 10000.0;
  if (!rope_scaling.is_null()) j["rope_scaling"] = rope_scaling;
  return io::parse_model_config(j, "config.json");
}

void expect_angles(const Rope& rope, int64_t pos, const std::vector<double>& inv, double mscale) {
  const size_t half = inv.size();
  std::vector<float> c(half), s(half);
  rope.angles(pos, c.data(), s.data());
  for (size_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(pos) * inv[i];
    const double tol = 1e-6 + 4e-7 * angle;
    EXPECT_NEAR(c[i], std::cos(angle) * mscale, tol * mscale) << "pos " << pos << " i " << i;
    EXPECT_NEAR(s[i], std::sin(angle) * mscale, tol * mscale) << "pos " << pos << " i " << i;
  }
}

std::vector<double> base_inv(double base, int64_t dim) {
  std::vector<double> inv;
  for (int64_t i = 0; i < dim / 2; ++i) inv.push_back(std::pow(base, -2.0 * i / dim));
  return inv;
}

TEST(Rope, DefaultAndLinear) {
  Rope plain(rope_config(nullptr));
  for (int64_t pos : {0, 1, 7, 255, 1000}) expect_angles(plain, pos, base_inv(1e4, 64), 1.0);
  Rope linear(rope_config({{"type", "linear"}, {"factor", 4.0}}));
  auto inv = base_inv(1e4, 64);
  for (double& f : inv) f /= 4.0;
  for (int64_t pos : {0, 3, 300}) expect_angles(linear, pos, inv, 1.0);
}

TEST(Rope, DynamicNtkGrowsTheBaseBeyondTheTrainedContext) {
  Rope dynamic(rope_config({{"type", "dynamic"}, {"factor", 2.0}}));
  expect_angles(dynamic, 100, base_inv(1e4, 64), 1.0);  // inside max_position_embeddings
  for (int64_t pos : {256, 700}) {
    const double seq = pos + 1, factor = 2.0, dim = 64;
    const double base = 1e4 * std::pow(factor * seq / 256.0 - (factor - 1.0), dim / (dim - 2.0));
    expect_angles(dynamic, pos, base_inv(base, 64), 1.0);
  }
}

TEST(Rope, Llama3) {
  // Llama-3.1 parameters on head_dim 128, base 500000.
  nlohmann::ordered_json scaling = {{"rope_type", "llama3"},
                                    {"factor", 8.0},
                                    {"low_freq_factor", 1.0},
                                    {"high_freq_factor", 4.0},
                                    {"original_max_position_embeddings", 8192}};
  auto c = rope_config(scaling, 128);
  c.rope.theta = 500000.0;
  Rope rope(c);
  auto inv = base_inv(500000.0, 128);
  int scaled = 0, kept = 0, blended = 0;
  for (double& f : inv) {
    const double wavelen = 2 * M_PI / f;
    const double low_wavelen = 8192 / 1.0, high_wavelen = 8192 / 4.0;
    if (wavelen < high_wavelen) {
      ++kept;
    } else if (wavelen > low_wavelen) {
      f /= 8.0;
      ++scaled;
    } else {
      const double smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
      f = (1 - smooth) * f / 8.0 + smooth * f;
      ++blended;
    }
  }
  EXPECT_GT(scaled, 0);
  EXPECT_GT(kept, 0);
  EXPECT_GT(blended, 0);
  for (int64_t pos : {0, 5, 200, 3000}) expect_angles(rope, pos, inv, 1.0);
}

TEST(Rope, Yarn) {
  nlohmann::ordered_json scaling = {
      {"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}};
  Rope rope(rope_config(scaling, 64));
  const double dim = 64, base = 1e4, factor = 4.0, orig = 64;
  auto corr = [&](double rot) {
    return dim * std::log(orig / (rot * 2 * M_PI)) / (2 * std::log(base));
  };
  const double low = std::max(0.0, std::floor(corr(32.0)));
  const double high = std::min(dim - 1, std::ceil(corr(1.0)));
  std::vector<double> inv;
  for (int64_t i = 0; i < 32; ++i) {
    const double extrapolated = std::pow(base, -2.0 * i / dim);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);  // 0: extrapolate
    inv.push_back(extrapolated / factor * ramp + extrapolated * (1 - ramp));
  }
  const double mscale = 0.1 * std::log(factor) + 1.0;
  EXPECT_NEAR(rope.attention_factor(), mscale, 1e-6);
  for (int64_t pos : {0, 9, 250}) expect_angles(rope, pos, inv, mscale);
}

TEST(Rope, ApplyRotatesHalfSplitPairs) {
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};  // 2 heads of 4: pairs (0,2), (1,3)
  const float c[2] = {0.5f, -1.0f}, s[2] = {0.25f, 0.0f};
  Rope::apply(x.data(), 2, 4, 4, c, s);
  EXPECT_FLOAT_EQ(x[0], 1 * 0.5f - 3 * 0.25f);
  EXPECT_FLOAT_EQ(x[2], 3 * 0.5f + 1 * 0.25f);
  EXPECT_FLOAT_EQ(x[1], -2.0f);
  EXPECT_FLOAT_EQ(x[3], -4.0f);
  EXPECT_FLOAT_EQ(x[4], 5 * 0.5f - 7 * 0.25f);
}

TEST(Rope, UnsupportedTypeIsAnError) {
  EXPECT_THROW(Rope(rope_config({{"type", "longrope"}, {"factor", 2.0}})), Error);
}

// ---------------------------------------------------------------------------------------------

TEST(KVCacheOps, CopyPrefixAndTruncateContinueLikeAFreshEvaluation) {
  TempDir dir;
  TinySpec spec;
  testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  const auto ids = random_ids(10, spec.V, 6);
  KVCache fresh = model->new_cache();
  Batch all;
  all.add_sequence(ids, 0, 0, true);
  ForwardResult expected = model->forward(all, fresh);

  KVCache cache = model->new_cache();
  Batch head;
  head.add_sequence(std::vector<int32_t>(ids.begin(), ids.begin() + 6), 0, 0, false);
  model->forward(head, cache);
  cache.copy_prefix(0, 1, 4);  // seq 1 = first 4 positions of seq 0
  EXPECT_EQ(cache.size(1), 4);
  Batch tail;
  for (int32_t i = 4; i < 10; ++i) tail.add(ids[i], i, 1, true);
  ForwardResult r = model->forward(tail, cache);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_LT(batch_diff(r.row(i), expected.row(4 + i)), kBatchTolerance);
  }
  cache.truncate(0, 2);  // rewind seq 0 to 2 tokens and continue
  EXPECT_EQ(cache.size(0), 2);
  Batch again;
  for (int32_t i = 2; i < 10; ++i) again.add(ids[i], i, 0, true);
  r = model->forward(again, cache);
  EXPECT_LT(batch_diff(r.row(7), expected.row(9)), kBatchTolerance);
  cache.clear(0);
  EXPECT_FALSE(cache.has(0));
  EXPECT_TRUE(cache.has(1));
}

TEST(ModelErrors, MissingAndMisshapenTensorsAreNamed) {
  TempDir dir;
  TinySpec spec;
  testing::write_tiny_model(dir.path(), spec);
  auto config = io::read_model_config(dir.path());
  io::Checkpoint ckpt(dir.path());
  WeightMap weights = checkpoint_weights(ckpt);
  weights.erase("model.layers.1.mlp.up_proj.weight");
  try {
    Model m(config, weights);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos);
  }
  weights = checkpoint_weights(ckpt);
  weights["model.layers.0.self_attn.k_proj.weight"].shape = {16, 128};
  try {
    Model m(config, weights);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k_proj"), std::string::npos);
    // config.json's KV width (2 heads x 16) against the tensor's rows, before anything is sized.
    EXPECT_NE(std::string(e.what()).find("num_key_value_heads x head_dim = 32"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("[16, 128]"), std::string::npos) << e.what();
  }
  Model ok(config, checkpoint_weights(ckpt));
  KVCache cache = ok.new_cache();
  Batch bad;
  bad.add(static_cast<int32_t>(spec.V), 0, 0, true);
  EXPECT_THROW(ok.forward(bad, cache), Error);
}

// Weights need not come from a file: a WeightMap of in-memory tensors works the same.
TEST(ModelErrors, InMemoryWeightsGiveTheSameLogits) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  TinySpec spec;
  testing::write_tiny_model(dir.path(), spec);
  auto from_file = load_model(dir.path());
  io::Checkpoint ckpt(dir.path());
  std::map<std::string, tensor::Tensor> owned;
  WeightMap views;
  for (const auto& name : ckpt.names()) owned[name] = ckpt.load_f32(name);
  for (const auto& [name, t] : owned) {
    views[name] = tensor::TensorView{tensor::DType::kF32, t.shape,
                                     reinterpret_cast<const uint8_t*>(t.data.data())};
  }
  Model in_memory(io::read_model_config(dir.path()), views);
  const auto ids = random_ids(6, spec.V, 2);
  Batch b;
  b.add_sequence(ids, 0, 0, true);
  KVCache c1 = from_file->new_cache(), c2 = in_memory.new_cache();
  auto r1 = from_file->forward(b, c1);
  auto r2 = in_memory.forward(b, c2);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_LT(max_abs_diff(r1.row(i), r2.row(i)), 1e-5);
}

TEST(Dump, NamesShapesAndSelectors) {
  TempDir dir;
  TinySpec spec;
  testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  Dumper dump({"attn_out.1", "q", "logits"});
  KVCache cache = model->new_cache();
  Batch b;
  b.add_sequence(random_ids(5, spec.V, 3), 0, 0, false);
  ForwardOptions opt;
  opt.dump = &dump;
  model->forward(b, cache, opt);
  const auto& t = dump.tensors();
  EXPECT_EQ(t.size(), 4u);  // attn_out.1, q.0, q.1, logits
  EXPECT_EQ(t.at("attn_out.1").rows, 5);
  EXPECT_EQ(t.at("attn_out.1").cols, spec.D);
  EXPECT_EQ(t.at("q.0").cols, spec.H * spec.d);
  EXPECT_EQ(t.at("logits").rows, 1);
  EXPECT_THROW(Dumper({"nonsense.3"}), Error);
}

// ---------------------------------------------------------------------------------------------

TEST(SamplerTest, GreedyTopKAndNucleus) {
  std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f, 2.0f};
  EXPECT_EQ(argmax(logits), 1);  // first of the tied maxima
  SamplerOptions o;
  o.greedy = false;
  o.temperature = 1.0f;
  o.top_k = 1;
  Sampler k1(o);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k1.sample(logits), 1);
  // top_p = 0.5: ids 1 and 4 (tied, 0.31 each) are the nucleus; 2 and the rest never appear.
  o.top_k = 0;
  o.top_p = 0.5f;
  o.seed = 3;
  Sampler nucleus(o);
  std::map<int32_t, int> counts;
  for (int i = 0; i < 400; ++i) ++counts[nucleus.sample(logits)];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 150);
  EXPECT_GT(counts[4], 150);
  // Full sampling reproduces with a seed and follows the softmax roughly.
  o.top_p = 1.0f;
  o.seed = 9;
  Sampler a(o), b(o);
  std::map<int32_t, int> full;
  for (int i = 0; i < 2000; ++i) {
    int32_t x = a.sample(logits);
    EXPECT_EQ(x, b.sample(logits));
    ++full[x];
  }
  double z = 0;
  for (float l : logits) z += std::exp(l);
  EXPECT_NEAR(full[3] / 2000.0, std::exp(-1.0) / z, 0.02);
  EXPECT_NEAR(full[2] / 2000.0, std::exp(1.9) / z, 0.04);
}

TEST(Generation, GreedyMatchesStepwiseArgmaxAndBatchedDecoding) {
  TempDir dir;
  TinySpec spec;
  RefModel ref = testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  std::vector<std::vector<int32_t>> prompts = {random_ids(5, spec.V, 1), random_ids(3, spec.V, 2),
                                               random_ids(8, spec.V, 3)};
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  auto many = generate_many(*model, prompts, opt);
  for (size_t p = 0; p < prompts.size(); ++p) {
    auto one = generate(*model, prompts[p], opt);
    EXPECT_EQ(one.ids, many[p].ids);
    // Greedy continuation from the fp64 reference.
    std::vector<int32_t> seq = prompts[p];
    for (int i = 0; i < 6; ++i) {
      auto out = testing::ref_forward(ref, seq);
      const auto& last = out.logits.back();
      seq.push_back(
          static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin()));
    }
    EXPECT_EQ(one.ids, std::vector<int32_t>(seq.begin() + prompts[p].size(), seq.end()));
  }
  // A stop id ends generation and is not returned.
  auto first = generate(*model, prompts[0], opt);
  opt.stop_ids = {first.ids[2]};
  auto stopped = generate(*model, prompts[0], opt);
  EXPECT_TRUE(stopped.stopped);
  EXPECT_LE(stopped.ids.size(), 2u);
}

TEST(Perplexity, RowsAndChunksMatchDirectComputation) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  TinySpec spec;
  RefModel ref = testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  std::vector<std::vector<int32_t>> rows = {random_ids(9, spec.V, 1), random_ids(9, spec.V, 2),
                                            random_ids(5, spec.V, 3)};
  double total = 0;
  int64_t count = 0;
  for (const auto& row : rows) {
    auto out = testing::ref_forward(ref, row);
    for (size_t i = 0; i + 1 < row.size(); ++i) {
      double mx = *std::max_element(out.logits[i].begin(), out.logits[i].end()), z = 0;
      for (double l : out.logits[i]) z += std::exp(l - mx);
      total += std::log(z) + mx - out.logits[i][row[i + 1]];
      ++count;
    }
  }
  for (int64_t batch_tokens : {4, 2048}) {
    NllResult r = rows_nll(*model, rows, batch_tokens);
    EXPECT_EQ(r.count, count);
    EXPECT_NEAR(r.mean(), total / count, 1e-5);
  }
  // Chunks of 8 from a stream: BOS replaces the first token, predictions 4..6 -> 5..7 scored.
  auto stream = random_ids(17, spec.V, 4);
  NllResult c = chunked_nll(*model, stream, 8, 0);
  EXPECT_EQ(c.count, 2 * 3);
  double expect = 0;
  for (int chunk = 0; chunk < 2; ++chunk) {
    std::vector<int32_t> ids(stream.begin() + chunk * 8, stream.begin() + chunk * 8 + 8);
    ids[0] = 0;
    auto out = testing::ref_forward(ref, ids);
    for (int i = 4; i < 7; ++i) {
      double mx = *std::max_element(out.logits[i].begin(), out.logits[i].end()), z = 0;
      for (double l : out.logits[i]) z += std::exp(l - mx);
      expect += std::log(z) + mx - out.logits[i][stream[chunk * 8 + i + 1]];
    }
  }
  EXPECT_NEAR(c.mean(), expect / 6, 1e-5);
}

}  // namespace
}  // namespace amalgam::infer
