// amalgam embed MODEL[,MODEL...] --file ITEMS.jsonl -o OUT.safetensors [--pool last|mean]
//   [--layer K] [--unmasked]: hidden states per item, concatenated across models (Zhang &
//   Bottou's CAT_n representations; LS-LLaMA's features), written as safetensors: features F32
//   (items, sum of hidden sizes) and labels I64 (items). --unmasked: bidirectional attention
//   (LS-unLLaMA: the decoder run without its causal mask).
// amalgam probe TRAIN.safetensors --eval TEST.safetensors [--l2 X]: a linear probe (multinomial
//   logistic regression with bias, the solver of the calibrated MoE router): accuracy and a
//   confusion table.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/log.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "moe/logistic_regression.h"
#include "moe/router.h"

namespace amalgam::cli {

namespace {

namespace fs = std::filesystem;

struct EmbedArgs {
  std::string models;
  std::string file;
  std::string out;
  std::string pool = "last";
  int64_t layer = -1;  // -1: the final (normed) hidden state
  bool unmasked = false;
  int threads = 0;
};

struct Item {
  std::string text;
  int64_t label;
};

std::vector<Item> read_items(const std::string& path) {
  const std::string text = core::read_text_file(path);
  std::istringstream in(text);
  std::string line;
  std::vector<Item> items;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, n);
    const nlohmann::json j = core::parse_json_strict(line, where);
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
      fail("{}: an item is {{\"text\": ..., \"label\": integer}}", where);
    }
    if (!j.contains("label") || !j["label"].is_number_integer() || j["label"].get<int64_t>() < 0) {
      fail("{}: \"label\" must be a non-negative integer", where);
    }
    items.push_back({j["text"].get<std::string>(), j["label"].get<int64_t>()});
  }
  if (items.empty()) fail("{}: no items", path);
  return items;
}

// Features of one text under one model: the chosen layer's state at the last token or averaged
// over the tokens (BOS included).
std::vector<float> features(const infer::Model& m, const std::vector<int32_t>& ids,
                            const EmbedArgs& a) {
  const int64_t L = m.num_layers(), D = m.hidden_size();
  const int64_t layer = a.layer < 0 ? L : a.layer;
  // Layer k's input: embd (k = 0) or l_out.(k-1); k = L: the final normed state.
  const std::string name = layer == 0   ? std::string("embd")
                           : layer == L ? std::string("result_norm")
                                        : infer::Dumper::name("l_out", layer - 1);
  infer::Dumper dumper({name});
  infer::ForwardOptions o;
  o.dump = &dumper;
  o.unmasked = a.unmasked;
  if (a.unmasked) o.micro_batch = std::max<int64_t>(o.micro_batch, std::ssize(ids));
  infer::KVCache cache = m.new_cache();
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, layer == L);
  m.forward(batch, cache, o);
  const infer::DumpTensor& t = dumper.tensors().at(name);
  std::vector<float> out(static_cast<size_t>(D), 0.0f);
  if (a.pool == "last") {
    std::copy(t.data.end() - D, t.data.end(), out.begin());
  } else {
    for (int64_t r = 0; r < t.rows; ++r) {
      for (int64_t j = 0; j < D; ++j) out[j] += t.data[r * D + j] / static_cast<float>(t.rows);
    }
  }
  return out;
}

void write_safetensors(const std::string& out, const std::vector<float>& x, int64_t n, int64_t d,
                       const std::vector<int64_t>& labels) {
  core::StagedDirectory staged(out + ".d", true);
  {
    io::SafetensorsWriter w(
        staged.path(),
        {{"features", tensor::DType::kF32, {n, d}}, {"labels", tensor::DType::kI64, {n}}},
        UINT64_MAX);
    w.write(0, reinterpret_cast<const uint8_t*>(x.data()), x.size() * sizeof(float));
    w.write(1, reinterpret_cast<const uint8_t*>(labels.data()), labels.size() * sizeof(int64_t));
    w.finish();
  }
  std::error_code ec;
  fs::rename(staged.path() / "model.safetensors", out, ec);
  if (ec) fail("{}: cannot write: {}", out, ec.message());
}

void run_embed(const EmbedArgs& a) {
  apply_threads(a.threads);
  if (a.pool != "last" && a.pool != "mean") fail("--pool must be last or mean, got '{}'", a.pool);
  std::vector<std::string> paths;
  std::stringstream ss(a.models);
  for (std::string p; std::getline(ss, p, ',');) {
    if (!p.empty()) paths.push_back(p);
  }
  if (paths.empty()) fail("embed: no model given");
  const std::vector<Item> items = read_items(a.file);
  std::vector<LoadedModel> models;
  for (const auto& p : paths) {
    models.push_back(open_model(p, true));
    const int64_t L = models.back().model->num_layers();
    if (a.layer > L) fail("{}: --layer {} but the model has {} layers", p, a.layer, L);
  }
  int64_t d = 0;
  for (const auto& m : models) d += m.model->hidden_size();
  const int64_t n = static_cast<int64_t>(items.size());
  std::vector<float> x;
  x.reserve(static_cast<size_t>(n * d));
  std::vector<int64_t> labels;
  core::ProgressBar progress("embed", items.size(), "items");
  for (const Item& item : items) {
    for (const auto& m : models) {
      const std::vector<float> f =
          features(*m.model, moe::prompt_tokens(m.require_tokenizer(), item.text), a);
      x.insert(x.end(), f.begin(), f.end());
    }
    labels.push_back(item.label);
    progress.advance(1);
  }
  progress.finish();
  write_safetensors(a.out, x, n, d, labels);
  core::info("{}: {} items x {} features ({} model(s), pool {}, layer {}{})", a.out, n, d,
             models.size(), a.pool, a.layer < 0 ? std::string("final") : std::to_string(a.layer),
             a.unmasked ? ", unmasked" : "");
}

struct ProbeArgs {
  std::string train;
  std::string test;
  double l2 = 1e-3;
  int64_t max_iterations = 1000;
};

struct Set {
  std::vector<float> x;
  std::vector<int32_t> y;
  int64_t n = 0, d = 0;
};

Set read_set(const std::string& path) {
  io::SafetensorsFile f(path);
  const io::TensorInfo* fx = f.find("features");
  const io::TensorInfo* fy = f.find("labels");
  if (!fx || !fy)
    fail("{}: needs tensors 'features' and 'labels' (amalgam embed writes them)", path);
  if (fx->shape.size() != 2 || fy->shape.size() != 1 || fy->shape[0] != fx->shape[0]) {
    fail("{}: 'features' must be (items, dims) and 'labels' (items)", path);
  }
  if (!tensor::is_float_dtype(fx->dtype) || fy->dtype != tensor::DType::kI64) {
    fail("{}: 'features' must be a float tensor and 'labels' I64", path);
  }
  Set s;
  s.n = fx->shape[0];
  s.d = fx->shape[1];
  const tensor::TensorView vx = f.view(*fx), vy = f.view(*fy);
  s.x.resize(static_cast<size_t>(s.n * s.d));
  tensor::to_f32(vx.dtype, vx.data, s.x.data(), s.x.size());
  for (int64_t i = 0; i < s.n; ++i) {
    int64_t v;
    std::memcpy(&v, vy.data + i * 8, 8);
    if (v < 0 || v > 1'000'000) fail("{}: label {} of item {} is out of range", path, v, i);
    s.y.push_back(static_cast<int32_t>(v));
  }
  return s;
}

void run_probe(const ProbeArgs& a) {
  const Set train = read_set(a.train), test = read_set(a.test);
  if (train.d != test.d) {
    fail("{} has {} features, {} has {}", a.train, train.d, a.test, test.d);
  }
  const int64_t classes = 1 + std::max(*std::max_element(train.y.begin(), train.y.end()),
                                       *std::max_element(test.y.begin(), test.y.end()));
  moe::LogisticOptions o;
  o.l2 = a.l2;
  o.bias = true;
  o.max_iterations = a.max_iterations;
  const moe::LogisticFit fit =
      moe::fit_logistic(train.x, train.n, train.d, train.y, std::max<int64_t>(2, classes), o);
  if (!fit.converged) {
    core::warn("probe: stopped after {} iterations (gradient {:.2e})", fit.iterations,
               fit.gradient_norm);
  }
  std::vector<std::vector<int64_t>> confusion(static_cast<size_t>(classes),
                                              std::vector<int64_t>(static_cast<size_t>(classes)));
  for (int64_t i = 0; i < test.n; ++i) {
    ++confusion[test.y[i]][fit.model.predict(&test.x[i * test.d])];
  }
  std::printf("train accuracy %.4f (%lld items), eval accuracy %.4f (%lld items)\n",
              moe::accuracy(fit.model, train.x, train.n, train.y), static_cast<long long>(train.n),
              moe::accuracy(fit.model, test.x, test.n, test.y), static_cast<long long>(test.n));
  std::printf("confusion (rows: label, columns: predicted)\n      ");
  for (int64_t c = 0; c < classes; ++c) std::printf("%6lld", static_cast<long long>(c));
  std::printf("\n");
  for (int64_t r = 0; r < classes; ++r) {
    std::printf("%6lld", static_cast<long long>(r));
    for (int64_t c = 0; c < classes; ++c)
      std::printf("%6lld", static_cast<long long>(confusion[r][c]));
    std::printf("\n");
  }
}

}  // namespace

void register_embed(CLI::App& app) {
  auto a = std::make_shared<EmbedArgs>();
  auto* cmd = app.add_subcommand(
      "embed", "Hidden states per item (several models concatenated) as safetensors features");
  cmd->add_option("models", a->models, "Model directory, or several separated by commas")
      ->required();
  cmd->add_option("--file", a->file, "Items, JSON Lines: {\"text\", \"label\"}")->required();
  cmd->add_option("-o,--out", a->out, "Output .safetensors (features, labels)")->required();
  cmd->add_option("--pool", a->pool, "last (default) or mean over the tokens");
  cmd->add_option("--layer", a->layer,
                  "Input of layer K (0 = embeddings); default: the final normed state");
  cmd->add_flag("--unmasked", a->unmasked,
                "Bidirectional attention: no causal mask within an item (LS-unLLaMA)");
  add_threads_option(cmd, a->threads);
  cmd->callback([a] { run_embed(*a); });
}

void register_probe(CLI::App& app) {
  auto a = std::make_shared<ProbeArgs>();
  auto* cmd = app.add_subcommand("probe", "Linear probe (logistic regression) on embed features");
  cmd->add_option("train", a->train, "Training features (amalgam embed)")->required();
  cmd->add_option("--eval", a->test, "Evaluation features")->required();
  cmd->add_option("--l2", a->l2, "L2 penalty of the weights (default 1e-3)");
  cmd->add_option("--max-iterations", a->max_iterations, "L-BFGS iterations (default 1000)");
  cmd->callback([a] { run_probe(*a); });
}

}  // namespace amalgam::cli
