// The tokenizer of a Hugging Face model directory as GGUF metadata, the way llama.cpp's converter
// writes it: tokenizer.json byte-level BPE becomes the "gpt2" model (tokens, token types, merges,
// and the pre-tokenizer name llama.cpp dispatches its splitting rules on); BPE with byte fallback
// (Llama 2, Mistral) becomes the SentencePiece-style "llama" model (tokens, scores, types). Special
// ids, add_bos/add_eos and the chat template come from tokenizer_config.json and config.json.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "gguf/metadata.h"
#include "io/hf_config.h"

namespace amalgam::gguf {

// The llama.cpp pre-tokenizer name whose splitting rules equal those of a tokenizer.json
// pre_tokenizer (and normalizer), or nullopt when none does.
std::optional<std::string> pre_tokenizer_name(const nlohmann::json& tokenizer_json);

// `pre` overrides the detected pre-tokenizer name (--gguf-pre); without it an unknown rule is an
// error naming the rule (a wrong name would tokenise differently without any message).
Metadata tokenizer_metadata(const std::filesystem::path& model_dir, const io::ModelConfig& config,
                            const std::optional<std::string>& pre);

}  // namespace amalgam::gguf
