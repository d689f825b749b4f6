// amalgam export-gguf MODEL -o OUT.gguf --type T: a checkpoint as one GGUF file for llama.cpp.
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "gguf/export.h"

namespace amalgam::cli {

namespace {

struct ExportArgs {
  std::string model;
  std::string out;
  std::string type = "f16";
  std::string pre;
  std::string name;
  bool force = false;
};

void run_export(const ExportArgs& a) {
  gguf::ExportOptions o;
  const auto type = gguf::parse_export_type(a.type);
  if (!type) {
    fail("--type '{}' is not one of: {}", a.type, fmt::join(gguf::export_type_names(), ", "));
  }
  o.type = *type;
  if (!a.pre.empty()) o.pre = a.pre;
  o.force = a.force;
  o.name = a.name;
  const gguf::ExportStats s = gguf::export_gguf(a.model, a.out, o);
  std::string types;
  for (const auto& [t, n] : s.types) types += fmt::format(" {} x{}", t, n);
  core::info("{}: {} tensors ({}), {} in {:.2f} s", a.out, s.tensors, types.substr(1),
             core::human_bytes(static_cast<double>(s.bytes_written)), s.seconds);
}

}  // namespace

void register_export_gguf(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  auto* cmd = app.add_subcommand("export-gguf",
                                 "Write a checkpoint as a GGUF file for llama.cpp "
                                 "(F32/F16/BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K)");
  cmd->add_option("model", a->model, "Model directory (config.json, safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("-o,--output", a->out, "Output .gguf file")->required();
  cmd->add_option(
      "--type", a->type,
      fmt::format("Tensor type: {} (default f16)", fmt::join(gguf::export_type_names(), "|")));
  cmd->add_option("--gguf-pre", a->pre,
                  "llama.cpp pre-tokenizer name to write when none matches the tokenizer's rules");
  cmd->add_option("--name", a->name, "general.name (default: the model directory's name)");
  cmd->add_flag("-f,--force", a->force, "Replace an existing output file");
  cmd->callback([a] { run_export(*a); });
}

}  // namespace amalgam::cli
