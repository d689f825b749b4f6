#include "gguf/import.h"

#include <fmt/format.h>

#include <cstring>
#include <set>

#include "arch/roles.h"
#include "core/error.h"
#include "gguf/convert.h"
#include "gguf/quant.h"

namespace amalgam::gguf {

namespace fs = std::filesystem;
using arch::Role;
using Json = nlohmann::ordered_json;

namespace {

int64_t int_key(const GgufFile& f, const std::string& key, int64_t fallback = -1) {
  const Value* v = f.find(key);
  if (v == nullptr) {
    if (fallback >= 0) return fallback;
    fail("{}: missing GGUF key '{}'", f.path().string(), key);
  }
  return v->as_int(key);
}

const arch::ArchSpec& spec_of(const GgufFile& f) {
  const std::string a = f.require("general.architecture").as_string("general.architecture");
  const bool moe = int_key(f, a + ".expert_count", 0) > 0;
  const arch::ArchSpec* spec = arch::find_arch_spec_gguf(a, moe);
  if (spec == nullptr) {
    fail("{}: GGUF architecture '{}'{} is not run by amalgam (llama, qwen2)", f.path().string(), a,
         moe ? " with experts" : "");
  }
  return *spec;
}

}  // namespace

Json config_from_gguf(const GgufFile& f) {
  const arch::ArchSpec& spec = spec_of(f);
  const std::string p = std::string(spec.gguf_arch) + ".";
  Json j;
  j["architectures"] = {std::string(spec.architecture)};
  j["model_type"] = std::string(spec.model_type);
  const int64_t D = int_key(f, p + "embedding_length");
  const int64_t H = int_key(f, p + "attention.head_count");
  j["hidden_size"] = D;
  j["num_hidden_layers"] = int_key(f, p + "block_count");
  j["num_attention_heads"] = H;
  j["num_key_value_heads"] = int_key(f, p + "attention.head_count_kv", H);
  j["head_dim"] = int_key(f, p + "attention.key_length", H > 0 ? D / H : 0);
  j["intermediate_size"] = int_key(f, p + "feed_forward_length");
  const TensorInfo* embd = f.tensor("token_embd.weight");
  if (embd == nullptr) fail("{}: no tensor 'token_embd.weight'", f.path().string());
  j["vocab_size"] = int_key(f, p + "vocab_size", embd->shape[0]);
  j["max_position_embeddings"] = int_key(f, p + "context_length", 2048);
  const Value* eps = f.find(p + "attention.layer_norm_rms_epsilon");
  j["rms_norm_eps"] = eps ? eps->as_float(p + "attention.layer_norm_rms_epsilon") : 1e-5;
  const Value* theta = f.find(p + "rope.freq_base");
  j["rope_theta"] = theta ? theta->as_float(p + "rope.freq_base") : 10000.0;
  if (const Value* t = f.find(p + "rope.scaling.type")) {
    const std::string type = t->as_string(p + "rope.scaling.type");
    if (type != "none") {
      AMALGAM_CHECK(type == "linear" || type == "yarn", "{}: rope scaling '{}' is not run",
                    f.path().string(), type);
      Json s{{"rope_type", type},
             {"factor", f.require(p + "rope.scaling.factor").as_float(p + "rope.scaling.factor")}};
      if (const Value* o = f.find(p + "rope.scaling.original_context_length")) {
        s["original_max_position_embeddings"] =
            o->as_int(p + "rope.scaling.original_context_length");
      }
      j["rope_scaling"] = s;
    }
  }
  if (f.tensor("rope_freqs.weight") != nullptr) {
    fail("{}: rope_freqs.weight (Llama 3.1 rope scaling) is not run by amalgam from GGUF",
         f.path().string());
  }
  j["tie_word_embeddings"] = f.tensor("output.weight") == nullptr;
  if (spec.moe) {
    j["num_local_experts"] = int_key(f, p + "expert_count");
    j["num_experts_per_tok"] = int_key(f, p + "expert_used_count");
  }
  if (const Value* b = f.find("tokenizer.ggml.bos_token_id")) {
    j["bos_token_id"] = b->as_int("tokenizer.ggml.bos_token_id");
  }
  if (const Value* e = f.find("tokenizer.ggml.eos_token_id")) {
    j["eos_token_id"] = e->as_int("tokenizer.ggml.eos_token_id");
  }
  j["torch_dtype"] = "float32";
  return j;
}

std::optional<std::string> tokenizer_json_from_gguf(const GgufFile& f) {
  const Value* model = f.find("tokenizer.ggml.model");
  const Value* pre = f.find("tokenizer.ggml.pre");
  if (model == nullptr || model->type != ValueType::kString || model->s != "gpt2" ||
      pre == nullptr || pre->type != ValueType::kString) {
    return std::nullopt;
  }
  const Value& tokens = f.require("tokenizer.ggml.tokens");
  const Value* types = f.find("tokenizer.ggml.token_type");
  const Value* merges = f.find("tokenizer.ggml.merges");
  AMALGAM_CHECK(tokens.type == ValueType::kArray && tokens.elem == ValueType::kString,
                "{}: tokenizer.ggml.tokens must be an array of strings", f.path().string());
  const Json byte_level{{"type", "ByteLevel"},
                        {"add_prefix_space", false},
                        {"trim_offsets", true},
                        {"use_regex", true}};
  Json pre_tok;
  const std::string& name = pre->s;
  if (name == "gpt-2") {
    pre_tok = byte_level;
  } else if (name == "refact" || name == "starcoder") {
    pre_tok = {{"type", "Sequence"},
               {"pretokenizers",
                Json::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level})}};
  } else if (name == "llama-bpe" || name == "qwen2") {
    const std::string digits = name == "qwen2" ? "\\p{N}" : "\\p{N}{1,3}";
    const std::string re = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" + digits +
                           "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    Json no_regex = byte_level;
    no_regex["use_regex"] = false;
    pre_tok = {{"type", "Sequence"},
               {"pretokenizers", Json::array({{{"type", "Split"},
                                               {"pattern", {{"Regex", re}}},
                                               {"behavior", "Isolated"},
                                               {"invert", false}},
                                              no_regex})}};
  } else {
    return std::nullopt;
  }
  Json vocab = Json::object();
  Json added = Json::array();
  for (size_t i = 0; i < tokens.strings.size(); ++i) {
    const double type = types && i < types->numbers.size() ? types->numbers[i] : 1;
    if (type == 3 || type == 4) {
      added.push_back({{"id", i},
                       {"content", tokens.strings[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", type == 4},
                       {"special", type == 3}});
    }
    if (type != 5) vocab[tokens.strings[i]] = i;
  }
  Json merge_list = Json::array();
  if (merges) {
    for (const auto& m : merges->strings) merge_list.push_back(m);
  }
  Json tok{{"version", "1.0"},
           {"added_tokens", added},
           {"normalizer", nullptr},
           {"pre_tokenizer", pre_tok},
           {"decoder", byte_level},
           {"model",
            {{"type", "BPE"},
             {"dropout", nullptr},
             {"unk_token", nullptr},
             {"fuse_unk", false},
             {"byte_fallback", false},
             {"ignore_merges", name == "llama-bpe"},
             {"vocab", vocab},
             {"merges", merge_list}}}};
  const Value* add_bos = f.find("tokenizer.ggml.add_bos_token");
  const Value* bos = f.find("tokenizer.ggml.bos_token_id");
  if (add_bos && add_bos->u && bos) {
    const int64_t id = bos->as_int("tokenizer.ggml.bos_token_id");
    AMALGAM_CHECK(id >= 0 && static_cast<size_t>(id) < tokens.strings.size(),
                  "{}: bos token id {} outside the vocabulary", f.path().string(), id);
    const std::string& b = tokens.strings[static_cast<size_t>(id)];
    tok["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", Json::array({{{"SpecialToken", {{"id", b}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", Json::array({{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{b, {{"id", b}, {"ids", {id}}, {"tokens", {b}}}}}}};
  } else {
    tok["post_processor"] = nullptr;
  }
  return tok.dump();
}

// What the views of an ImportedModel point into.
struct ImportStorage {
  std::shared_ptr<const GgufFile> file;
  std::vector<std::vector<float>> floats;
  std::vector<std::vector<uint8_t>> bytes;  // q/k rows put back in order, in the stored type
};

ImportedModel import_gguf(const fs::path& path, bool keep_stored_types) {
  auto storage = std::make_shared<ImportStorage>();
  storage->file = std::make_shared<const GgufFile>(path);
  const GgufFile& f = *storage->file;
  const arch::ArchSpec& spec = spec_of(f);
  ImportedModel out;
  out.config = io::parse_model_config(config_from_gguf(f), path.string());
  out.storage = storage;
  const io::ModelConfig& c = out.config;
  auto add = [&](const std::string& hf, tensor::Shape shape, std::vector<float> data) {
    storage->floats.push_back(std::move(data));
    out.views.emplace(
        hf, tensor::TensorView{tensor::DType::kF32, std::move(shape),
                               reinterpret_cast<const uint8_t*>(storage->floats.back().data())});
  };
  // Dequantises rows [row0, row0 + rows) of a GGUF tensor, undoing the q/k permutation.
  auto rows_of = [&](const TensorInfo& t, int64_t row0, int64_t rows, int64_t heads) {
    const int64_t cols = t.row_length();
    const uint64_t rb = row_bytes(t.type, cols);
    std::vector<float> data(static_cast<size_t>(rows * cols));
    const int64_t rph = heads > 0 ? rows / heads : 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t src = rph > 1 ? permuted_dest_row(r, rph) : r;
      dequantize_row(t.type, t.data + static_cast<uint64_t>(row0 + src) * rb, cols,
                     data.data() + r * cols);
    }
    return data;
  };
  // The same rows in the stored type: a view into the mapping, or a copy put back in order.
  auto stored_rows = [&](const TensorInfo& t, int64_t row0, int64_t rows,
                         int64_t heads) -> const uint8_t* {
    const uint64_t rb = row_bytes(t.type, t.row_length());
    const int64_t rph = heads > 0 ? rows / heads : 0;
    if (rph <= 1) return t.data + static_cast<uint64_t>(row0) * rb;
    std::vector<uint8_t> bytes(static_cast<size_t>(rows) * rb);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t src = permuted_dest_row(r, rph);
      std::memcpy(bytes.data() + r * rb, t.data + static_cast<uint64_t>(row0 + src) * rb, rb);
    }
    storage->bytes.push_back(std::move(bytes));
    return storage->bytes.back().data();
  };
  // A matrix of `rows` rows from row0 of t, under its HF name.
  auto add_matrix = [&](const std::string& hf, const TensorInfo& t, int64_t row0, int64_t rows,
                        int64_t heads) {
    const int64_t cols = t.row_length();
    if (!keep_stored_types) {
      add(hf, {rows, cols}, rows_of(t, row0, rows, heads));
      return;
    }
    const uint8_t* data = stored_rows(t, row0, rows, heads);
    switch (t.type) {
      case GgmlType::kF32:
        out.views.emplace(hf, tensor::TensorView{tensor::DType::kF32, {rows, cols}, data});
        break;
      case GgmlType::kF16:
        out.views.emplace(hf, tensor::TensorView{tensor::DType::kF16, {rows, cols}, data});
        break;
      case GgmlType::kBF16:
        out.views.emplace(hf, tensor::TensorView{tensor::DType::kBF16, {rows, cols}, data});
        break;
      default:
        out.quantized.emplace(hf, QuantizedMatrix{t.type, rows, cols, data});
    }
  };
  std::set<std::string> used;
  auto tensor = [&](const std::string& name) -> const TensorInfo* {
    const TensorInfo* t = f.tensor(name);
    if (t) used.insert(name);
    return t;
  };
  for (const arch::TensorRole& role : arch::tensor_roles()) {
    if (role.gguf.empty() || role.role == Role::kFusedRouter ||
        role.role == Role::kFusedExpertsDown) {
      continue;  // experts come back in the per-expert layout
    }
    const int64_t layers = role.per_layer ? c.num_layers : 1;
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t layer = role.per_layer ? l : -1;
      const TensorInfo* t = tensor(arch::gguf_name(role.role, layer));
      if (t == nullptr) continue;
      const bool expert = role.role == Role::kExpertGate || role.role == Role::kExpertUp ||
                          role.role == Role::kExpertDown;
      if (expert) {
        AMALGAM_CHECK(t->shape.size() == 3, "{}: tensor '{}' is not 3-D", path.string(), t->name);
        for (int64_t e = 0; e < t->shape[0]; ++e) {
          add_matrix(arch::hf_name(role.role, layer, e), *t, e * t->shape[1], t->shape[1], 0);
        }
        continue;
      }
      int64_t heads = 0;
      if (spec.permute_qk && role.permute != arch::RowPermute::kNone) {
        heads = role.permute == arch::RowPermute::kQueryHeads ? c.num_heads : c.num_kv_heads;
      }
      if (t->shape.size() == 1) {
        // A vector: one row; a permuted bias moves its elements.
        std::vector<float> v(static_cast<size_t>(t->shape[0]));
        dequantize_row(t->type, t->data, t->shape[0], v.data());
        std::vector<float> w(v);
        const int64_t per_head = heads > 0 ? t->shape[0] / heads : 0;
        for (int64_t i = 0; per_head > 1 && i < t->shape[0]; ++i) {
          w[i] = v[permuted_dest_row(i, per_head)];
        }
        add(arch::hf_name(role.role, layer), t->shape, std::move(w));
      } else {
        AMALGAM_CHECK(t->shape.size() == 2, "{}: tensor '{}' is not 2-D", path.string(), t->name);
        add_matrix(arch::hf_name(role.role, layer), *t, 0, t->shape[0], heads);
      }
    }
  }
  for (const auto& t : f.tensors()) {
    if (!used.count(t.name) && t.name != "rope_freqs.weight") {
      fail("{}: tensor '{}' has no role in architecture {}", path.string(), t.name,
           spec.architecture);
    }
  }
  out.tokenizer_json = tokenizer_json_from_gguf(f);
  return out;
}

}  // namespace amalgam::gguf
