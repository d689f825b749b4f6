// A GGUF file (one amalgam or llama.cpp wrote for Llama, Mistral, Qwen2 or Mixtral) read back as
// the engine's inputs: a config.json synthesised from the metadata, and every tensor under its
// Hugging Face name (q/k rows un-permuted, stacked experts split). Vectors become F32. Matrices
// are dequantised to F32, or with `keep_stored_types` stay as the file stores them (F32/F16/BF16
// as views, block-quantised types in `quantized`), mapped, not copied, except the q/k rows that
// are put back in order: the engine then multiplies the blocks without dequantising whole
// matrices. A tokenizer.json is rebuilt from the tokenizer.ggml.* keys for byte-level BPE files.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "io/hf_config.h"
#include "tensor/tensor.h"

namespace amalgam::gguf {

struct ImportedModel {
  io::ModelConfig config;
  std::map<std::string, tensor::TensorView> views;   // HF name -> view into the storage
  std::map<std::string, QuantizedMatrix> quantized;  // with keep_stored_types only
  std::shared_ptr<const void> storage;  // the file's mapping and converted tensors
  std::optional<std::string> tokenizer_json;  // gpt2-model files only
};

ImportedModel import_gguf(const std::filesystem::path& path, bool keep_stored_types = false);

// config.json of the file's model, from its hyperparameter keys.
nlohmann::ordered_json config_from_gguf(const GgufFile& f);
// tokenizer.json text for a "gpt2" tokenizer with a known pre-tokenizer name; nullopt otherwise.
std::optional<std::string> tokenizer_json_from_gguf(const GgufFile& f);

}  // namespace amalgam::gguf
