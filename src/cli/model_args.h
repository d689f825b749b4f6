// Shared pieces of the commands that run the inference engine (generate, logits, perplexity):
// opening a model with its tokenizer, --threads, token-id lists and stop tokens.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "infer/model.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::cli {

struct LoadedModel {
  std::filesystem::path dir;  // directory of config.json and tokenizer files
  std::unique_ptr<infer::Model> model;
  std::optional<tokenizer::Tokenizer> tokenizer;  // absent when the directory has none

  const tokenizer::Tokenizer& require_tokenizer() const;
};

// Opens a checkpoint; loads tokenizer.json from the same directory when `tokenizer` is wanted
// (an error if it is missing) or when it simply exists (`tokenizer` = false).
LoadedModel open_model(const std::string& path, bool tokenizer);

// "1,2,3" -> {1, 2, 3}; the error names the bad item.
std::vector<int32_t> parse_id_list(const std::string& text);

// End-of-sequence ids from config.json, generation_config.json and the tokenizer.
std::vector<int32_t> stop_ids(const LoadedModel& m);

// --threads N (default: all hardware threads), applied with apply_threads before running.
void add_threads_option(CLI::App* cmd, int& threads);
void apply_threads(int threads);

// --no-check-finite: load weights without the NaN/Inf scan (for a model known to be clean, or to
// look at a broken one).
void add_check_finite_option(CLI::App* cmd);

}  // namespace amalgam::cli
