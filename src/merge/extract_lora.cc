#include "merge/extract_lora.h"

// GCC 12 reports false maybe-uninitialized warnings inside Eigen's AVX-512 packet code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <Eigen/SVD>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <thread>

#include "arch/architecture.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "core/progress.h"
#include "io/hf_config.h"
#include "io/lora.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "tensor/convert.h"

namespace amalgam::merge {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

constexpr int64_t kDefaultMaxRank = 128;  // mergekit's --max-rank default

enum class Kind {
  kFactor,  // 2-D weight: truncated SVD of the difference
  kWhole,   // saved as it is in the fine-tune (modules_to_save)
  kBias,    // bias of a factored module: lora_B.bias = difference
};

struct OutputTensor {
  io::OutputTensorSpec spec;
  std::vector<uint8_t> bytes;
};

struct Item {
  Kind kind = Kind::kWhole;
  std::string tensor;      // name in both checkpoints
  std::string module;      // tensor name without .weight / .bias
  bool embedding = false;  // input embedding: factor D^T into lora_embedding_A/B
  uint64_t cost = 0;
  // Results.
  std::vector<OutputTensor> outputs;
  std::optional<ExtractedModule> extracted;
  bool unchanged = false;
};

std::string module_of(const std::string& tensor) {
  for (const char* suffix : {".weight", ".bias"}) {
    if (tensor.ends_with(suffix)) return tensor.substr(0, tensor.size() - std::strlen(suffix));
  }
  return tensor;
}

Item make_item(Kind kind, const std::string& tensor, uint64_t cost, bool embedding = false) {
  Item item;
  item.kind = kind;
  item.tensor = tensor;
  item.module = module_of(tensor);
  item.embedding = embedding;
  item.cost = cost;
  return item;
}

std::string last_component(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

// Embedding-like tensors (rows are the vocabulary): the architecture table's, or mergekit's
// inference from tensor names when there is none.
void embedding_names(const io::Checkpoint& ft, const io::ModelConfig& config,
                     std::set<std::string>& inputs, std::set<std::string>& outputs) {
  arch::Architecture inferred;
  const arch::Architecture* table = arch::find_architecture(config.architecture);
  if (!table) {
    std::vector<arch::InferenceInput> in{arch::InferenceInput{
        ft.names(), [&](const std::string& n) { return ft.info(n).shape; }, config.vocab_size}};
    inferred = arch::infer_architecture(config.architecture, in).arch;
    table = &inferred;
  }
  auto add = [](const arch::WeightSpec& w, std::set<std::string>& to) {
    if (!w.is_embed) return;
    to.insert(w.name);
    to.insert(w.aliases.begin(), w.aliases.end());
  };
  for (const auto& w : table->pre_weights) add(w, inputs);
  for (const auto& w : table->post_weights) add(w, outputs);
}

std::vector<float> load_checked(const io::Checkpoint& ckpt, const std::string& name) {
  tensor::Tensor t = ckpt.load_f32(name);
  for (size_t i = 0; i < t.data.size(); ++i) {
    if (!std::isfinite(t.data[i])) {
      fail("{}: tensor '{}' holds {} at element {}; the checkpoint is broken",
           ckpt.shard_of(name).path(), name, std::isnan(t.data[i]) ? "NaN" : "Inf", i);
    }
  }
  return std::move(t.data);
}

std::vector<uint8_t> encode(const std::vector<float>& v, tensor::DType dtype,
                            const std::string& name) {
  std::vector<uint8_t> out(v.size() * tensor::dtype_size(dtype));
  const size_t bad = tensor::encode_checked(v.data(), dtype, out.data(), v.size());
  if (bad != v.size()) {
    fail("adapter tensor '{}': value {} at element {} does not fit {} (use --dtype float32)", name,
         v[bad], bad, tensor::dtype_name(dtype));
  }
  return out;
}

class Extractor {
 public:
  Extractor(const io::Checkpoint& ft, const io::Checkpoint& base, const ExtractLoraOptions& options)
      : ft_(ft), base_(base), options_(options) {
    for (const auto& r : options.include_regex)
      include_.emplace_back(compile(r, "--include-regex"));
    for (const auto& r : options.exclude_regex)
      exclude_.emplace_back(compile(r, "--exclude-regex"));
  }

  // Decides, per tensor of the fine-tune, whether it is factored, saved whole, or left out.
  std::vector<Item> plan(const io::ModelConfig& config) {
    std::set<std::string> input_embeds, output_embeds;
    embedding_names(ft_, config, input_embeds, output_embeds);
    std::vector<Item> items;
    std::set<std::string> factored;
    std::vector<std::string> biases;
    for (const std::string& name : ft_.names()) {
      if (name.ends_with("rotary_emb.inv_freq")) continue;
      const io::TensorInfo& info = ft_.info(name);
      if (!tensor::is_float_dtype(info.dtype)) {
        core::warn("{}: tensor '{}' ({}) is not a float tensor; it is not in the adapter",
                   ft_.path().string(), name, tensor::dtype_name(info.dtype));
        continue;
      }
      if (!base_.has(name)) {
        fail("{}: tensor '{}' of the fine-tune is missing from the base model",
             base_.path().string(), name);
      }
      const io::TensorInfo& b = base_.info(name);
      const std::string module = module_of(name);
      const bool embed = input_embeds.count(name) || output_embeds.count(name);
      if (!tensor::is_float_dtype(b.dtype)) {
        fail("{}: tensor '{}' is {} in the base model", base_.path().string(), name,
             tensor::dtype_name(b.dtype));
      }
      // Only a vocabulary may differ (rows of an embedding).
      const bool resized =
          embed && b.shape.size() == 2 && info.shape.size() == 2 && b.shape[1] == info.shape[1];
      if (b.shape != info.shape && !resized) {
        fail(
            "tensor '{}' is {} in the fine-tune {} but {} in the base {}; they are not the same "
            "architecture",
            name, tensor::shape_string(info.shape), ft_.path().string(),
            tensor::shape_string(b.shape), base_.path().string());
      }
      if (excluded(module)) continue;
      const uint64_t cost = static_cast<uint64_t>(tensor::numel(info.shape));
      if (name.ends_with(".weight") && info.shape.size() == 2 && (!embed || options_.embed_lora)) {
        if (b.shape != info.shape) {
          fail(
              "tensor '{}': the fine-tune's vocabulary ({}) differs from the base's ({}); "
              "extract without --embed-lora to save it whole",
              name, tensor::shape_string(info.shape), tensor::shape_string(b.shape));
        }
        if (!included(module)) continue;
        const uint64_t svd_cost =
            cost * static_cast<uint64_t>(std::min(info.shape[0], info.shape[1]));
        items.push_back(make_item(Kind::kFactor, name, svd_cost, input_embeds.count(name) > 0));
        factored.insert(module);
      } else if (name.ends_with(".bias") && info.shape.size() == 1) {
        biases.push_back(name);
      } else if (embed || !options_.skip_undecomposable) {
        if (b.shape != info.shape) {
          core::warn(
              "tensor '{}': the fine-tune's vocabulary ({}) differs from the base's ({}); "
              "saved whole, but the adapter fits the fine-tune's vocabulary only",
              name, tensor::shape_string(info.shape), tensor::shape_string(b.shape));
        }
        items.push_back(make_item(Kind::kWhole, name, cost));
      }
    }
    // A bias follows its module: an update next to a factored weight, else saved whole.
    for (const std::string& name : biases) {
      const std::string module = module_of(name);
      const uint64_t cost = static_cast<uint64_t>(tensor::numel(ft_.info(name).shape));
      if (factored.count(module)) {
        items.push_back(make_item(Kind::kBias, name, cost));
      } else if (!options_.skip_undecomposable) {
        items.push_back(make_item(Kind::kWhole, name, cost));
      }
    }
    return items;
  }

  // Weights first (in parallel), then biases, which depend on them.
  void run(Item& item, tensor::DType dtype, const std::set<std::string>& factored) {
    switch (item.kind) {
      case Kind::kFactor:
        factor(item, dtype);
        break;
      case Kind::kWhole:
        whole(item);
        break;
      case Kind::kBias:
        bias(item, dtype, factored);
        break;
    }
  }

 private:
  static std::regex compile(const std::string& r, const char* option) {
    try {
      return std::regex(r);
    } catch (const std::regex_error& e) {
      fail("{} '{}' is not a valid regular expression: {}", option, r, e.what());
    }
  }
  bool excluded(const std::string& module) const {
    return std::any_of(exclude_.begin(), exclude_.end(),
                       [&](const std::regex& r) { return std::regex_search(module, r); });
  }
  bool included(const std::string& module) const {
    return include_.empty() ||
           std::any_of(include_.begin(), include_.end(),
                       [&](const std::regex& r) { return std::regex_search(module, r); });
  }

  std::vector<float> difference(const std::string& name) const {
    std::vector<float> d = load_checked(ft_, name);
    const std::vector<float> b = load_checked(base_, name);
    for (size_t i = 0; i < d.size(); ++i) d[i] -= b[i];
    return d;
  }

  // D (rows, cols) ~ B A with B = U_r sqrt(S_r) (rows, r), A = sqrt(S_r) V_r^T (r, cols); for an
  // input embedding D^T is factored (PEFT's lora_embedding_A is (r, vocab)).
  void factor(Item& item, tensor::DType dtype) {
    const io::TensorInfo& info = ft_.info(item.tensor);
    std::vector<float> d = difference(item.tensor);
    if (std::all_of(d.begin(), d.end(), [](float v) { return v == 0.0f; })) {
      item.unchanged = true;
      return;
    }
    const Eigen::Index rows = info.shape[0], cols = info.shape[1];
    using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::MatrixXf m;
    if (item.embedding) {
      m = Eigen::Map<const Eigen::MatrixXf>(d.data(), cols, rows);  // D^T, (dim, vocab)
    } else {
      m = Eigen::Map<const RowMajor>(d.data(), rows, cols);
    }
    std::vector<float>().swap(d);
    Eigen::BDCSVD<Eigen::MatrixXf> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const Eigen::VectorXf& s = svd.singularValues();
    const Eigen::MatrixXf& u = svd.matrixU();
    const Eigen::MatrixXf& v = svd.matrixV();
    const int64_t full = s.size();

    int64_t rank =
        std::min(full, options_.max_rank.value_or(options_.energy ? full : kDefaultMaxRank));
    double total = 0;
    for (int64_t k = 0; k < full; ++k) total += static_cast<double>(s[k]) * s[k];
    if (options_.energy) {
      double kept = 0;
      int64_t k = 0;
      while (k < full && kept < *options_.energy * total) {
        kept += static_cast<double>(s[k]) * s[k];
        ++k;
      }
      rank = std::min(rank, std::max<int64_t>(k, 1));
    }
    if (options_.sv_epsilon > 0) {
      int64_t above = 0;
      while (above < full && s[above] > options_.sv_epsilon) ++above;
      rank = std::min(rank, above);
    }
    if (rank == 0 || total == 0) {
      item.unchanged = true;
      return;
    }
    double kept = 0;
    for (int64_t k = 0; k < rank; ++k) kept += static_cast<double>(s[k]) * s[k];

    const Eigen::Index m_rows = m.rows(), m_cols = m.cols();
    std::vector<float> a(static_cast<size_t>(rank * m_cols)), b(static_cast<size_t>(m_rows * rank));
    for (int64_t k = 0; k < rank; ++k) {
      const float scale_a = options_.distribute_scale ? std::sqrt(s[k]) : s[k];
      const float scale_b = options_.distribute_scale ? std::sqrt(s[k]) : 1.0f;
      for (Eigen::Index j = 0; j < m_cols; ++j) a[k * m_cols + j] = scale_a * v(j, k);
      for (Eigen::Index i = 0; i < m_rows; ++i) b[i * rank + k] = u(i, k) * scale_b;
    }
    const std::string prefix = std::string(io::kPeftPrefix) + item.module;
    const std::string a_name = prefix + (item.embedding ? ".lora_embedding_A" : ".lora_A.weight");
    const std::string b_name = prefix + (item.embedding ? ".lora_embedding_B" : ".lora_B.weight");
    item.outputs.push_back({{a_name, dtype, {rank, m_cols}}, encode(a, dtype, a_name)});
    item.outputs.push_back({{b_name, dtype, {m_rows, rank}}, encode(b, dtype, b_name)});
    item.extracted = ExtractedModule{item.module, rank, full, kept / total};
  }

  void whole(Item& item) {
    const tensor::TensorView view = ft_.view(item.tensor);
    const std::string name = std::string(io::kPeftPrefix) + item.tensor;
    const tensor::DType dtype = options_.dtype.value_or(view.dtype);
    if (dtype == view.dtype) {
      item.outputs.push_back({{name, dtype, view.shape}, {view.data, view.data + view.nbytes()}});
    } else {
      item.outputs.push_back(
          {{name, dtype, view.shape}, encode(load_checked(ft_, item.tensor), dtype, name)});
    }
  }

  // Runs after the weights: a lora_B.bias needs its module's lora_A/lora_B. When the weight did
  // not change (nothing factored), a changed bias is saved whole instead.
  void bias(Item& item, tensor::DType dtype, const std::set<std::string>& factored) {
    std::vector<float> d = difference(item.tensor);
    if (!factored.count(item.module)) {
      item.kind = Kind::kWhole;
      if (std::all_of(d.begin(), d.end(), [](float v) { return v == 0.0f; })) {
        item.unchanged = true;
      } else {
        whole(item);
      }
      return;
    }
    const std::string name = std::string(io::kPeftPrefix) + item.module + ".lora_B.bias";
    const tensor::Shape shape = ft_.info(item.tensor).shape;
    item.outputs.push_back({{name, dtype, shape}, encode(d, dtype, name)});
  }

  const io::Checkpoint& ft_;
  const io::Checkpoint& base_;
  const ExtractLoraOptions& options_;
  std::vector<std::regex> include_, exclude_;
};

// Runs the items on worker threads, largest first, biases last; rethrows the first error.
void run_items(Extractor& extractor, std::vector<Item>& items, const io::Checkpoint& ft,
               const ExtractLoraOptions& options) {
  std::vector<size_t> order, biases;
  for (size_t i = 0; i < items.size(); ++i) {
    (items[i].kind == Kind::kBias ? biases : order).push_back(i);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return items[a].cost > items[b].cost; });
  unsigned threads = options.threads ? options.threads : std::thread::hardware_concurrency();
  threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(items.size())));
  // Parallel over tensors: Eigen's own (OpenMP) threads would oversubscribe the cores.
  const int eigen_threads = Eigen::nbThreads();
  if (threads > 1) Eigen::setNbThreads(1);
  std::optional<core::ProgressBar> progress;
  if (options.progress) progress.emplace("extract-lora", items.size(), "tensors");
  std::set<std::string> factored;
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex error_mutex;
  std::exception_ptr error;
  auto run = [&](size_t index) {
    core::check_interrupted();
    Item& item = items[index];
    const tensor::DType dtype = options.dtype.value_or(ft.info(item.tensor).dtype);
    extractor.run(item, dtype, factored);
    uint64_t written = 0;
    for (const auto& o : item.outputs) written += o.bytes.size();
    if (progress) progress->advance(1, 2 * ft.view(item.tensor).nbytes(), written);
  };
  auto work = [&] {
    try {
      while (!stop.load()) {
        const size_t i = next++;
        if (i >= order.size()) break;
        run(order[i]);
      }
    } catch (...) {
      std::lock_guard lock(error_mutex);
      if (!error) error = std::current_exception();
      stop = true;
    }
  };
  std::vector<std::thread> workers;
  for (unsigned t = 1; t < threads; ++t) workers.emplace_back(work);
  work();
  for (auto& w : workers) w.join();
  Eigen::setNbThreads(eigen_threads);
  if (error) std::rethrow_exception(error);
  for (const auto& item : items) {
    if (item.extracted) factored.insert(item.module);
  }
  for (size_t i : biases) run(i);  // small, after their weights
  if (progress) progress->finish();
}

ordered_json adapter_config(const std::string& base_name, const std::vector<Item>& items,
                            int64_t max_rank) {
  std::set<std::string> targets, saved;
  ordered_json ranks = ordered_json::object();
  for (const auto& item : items) {
    if (item.extracted) {
      targets.insert(last_component(item.module));
      if (item.extracted->rank != max_rank) ranks[item.module] = item.extracted->rank;
    } else if (item.kind == Kind::kWhole && !item.outputs.empty()) {
      saved.insert(last_component(item.module));
    }
  }
  // mergekit's make_config_dict: lora_alpha = r per module, so every scale is 1.
  ordered_json j;
  j["base_model_name_or_path"] = base_name;
  j["peft_type"] = "LORA";
  j["use_rslora"] = false;
  j["target_modules"] = std::vector<std::string>(targets.begin(), targets.end());
  j["modules_to_save"] = std::vector<std::string>(saved.begin(), saved.end());
  j["task_type"] = "CAUSAL_LM";
  j["r"] = max_rank;
  j["lora_alpha"] = max_rank;
  j["rank_pattern"] = ranks;
  j["alpha_pattern"] = ranks;
  j["lora_dropout"] = 0.0;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  return j;
}

std::string adapter_card(const fs::path& model, const std::string& base_name,
                         const ExtractLoraStats& stats) {
  return fmt::format(
      "---\nbase_model: {}\nlibrary_name: peft\ntags:\n- amalgam\n- lora\n---\n"
      "# LoRA extracted from {}\n\n"
      "A PEFT LoRA adapter extracted with amalgam (`amalgam extract-lora`): a truncated SVD of "
      "the difference between `{}` and its base `{}` in each linear module ({} modules, rank up "
      "to {}; `lora_alpha` equals the rank, so every scale is 1). {} tensors (norms, and the "
      "embeddings unless `--embed-lora`) are stored whole in `modules_to_save`.\n\n"
      "Apply it with PEFT, or in an amalgam or mergekit recipe as `model: {}+<this directory>`. "
      "If the fine-tune resized the vocabulary, the base model must be resized the same way "
      "before the adapter is applied.\n",
      base_name, model.filename().string(), model.string(), base_name, stats.modules.size(),
      stats.max_rank, stats.saved_whole, base_name);
}

}  // namespace

ExtractLoraStats extract_lora(const fs::path& model, const fs::path& base, const fs::path& out,
                              const ExtractLoraOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.max_rank && *options.max_rank < 1) fail("--rank must be at least 1");
  if (options.energy && !(*options.energy > 0 && *options.energy <= 1)) {
    fail("--rank-by-energy must be a fraction in (0, 1], not {}", *options.energy);
  }
  if (options.sv_epsilon < 0) fail("--sv-epsilon must not be negative");
  if (options.dtype && !tensor::is_float_dtype(*options.dtype)) {
    fail("--dtype must be float32, bfloat16 or float16");
  }
  const io::Checkpoint ft(model);
  const io::Checkpoint base_ckpt(base);
  const io::ModelConfig config = io::read_model_config(ft.directory());
  std::error_code ec;
  const fs::path target = fs::weakly_canonical(fs::absolute(out), ec);
  for (const fs::path& input : {ft.directory(), base_ckpt.directory()}) {
    if (fs::weakly_canonical(fs::absolute(input), ec) == target) {
      fail("{}: the output directory is an input; choose another output", out.string());
    }
  }

  Extractor extractor(ft, base_ckpt, options);
  std::vector<Item> items = extractor.plan(config);
  core::StagedDirectory staged(out, options.force);
  run_items(extractor, items, ft, options);

  ExtractLoraStats stats;
  std::vector<OutputTensor*> outputs;
  for (auto& item : items) {
    if (item.unchanged) ++stats.unchanged;
    if (item.kind == Kind::kWhole && !item.outputs.empty()) ++stats.saved_whole;
    if (item.kind == Kind::kBias) ++stats.bias_updates;
    if (item.extracted) {
      stats.modules.push_back(*item.extracted);
      stats.max_rank = std::max(stats.max_rank, item.extracted->rank);
    }
    for (auto& o : item.outputs) outputs.push_back(&o);
  }
  std::sort(stats.modules.begin(), stats.modules.end(),
            [](const auto& a, const auto& b) { return a.module < b.module; });
  std::sort(outputs.begin(), outputs.end(),
            [](const auto* a, const auto* b) { return a->spec.name < b->spec.name; });
  if (outputs.empty()) {
    fail("{} and {} hold the same weights: there is nothing to extract", model.string(),
         base.string());
  }

  std::vector<io::OutputTensorSpec> specs;
  for (const auto* o : outputs) specs.push_back(o->spec);
  {
    io::SafetensorsWriter writer(staged.path(), specs, UINT64_MAX);
    for (size_t i = 0; i < outputs.size(); ++i) {
      writer.write(i, outputs[i]->bytes.data(), outputs[i]->bytes.size());
      stats.bytes_written += outputs[i]->bytes.size();
    }
    writer.finish();
  }
  fs::rename(staged.path() / "model.safetensors", staged.path() / io::kAdapterWeightsFile, ec);
  if (ec) fail("{}: cannot rename the adapter file: {}", staged.path().string(), ec.message());

  const std::string base_name = options.base_name.empty() ? base.string() : options.base_name;
  const int64_t r = std::max<int64_t>(stats.max_rank, 1);
  core::write_text_file(staged.path() / io::kAdapterConfigFile,
                        adapter_config(base_name, items, r).dump(4) + "\n");
  core::write_text_file(staged.path() / "README.md", adapter_card(model, base_name, stats));
  core::fsync_path(staged.path());
  staged.commit();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace amalgam::merge
