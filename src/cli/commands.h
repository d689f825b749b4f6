// Each subcommand lives in its own file and registers itself on the root CLI11 app. The callback
// runs the command; errors are thrown as amalgam::Error and reported by main.
#pragma once

#include <CLI/CLI.hpp>

namespace amalgam::cli {

void register_inspect(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_average(CLI::App& app);
void register_eval(CLI::App& app);
void register_soup(CLI::App& app);
void register_evolve(CLI::App& app);
void register_methods(CLI::App& app);
void register_generate(CLI::App& app);
void register_logits(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_merge(CLI::App& app);
void register_extract_lora(CLI::App& app);
void register_align(CLI::App& app);
void register_pleas(CLI::App& app);
void register_export_gguf(CLI::App& app);
void register_moe(CLI::App& app);
void register_score(CLI::App& app);
void register_embed(CLI::App& app);  // src/cli/probe.cc
void register_probe(CLI::App& app);  // src/cli/probe.cc

}  // namespace amalgam::cli
