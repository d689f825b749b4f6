#include "cli/options.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "gguf/format.h"
#include "io/safetensors_writer.h"
#include "merge/finalize.h"

namespace amalgam::cli {

void add_output_options(CLI::App& cmd, OutputArgs& args) {
  cmd.add_option("--out-shard-size", args.shard_size,
                 "Roll over to a new shard at this many bytes (K/M/B decimal, default 5B)");
  cmd.add_option("-j,--threads", args.threads, "Worker threads (default: every core)");
  cmd.add_flag("--force", args.force, "Replace an existing non-empty output directory");
  cmd.add_flag("-q,--quiet", args.quiet, "No progress bar or summary");
  cmd.add_flag("!--no-model-card", args.model_card,
               "Skip README.md (and hashing the inputs for its provenance table)");
}

tensor::DType parse_out_dtype(const std::string& name) {
  auto t = tensor::parse_torch_dtype(name);
  if (!t || !tensor::is_float_dtype(*t)) {
    fail("'{}' is not an output dtype (use bfloat16, float16 or float32)", name);
  }
  return *t;
}

void add_gguf_options(CLI::App& cmd, OutputArgs& args) {
  cmd.add_option("--gguf", args.gguf, "Also write the result as this GGUF file (llama.cpp)");
  cmd.add_option(
      "--type", args.gguf_type,
      fmt::format("GGUF tensor type: {} (default f16)", fmt::join(gguf::export_type_names(), "|")));
  cmd.add_flag("--gguf-only", args.gguf_only, "Write only the GGUF file, no safetensors output");
  cmd.add_option("--gguf-pre", args.gguf_pre,
                 "llama.cpp pre-tokenizer name when none matches the tokenizer's rules");
}

void run_write(const merge::Plan& plan, merge::InputSet& inputs, const std::string& out,
               const OutputArgs& args, uint64_t seed) {
  if (args.quiet) core::set_verbosity(core::Verbosity::kQuiet);
  merge::OutputOptions options;
  options.max_shard_bytes = io::parse_size(args.shard_size);
  options.force = args.force;
  options.model_card = args.model_card;
  options.execute.threads = args.threads;
  options.execute.seed = seed;
  options.execute.progress = core::verbosity() >= core::Verbosity::kNormal;
  if (!args.gguf.empty()) {
    merge::GgufOutput g;
    g.path = args.gguf;
    const auto type = gguf::parse_export_type(args.gguf_type);
    if (!type) {
      fail("--type '{}' is not one of: {}", args.gguf_type,
           fmt::join(gguf::export_type_names(), ", "));
    }
    g.options.type = *type;
    g.options.force = args.force;
    if (!args.gguf_pre.empty()) g.options.pre = args.gguf_pre;
    g.only = args.gguf_only;
    g.options.name = std::filesystem::path(args.gguf).stem().string();
    options.gguf = g;
  } else if (args.gguf_only) {
    fail("--gguf-only needs --gguf OUT.gguf");
  }
  merge::OutputSummary s = merge::write_model(plan, inputs, out, options);
  if (options.gguf) {
    core::info("wrote {} ({}){}", args.gguf, args.gguf_type,
               args.gguf_only ? ", no safetensors checkpoint" : "");
    if (args.gguf_only) return;
  }
  const double secs = s.stats.seconds;
  core::info(
      "wrote {}: {} tensors, {} in {} shard(s), read {}, {:.2f} s ({}/s)", out, s.stats.tensors,
      core::human_bytes(static_cast<double>(s.weight_bytes)), s.shards,
      core::human_bytes(static_cast<double>(s.stats.bytes_read)), secs,
      core::human_bytes(
          secs > 0 ? static_cast<double>(s.stats.bytes_read + s.stats.bytes_written) / secs : 0.0));
}

}  // namespace amalgam::cli
