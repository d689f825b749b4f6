#include "moe/calibrate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/log.h"
#include "core/progress.h"
#include "infer/model.h"
#include "moe/logistic_regression.h"
#include "moe/router.h"
#include "tensor/tensor.h"

namespace amalgam::moe {

namespace fs = std::filesystem;

namespace {

std::string item_text(const nlohmann::json& item, const std::string& where) {
  if (item.is_string()) return item.get<std::string>();
  if (item.is_object()) {
    if (item.contains("text") && item["text"].is_string()) return item["text"].get<std::string>();
    if (item.contains("prompt") && item["prompt"].is_string()) {
      std::string s = item["prompt"].get<std::string>();
      if (item.contains("answer") && item["answer"].is_string())
        s += item["answer"].get<std::string>();
      return s;
    }
  }
  fail("{}: a calibration item must be a string, {{\"text\"}} or {{\"prompt\", \"answer\"}}",
       where);
}

// Batches of whole samples, about this many tokens each (attention over a batch costs its
// square, whatever the sequences).
constexpr size_t kBatchTokens = 512;

struct Sample {
  int32_t expert;
  bool heldout;
  std::vector<int32_t> tokens;
};

}  // namespace

std::vector<std::string> calibration_texts(const ExpertConfig& expert) {
  if (expert.calibration_data.empty()) return expert.positive_prompts;
  if (!fs::is_regular_file(expert.calibration_data)) {
    fail("calibration_data '{}' of expert {}: no such file", expert.calibration_data,
         expert.source_model);
  }
  return read_samples(expert.calibration_data);
}

std::vector<std::string> read_samples(const std::string& file) {
  const fs::path path = file;
  if (!fs::is_regular_file(path)) fail("{}: no such file", file);
  const std::string text = core::read_text_file(path);
  std::vector<std::string> out;
  const std::string ext = path.extension().string();
  if (ext == ".json") {
    const nlohmann::json j = core::parse_json_strict(text, path.string());
    if (!j.is_array()) fail("{}: expected a JSON array of samples", path.string());
    for (size_t i = 0; i < j.size(); ++i) {
      out.push_back(item_text(j[i], fmt::format("{}[{}]", path.string(), i)));
    }
  } else {
    std::istringstream in(text);
    std::string line;
    for (size_t n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      if (ext == ".jsonl") {
        const std::string where = fmt::format("{}:{}", path.string(), n);
        out.push_back(item_text(core::parse_json_strict(line, where), where));
      } else {
        out.push_back(line);
      }
    }
  }
  std::erase_if(out, [](const std::string& s) { return s.empty(); });
  if (out.empty()) fail("'{}': no samples", path.string());
  return out;
}

namespace {

class Calibrator {
 public:
  Calibrator(const io::ModelConfig& moe_config, merge::MemorySink& sink,
             const std::vector<size_t>& router_index, tensor::DType router_dtype,
             const MoeConfig& config, std::vector<Sample> samples)
      : moe_config_(moe_config),
        sink_(sink),
        router_index_(router_index),
        router_dtype_(router_dtype),
        config_(config),
        samples_(std::move(samples)),
        experts_(routed_experts(config)) {
    for (size_t i = 0; i < samples_.size();) {
      size_t j = i, tokens = 0;
      while (j < samples_.size() &&
             (j == i || tokens + samples_[j].tokens.size() <= kBatchTokens)) {
        tokens += samples_[j++].tokens.size();
      }
      batches_.push_back({i, j});
      i = j;
    }
    options_.l2 = config.calibration.l2;
    options_.max_iterations = config.calibration.max_iterations;
  }

  // Fits layer l's router on the MoE as fitted so far (routers of layers >= l do not change
  // its input). bos >= 0 also labels the BOS states of the training samples with expert bos.
  LayerCalibration fit_layer(int64_t l, int32_t bos) {
    const int64_t D = moe_config_.hidden_size;
    const infer::Model model(moe_config_, sink_.views());
    const std::string name = infer::Dumper::name("ffn_norm", l);
    std::vector<float> train_x, test_x;
    std::vector<int32_t> train_y, test_y;
    for (const auto& [first, last] : batches_) {
      infer::Batch batch;
      for (size_t s = first; s < last; ++s) {
        batch.add_sequence(samples_[s].tokens, static_cast<int32_t>(s - first), 0, false);
      }
      infer::Dumper dumper({name});
      infer::ForwardOptions fo;
      fo.dump = &dumper;
      infer::KVCache cache = model.new_cache();
      model.forward(batch, cache, fo);
      const infer::DumpTensor& h = dumper.tensors().at(name);
      AMALGAM_CHECK(h.rows == static_cast<int64_t>(batch.size()) && h.cols == D,
                    "internal: {} has {} rows for {} tokens", name, h.rows, batch.size());
      for (size_t t = 0; t < batch.size(); ++t) {
        const infer::BatchToken& bt = batch.tokens[t];
        const Sample& s = samples_[first + static_cast<size_t>(bt.seq)];
        if (bt.pos == 0 && (bos < 0 || s.heldout)) continue;
        auto& x = s.heldout ? test_x : train_x;
        auto& y = s.heldout ? test_y : train_y;
        x.insert(x.end(), h.data.begin() + t * D, h.data.begin() + (t + 1) * D);
        y.push_back(bt.pos == 0 ? bos : s.expert);
      }
    }
    const int64_t n = static_cast<int64_t>(train_y.size());
    if (n == 0) fail("{}: the calibration texts have no tokens after BOS", config_.where);
    const LogisticFit fit = fit_logistic(train_x, n, D, train_y, experts_, options_);
    std::vector<float> w(fit.model.weights.begin(), fit.model.weights.end());
    std::vector<uint8_t> bytes(w.size() * tensor::dtype_size(router_dtype_));
    tensor::from_f32(w.data(), router_dtype_, bytes.data(), w.size());
    sink_.write(router_index_.at(static_cast<size_t>(l)), 0, bytes.data(), bytes.size());
    LayerCalibration r;
    r.layer = l;
    r.train_tokens = n;
    r.heldout_tokens = static_cast<int64_t>(test_y.size());
    r.train_accuracy = accuracy(fit.model, train_x, n, train_y);
    r.heldout_accuracy = test_y.empty() ? std::numeric_limits<double>::quiet_NaN()
                                        : accuracy(fit.model, test_x, r.heldout_tokens, test_y);
    r.iterations = fit.iterations;
    r.bos_expert = bos;
    if (!fit.converged) {
      core::warn("layer {}: router fit stopped after {} iterations (gradient {:.2e})", l,
                 fit.iterations, fit.gradient_norm);
    }
    return r;
  }

  // Mean over experts of the mean next-token nll of the expert's held-out samples (all samples
  // when none is held out) under the MoE as it stands.
  double heldout_nll() {
    const infer::Model model(moe_config_, sink_.views());
    const bool any_heldout =
        std::any_of(samples_.begin(), samples_.end(), [](const Sample& s) { return s.heldout; });
    std::vector<double> sum(static_cast<size_t>(experts_), 0.0);
    std::vector<int64_t> count(static_cast<size_t>(experts_), 0);
    for (const auto& [first, last] : batches_) {
      infer::Batch batch;
      for (size_t s = first; s < last; ++s) {
        if (any_heldout && !samples_[s].heldout) continue;
        batch.add_sequence(samples_[s].tokens, static_cast<int32_t>(s - first), 0, true);
      }
      if (batch.empty()) continue;
      infer::KVCache cache = model.new_cache();
      const infer::ForwardResult r = model.forward(batch, cache);
      for (size_t t = 0; t + 1 < batch.size(); ++t) {
        const infer::BatchToken& a = batch.tokens[t];
        const infer::BatchToken& b = batch.tokens[t + 1];
        if (a.seq != b.seq) continue;
        const auto z = r.row(t);
        const float zmax = *std::max_element(z.begin(), z.end());
        double total = 0.0;
        for (float v : z) total += std::exp(static_cast<double>(v) - zmax);
        const int32_t e = samples_[first + static_cast<size_t>(a.seq)].expert;
        sum[e] += std::log(total) + zmax - z[b.id];
        count[e] += 1;
      }
    }
    // Over the experts that have text (bos_expert has none).
    double mean = 0.0;
    int64_t with_text = 0;
    for (int64_t e = 0; e < experts_; ++e) {
      if (count[e] == 0) continue;
      mean += sum[e] / static_cast<double>(count[e]);
      ++with_text;
    }
    return with_text ? mean / static_cast<double>(with_text) : 0.0;
  }

  int64_t experts() const { return experts_; }

 private:
  const io::ModelConfig& moe_config_;
  merge::MemorySink& sink_;
  const std::vector<size_t>& router_index_;
  tensor::DType router_dtype_;
  const MoeConfig& config_;
  std::vector<Sample> samples_;
  int64_t experts_;
  std::vector<std::pair<size_t, size_t>> batches_;  // [first, last) sample
  LogisticOptions options_;
};

}  // namespace

std::vector<LayerCalibration> calibrate_routers(const io::ModelConfig& moe_config,
                                                merge::MemorySink& sink,
                                                const std::vector<size_t>& router_index,
                                                tensor::DType router_dtype,
                                                const tokenizer::Tokenizer& tokenizer,
                                                const MoeConfig& config) {
  const int64_t L = moe_config.num_layers;
  const int64_t E = routed_experts(config);
  const CalibrationConfig& cal = config.calibration;
  const int64_t every = cal.holdout > 0 ? std::max<int64_t>(2, std::llround(1.0 / cal.holdout)) : 0;
  std::vector<Sample> samples;
  for (size_t e = 0; e < config.experts.size(); ++e) {
    const std::vector<std::string> texts = calibration_texts(config.experts[e]);
    for (size_t i = 0; i < texts.size(); ++i) {
      const bool heldout =
          every > 0 && texts.size() >= 2 && static_cast<int64_t>(i % every) == every - 1;
      samples.push_back({static_cast<int32_t>(e), heldout, prompt_tokens(tokenizer, texts[i])});
    }
  }
  Calibrator calibrator(moe_config, sink, router_index, router_dtype, config, std::move(samples));
  std::vector<LayerCalibration> report;
  const uint64_t steps = static_cast<uint64_t>((cal.bos_auto ? E * L * (L + 1) / 2 : 0) + L);
  core::ProgressBar progress("calibrate routers", steps, "fits");
  for (int64_t l = 0; l < L; ++l) {
    // bos: N (every layer) or [N0, N1, ...] (per layer).
    int32_t bos = -1;
    if (!cal.bos_experts.empty()) {
      if (cal.bos_experts.size() != 1 && static_cast<int64_t>(cal.bos_experts.size()) != L) {
        fail("{}: calibration.bos lists {} experts for {} layers", config.where,
             cal.bos_experts.size(), L);
      }
      bos = cal.bos_experts[cal.bos_experts.size() == 1 ? 0 : static_cast<size_t>(l)];
    }
    if (cal.bos_auto) {
      // Each candidate: layer l's BOS to expert k, the layers above fitted without BOS, scored
      // by the held-out next-token nll of the whole MoE.
      double best = std::numeric_limits<double>::infinity();
      for (int32_t k = 0; k < E; ++k) {
        calibrator.fit_layer(l, k);
        for (int64_t j = l + 1; j < L; ++j) calibrator.fit_layer(j, -1);
        progress.advance(static_cast<uint64_t>(L - l));
        const double nll = calibrator.heldout_nll();
        core::debug("layer {}: BOS to expert {}: held-out nll {:.4f}", l, k, nll);
        if (nll < best) {
          best = nll;
          bos = k;
        }
      }
    }
    report.push_back(calibrator.fit_layer(l, bos));
    progress.advance(1);
  }
  progress.finish();
  return report;
}

}  // namespace amalgam::moe
