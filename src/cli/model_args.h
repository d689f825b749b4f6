// Shared pieces of the commands that run the inference engine (generate, logits, perplexity,
// embed, score): opening a model with its tokenizer, --threads, token-id lists.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "eval/model_source.h"

namespace amalgam::cli {

// Every command opens models through eval::ModelLoader (one policy for checks, tokenizer, stop
// tokens and GGUF); see eval/model_source.h.
using LoadedModel = eval::LoadedModel;

// Opens a model directory or file, a .gguf file, BASE+LORA or a recipe merged in memory; its
// tokenizer is required when `tokenizer` is true, else loaded when the model has one. in_memory:
// the weights of a model file are copied into memory instead of run from its mapping.
LoadedModel open_model(const std::string& path, bool tokenizer, bool in_memory = false);

// "1,2,3" -> {1, 2, 3}; the error names the bad item.
std::vector<int32_t> parse_id_list(const std::string& text);

// --threads N (default: all hardware threads), applied with apply_threads before running.
void add_threads_option(CLI::App* cmd, int& threads);
void apply_threads(int threads);

// --no-check-finite: load weights without the NaN/Inf scan (for a model known to be clean, or to
// look at a broken one).
void add_check_finite_option(CLI::App* cmd);

}  // namespace amalgam::cli
