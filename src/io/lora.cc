#include "io/lora.h"

#include <algorithm>
#include <cmath>
#include <regex>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "tensor/convert.h"

namespace amalgam::io {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

const ordered_json* get(const ordered_json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const ordered_json& j, const char* key, const std::string& where) {
  const ordered_json* v = get(j, key);
  if (!v) return false;
  if (!v->is_boolean()) fail("{}: '{}' must be true or false", where, key);
  return v->get<bool>();
}

bool is_empty_value(const ordered_json& v) {
  return v.is_null() || ((v.is_array() || v.is_object() || v.is_string()) && v.empty());
}

std::vector<std::string> string_list(const ordered_json& v, const char* key,
                                     const std::string& where) {
  if (!v.is_array()) fail("{}: '{}' must be a list of module names", where, key);
  std::vector<std::string> out;
  for (const auto& item : v) {
    if (!item.is_string()) fail("{}: '{}' must be a list of module names", where, key);
    out.push_back(item.get<std::string>());
  }
  return out;
}

// PEFT matches rank_pattern / alpha_pattern keys as re.match(rf"(.*\.)?({key})$", module); the
// first key that matches, in file order, wins.
template <typename T>
class PatternTable {
 public:
  explicit PatternTable(const std::vector<std::pair<std::string, T>>& patterns) {
    for (const auto& [key, value] : patterns) {
      compiled_.emplace_back(std::regex("(.*\\.)?(" + key + ")"), value);
    }
  }
  std::optional<T> lookup(const std::string& module) const {
    for (const auto& [re, value] : compiled_) {
      if (std::regex_match(module, re)) return value;
    }
    return std::nullopt;
  }

 private:
  std::vector<std::pair<std::regex, T>> compiled_;
};

bool is_targeted(const LoraConfig& c, const std::string& module) {
  if (c.target_regex) return std::regex_match(module, std::regex(*c.target_regex));
  if (c.target_modules.empty()) return true;  // not recorded: the tensors say what is adapted
  for (const auto& t : c.target_modules) {
    if (t == "all-linear") {
      if (module != "lm_head" && !module.ends_with(".lm_head")) return true;
    } else if (module == t || module.ends_with("." + t)) {
      return true;
    }
  }
  return false;
}

// "a.modules_to_save.weight" -> "a.weight"; "a.base_layer.weight" -> "a.weight": the names a
// full tensor saved by PEFT carries for the base tensor it replaces.
std::string replaced_name(std::string name) {
  for (const std::string segment : {".modules_to_save", ".base_layer"}) {
    for (size_t at = name.find(segment + "."); at != std::string::npos;
         at = name.find(segment + ".")) {
      name.erase(at, segment.size());
    }
  }
  return name;
}

std::vector<float> decode_tensor(const SafetensorsFile& file, const TensorInfo& info) {
  const tensor::TensorView v = file.view(info);
  std::vector<float> out(static_cast<size_t>(v.numel()));
  const size_t bad = tensor::decode_checked(v.dtype, v.data, out.data(), out.size());
  if (bad != out.size()) {
    fail("{}: tensor '{}' holds {} at element {}; the adapter is broken", file.path(), info.name,
         std::isnan(out[bad]) ? "NaN" : "Inf", bad);
  }
  return out;
}

bool exists_at(const std::string& p, const fs::path& base_dir) {
  if (p.empty()) return false;
  fs::path x(p);
  if (x.is_relative()) x = base_dir / x;
  std::error_code ec;
  return fs::exists(x, ec);
}

}  // namespace

LoraConfig parse_lora_config(const ordered_json& j, const std::string& where) {
  if (!j.is_object()) fail("{}: not a JSON object", where);
  LoraConfig c;
  if (const auto* v = get(j, "peft_type")) {
    if (!v->is_string() || v->get<std::string>() != "LORA") {
      fail("{}: peft_type is {}; amalgam applies LoRA adapters only (peft_type LORA)", where,
           v->dump());
    }
  }
  if (const auto* v = get(j, "r")) {
    if (!v->is_number_integer() || v->get<int64_t>() <= 0) {
      fail("{}: 'r' must be a positive integer, not {}", where, v->dump());
    }
    c.r = v->get<int64_t>();
  }
  if (const auto* v = get(j, "lora_alpha")) {
    if (!v->is_number() || !std::isfinite(v->get<double>())) {
      fail("{}: 'lora_alpha' must be a number, not {}", where, v->dump());
    }
    c.lora_alpha = v->get<double>();
  }
  c.use_rslora = get_bool(j, "use_rslora", where);
  c.fan_in_fan_out = get_bool(j, "fan_in_fan_out", where);
  if (get_bool(j, "use_dora", where)) {
    fail(
        "{}: use_dora is true: DoRA adapters rescale each weight column by a learned magnitude "
        "and are not supported; merge it with PEFT (merge_and_unload) and give that directory",
        where);
  }
  if (get_bool(j, "use_qalora", where)) {
    fail(
        "{}: use_qalora is true: QALoRA adapters act on pooled inputs and cannot be applied as "
        "a weight update",
        where);
  }
  // Options whose effect is not a change of existing weights.
  const std::pair<const char*, const char*> refused[] = {
      {"layer_replication", "it duplicates layers"},
      {"trainable_token_indices", "trainable-token deltas are not read"},
      {"target_parameters", "LoRA on raw parameters (MoE experts) is not supported"},
      {"alora_invocation_tokens", "an activated LoRA only acts after its invocation tokens"},
  };
  for (const auto& [key, why] : refused) {
    if (const auto* v = get(j, key); v && !is_empty_value(*v)) {
      fail("{}: '{}' is set ({}); such adapters are not supported", where, key, why);
    }
  }
  if (const auto* v = get(j, "target_modules")) {
    if (v->is_string()) {
      const std::string s = v->get<std::string>();
      if (s == "all-linear") {
        c.target_modules = {s};
      } else {
        try {
          std::regex check(s);
        } catch (const std::regex_error& e) {
          fail("{}: target_modules '{}' is not a valid regular expression: {}", where, s, e.what());
        }
        c.target_regex = s;
      }
    } else {
      c.target_modules = string_list(*v, "target_modules", where);
    }
  }
  if (const auto* v = get(j, "modules_to_save")) {
    c.modules_to_save = string_list(*v, "modules_to_save", where);
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    const auto* v = get(j, key);
    if (!v) continue;
    if (!v->is_object()) fail("{}: '{}' must be an object (module pattern -> number)", where, key);
    for (const auto& [pattern, value] : v->items()) {
      try {
        std::regex check("(.*\\.)?(" + pattern + ")");
      } catch (const std::regex_error& e) {
        fail("{}: {} key '{}' is not a valid regular expression: {}", where, key, pattern,
             e.what());
      }
      if (std::string(key) == "rank_pattern") {
        if (!value.is_number_integer() || value.get<int64_t>() <= 0) {
          fail("{}: rank_pattern['{}'] must be a positive integer, not {}", where, pattern,
               value.dump());
        }
        c.rank_pattern.emplace_back(pattern, value.get<int64_t>());
      } else {
        if (!value.is_number()) {
          fail("{}: alpha_pattern['{}'] must be a number, not {}", where, pattern, value.dump());
        }
        c.alpha_pattern.emplace_back(pattern, value.get<double>());
      }
    }
  }
  if (const auto* v = get(j, "base_model_name_or_path"); v && v->is_string()) {
    c.base_model_name_or_path = v->get<std::string>();
  }
  return c;
}

LoraAdapter::LoraAdapter(const fs::path& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    fail("{}: no such LoRA adapter directory (a PEFT adapter directory holds {} and {})",
         dir.string(), kAdapterConfigFile, kAdapterWeightsFile);
  }
  const fs::path config_path = dir / kAdapterConfigFile;
  if (!fs::exists(config_path)) {
    fail("{}: no {}; is it a PEFT LoRA adapter directory?", dir.string(), kAdapterConfigFile);
  }
  const std::string text = core::read_text_file(config_path);
  core::parse_json_strict(text, config_path.string());  // malformed text, duplicate keys
  config_ = parse_lora_config(ordered_json::parse(text), config_path.string());

  const fs::path weights = dir / kAdapterWeightsFile;
  if (!fs::exists(weights)) {
    fail("{}: no {}{}", dir.string(), kAdapterWeightsFile,
         fs::exists(dir / "adapter_model.bin")
             ? " (adapter_model.bin is a pickle and is not read: convert it to safetensors)"
             : "");
  }
  file_ = std::make_unique<SafetensorsFile>(weights.string());
  const std::string& where = file_->path();

  // Low-rank pieces per module, gathered before they are paired.
  struct Pieces {
    const TensorInfo* a = nullptr;
    const TensorInfo* b = nullptr;
    const TensorInfo* bias = nullptr;
    bool embedding = false;
  };
  std::map<std::string, Pieces> modules;
  auto entry = [&](const std::string& base_name) -> LoraTensor& {
    auto [it, added] = by_name_.emplace(base_name, tensors_.size());
    if (added) {
      tensors_.emplace_back();
      tensors_.back().name = base_name;
    }
    return tensors_[it->second];
  };
  auto set_piece = [&](const TensorInfo*& slot, const TensorInfo& info) {
    if (slot) {
      fail("{}: tensors '{}' and '{}' are the same LoRA matrix", where, slot->name, info.name);
    }
    slot = &info;
  };

  for (const TensorInfo& info : file_->tensors()) {
    const std::string& name = info.name;
    if (!name.starts_with(kPeftPrefix)) {
      fail("{}: tensor '{}' is not a PEFT adapter tensor (names start with '{}')", where, name,
           kPeftPrefix);
    }
    if (!tensor::is_float_dtype(info.dtype)) {
      fail("{}: tensor '{}' has dtype {}; adapter tensors must be floats", where, name,
           tensor::dtype_name(info.dtype));
    }
    const std::string rest = name.substr(std::string(kPeftPrefix).size());
    auto module_of = [&](const char* suffix) -> std::optional<std::string> {
      if (!rest.ends_with(suffix)) return std::nullopt;
      return rest.substr(0, rest.size() - std::string(suffix).size());
    };
    if (rest.find("lora_magnitude_vector") != std::string::npos) {
      fail("{}: tensor '{}' is a DoRA magnitude vector; DoRA adapters are not supported", where,
           name);
    }
    if (auto m = module_of(".lora_A.weight")) {
      set_piece(modules[*m].a, info);
    } else if (auto m = module_of(".lora_B.weight")) {
      set_piece(modules[*m].b, info);
    } else if (auto m = module_of(".lora_embedding_A")) {
      set_piece(modules[*m].a, info);
      modules[*m].embedding = true;
    } else if (auto m = module_of(".lora_embedding_B")) {
      set_piece(modules[*m].b, info);
      modules[*m].embedding = true;
    } else if (auto m = module_of(".lora_B.bias")) {
      set_piece(modules[*m].bias, info);
    } else if (rest.find("lora_") != std::string::npos) {
      fail(
          "{}: tensor '{}' is not a LoRA tensor amalgam knows (expected <module>.lora_A.weight, "
          "<module>.lora_B.weight, <module>.lora_embedding_A/B or <module>.lora_B.bias)",
          where, name);
    } else {
      LoraTensor& t = entry(replaced_name(rest));
      if (t.replacement) {
        fail("{}: tensors '{}' and '{}' both replace base tensor '{}'", where, t.replacement->name,
             name, t.name);
      }
      t.replacement = &info;
    }
  }

  const PatternTable<int64_t> ranks(config_.rank_pattern);
  const PatternTable<double> alphas(config_.alpha_pattern);
  for (const auto& [module, p] : modules) {
    if (!p.a || !p.b) {
      if (!p.a && !p.b) {  // only lora_B.bias
        fail("{}: tensor '{}' has no lora_A/lora_B pair for module '{}'", where, p.bias->name,
             module);
      }
      fail("{}: tensor '{}' has no matching {} for module '{}'", where, (p.a ? p.a : p.b)->name,
           p.a ? (p.embedding ? "lora_embedding_B" : "lora_B.weight")
               : (p.embedding ? "lora_embedding_A" : "lora_A.weight"),
           module);
    }
    if ((p.a->name.find("lora_embedding_") != std::string::npos) !=
        (p.b->name.find("lora_embedding_") != std::string::npos)) {
      fail("{}: tensors '{}' and '{}' mix embedding and linear LoRA for module '{}'", where,
           p.a->name, p.b->name, module);
    }
    if (p.a->shape.size() != 2 || p.b->shape.size() != 2) {
      fail("{}: LoRA matrices of module '{}' must be 2-D ('{}' is {}, '{}' is {})", where, module,
           p.a->name, tensor::shape_string(p.a->shape), p.b->name,
           tensor::shape_string(p.b->shape));
    }
    const int64_t rank = p.a->shape[0];
    if (p.b->shape[1] != rank || rank <= 0) {
      fail(
          "{}: '{}' is {} but '{}' is {}: their ranks differ (lora_A is (r, in), lora_B is (out, "
          "r))",
          where, p.a->name, tensor::shape_string(p.a->shape), p.b->name,
          tensor::shape_string(p.b->shape));
    }
    const int64_t r = ranks.lookup(module).value_or(config_.r);
    if (r != rank) {
      fail("{}: tensor '{}' has rank {} but {} gives r = {} for module '{}'", where, p.a->name,
           rank, kAdapterConfigFile, r, module);
    }
    if (!is_targeted(config_, module)) {
      fail("{}: tensor '{}' adapts module '{}', which target_modules in {} does not include", where,
           p.a->name, module, kAdapterConfigFile);
    }
    const double alpha = alphas.lookup(module).value_or(config_.lora_alpha);
    const double scale = config_.use_rslora ? alpha / std::sqrt(static_cast<double>(r))
                                            : alpha / static_cast<double>(r);
    LoraTensor& w = entry(module + ".weight");
    w.module = module;
    w.a = p.a;
    w.b = p.b;
    w.transposed = p.embedding || config_.fan_in_fan_out;
    w.rank = rank;
    w.scale = scale;
    if (p.bias) {
      if (p.embedding) {
        fail("{}: tensor '{}': embeddings have no bias", where, p.bias->name);
      }
      LoraTensor& b = entry(module + ".bias");
      b.module = module;
      b.b = p.bias;
      b.rank = 1;
      b.scale = scale;
    }
  }
  if (tensors_.empty()) fail("{}: the adapter holds no tensors", where);
}

const LoraTensor* LoraAdapter::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void LoraAdapter::check_base(const Checkpoint& base) const {
  const std::string& where = file_->path();
  for (const LoraTensor& t : tensors_) {
    const TensorInfo& cited = *(t.a ? t.a : t.b ? t.b : t.replacement);
    if (!base.has(t.name)) {
      fail("{}: tensor '{}' changes '{}', which the base model {} does not have", where, cited.name,
           t.name, base.path().string());
    }
    const TensorInfo& info = base.info(t.name);
    if (!tensor::is_float_dtype(info.dtype)) {
      fail("{}: tensor '{}' changes '{}', which is {} in the base model (not a float tensor)",
           where, cited.name, t.name, tensor::dtype_name(info.dtype));
    }
    if (t.replacement && t.replacement->shape != info.shape) {
      const bool vocab = info.shape.size() == 2 && t.replacement->shape.size() == 2 &&
                         info.shape[1] == t.replacement->shape[1];
      fail("{}: tensor '{}' replaces '{}' with shape {} but the base model's is {}{}", where,
           t.replacement->name, t.name, tensor::shape_string(t.replacement->shape),
           tensor::shape_string(info.shape),
           vocab ? " (adapters that resize the vocabulary are not supported)" : "");
    }
    if (!t.has_update()) continue;
    tensor::Shape expected;
    if (!t.a) {
      expected = {t.b->shape.at(0)};
    } else if (t.transposed) {
      expected = {t.a->shape[1], t.b->shape[0]};
    } else {
      expected = {t.b->shape[0], t.a->shape[1]};
    }
    if (info.shape != expected) {
      fail("{}: tensor '{}' makes a {} update of '{}' but the base model's is {}{}", where,
           cited.name, tensor::shape_string(expected), t.name, tensor::shape_string(info.shape),
           t.a && !t.transposed && info.shape.size() == 2 &&
                   info.shape == tensor::Shape{expected[1], expected[0]}
               ? " (a transposed layout: is fan_in_fan_out set right?)"
               : "");
    }
  }
}

LoraDelta::LoraDelta(const LoraAdapter& adapter, const LoraTensor& t) {
  const SafetensorsFile& file = adapter.file();
  const float scale = static_cast<float>(t.scale);
  std::vector<float> b = decode_tensor(file, *t.b);
  if (!t.a) {  // lora_B.bias: one row, rank 1
    rows_ = 1, rank_ = 1, cols_ = b.size();
    left_ = {scale};
    right_ = std::move(b);
    return;
  }
  std::vector<float> a = decode_tensor(file, *t.a);
  rank_ = static_cast<size_t>(t.rank);
  const size_t a_cols = static_cast<size_t>(t.a->shape[1]);
  const size_t b_rows = static_cast<size_t>(t.b->shape[0]);
  if (!t.transposed) {
    // W (out, in) += scale * B (out, r) A (r, in)
    rows_ = b_rows, cols_ = a_cols;
    left_ = std::move(b);
    for (float& v : left_) v *= scale;
    right_ = std::move(a);
  } else {
    // W (in, out) += scale * (B A)^T = scale * A^T (in, r) B^T (r, out)
    rows_ = a_cols, cols_ = b_rows;
    left_.resize(rows_ * rank_);
    right_.resize(rank_ * cols_);
    for (size_t k = 0; k < rank_; ++k) {
      for (size_t i = 0; i < rows_; ++i) left_[i * rank_ + k] = scale * a[k * a_cols + i];
      for (size_t j = 0; j < cols_; ++j) right_[k * cols_ + j] = b[j * rank_ + k];
    }
  }
}

void LoraDelta::add(size_t row, size_t col, size_t n, float* dst) const {
  AMALGAM_CHECK(row < rows_ && col + n <= cols_, "internal: LoRA update read out of range");
  // The update is summed on its own, then added once: W + (sum) rounds less than adding each
  // rank-one term to W in turn.
  sum_.assign(n, 0.0f);
  float* sum = sum_.data();
  const float* left = left_.data() + row * rank_;
  for (size_t k = 0; k < rank_; ++k) {
    const float l = left[k];
    if (l == 0.0f) continue;
    const float* right = right_.data() + k * cols_ + col;
    for (size_t j = 0; j < n; ++j) sum[j] += l * right[j];
  }
  for (size_t j = 0; j < n; ++j) dst[j] += sum[j];
}

std::optional<std::pair<std::string, std::string>> split_lora_reference(const std::string& ref,
                                                                        const fs::path& base_dir) {
  if (exists_at(ref, base_dir)) return std::nullopt;
  std::vector<std::pair<std::string, std::string>> fits;
  for (size_t at = ref.find('+'); at != std::string::npos; at = ref.find('+', at + 1)) {
    std::string model = ref.substr(0, at), lora = ref.substr(at + 1);
    if (exists_at(model, base_dir) && exists_at(lora, base_dir)) fits.emplace_back(model, lora);
  }
  if (fits.size() > 1) {
    std::string readings;
    for (const auto& [m, l] : fits)
      readings += fmt::format("{}'{}' + '{}'", readings.empty() ? "" : " or ", m, l);
    fail(
        "model '{}' is ambiguous: it reads as {}; rename a directory so that one '+' separates "
        "the base model from its LoRA adapter",
        ref, readings);
  }
  if (fits.empty()) return std::nullopt;
  return fits[0];
}

std::string explain_lora_reference(const std::string& ref, const fs::path& base_dir) {
  const size_t at = ref.find('+');
  if (at == std::string::npos) return "";
  if (ref.find('+', at + 1) == std::string::npos) {
    const std::string model = ref.substr(0, at), lora = ref.substr(at + 1);
    if (!exists_at(model, base_dir)) {
      return fmt::format("the base model '{}' of BASE+LORA does not exist", model);
    }
    return fmt::format("the LoRA adapter directory '{}' of BASE+LORA does not exist", lora);
  }
  return "no '+' in it separates an existing base model from an existing LoRA adapter directory";
}

}  // namespace amalgam::io
