// Options shared by the commands that write a model directory (merge, average).
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>

#include "merge/executor.h"
#include "merge/plan.h"
#include "tensor/dtype.h"

namespace amalgam::cli {

struct OutputArgs {
  std::string shard_size = "5B";
  unsigned threads = 0;
  bool force = false;
  bool quiet = false;
  bool model_card = true;
  // merge --gguf OUT.gguf [--type T] [--gguf-only] [--gguf-pre NAME]
  std::string gguf;
  std::string gguf_type = "f16";
  bool gguf_only = false;
  std::string gguf_pre;
};

void add_output_options(CLI::App& cmd, OutputArgs& args);
void add_gguf_options(CLI::App& cmd, OutputArgs& args);
tensor::DType parse_out_dtype(const std::string& name);
// Executes the plan into `out` and prints a one-line summary.
void run_write(const merge::Plan& plan, merge::InputSet& inputs, const std::string& out,
               const OutputArgs& args, uint64_t seed = 0);

}  // namespace amalgam::cli
