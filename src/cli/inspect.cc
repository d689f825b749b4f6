// amalgam inspect PATH: tensors, dtypes, shapes, parameter count, shards and config summary,
// from headers only (no weight is read).
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "io/config_check.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

namespace amalgam::cli {

namespace fs = std::filesystem;

namespace {

struct InspectOptions {
  std::string path;
  bool json = false;
  bool list = true;
};

void run_inspect(const InspectOptions& opt) {
  io::Checkpoint ckpt(opt.path);
  std::optional<io::ModelConfig> config;
  if (fs::exists(ckpt.directory() / "config.json")) config = io::read_model_config(ckpt.directory());
  std::optional<std::string> problem;
  if (config) {
    problem = io::config_tensor_mismatch(
        *config, {ckpt.names(), [&ckpt](const std::string& n) { return ckpt.info(n).shape; }});
  }
  // Shown first, then refused: a contradicting config.json makes every loader fail.
  auto refuse_if_contradicted = [&] {
    if (problem) {
      fail("{}: {}; config.json and the weights disagree",
           (ckpt.directory() / "config.json").string(), *problem);
    }
  };
  int64_t params = 0;
  std::map<std::string, int64_t> by_dtype;
  for (const auto& name : ckpt.names()) {
    const auto& info = ckpt.info(name);
    int64_t n = tensor::numel(info.shape);
    params += n;
    by_dtype[std::string(tensor::dtype_name(info.dtype))] += n;
  }
  if (opt.json) {
    nlohmann::ordered_json j;
    j["path"] = opt.path;
    j["parameters"] = params;
    j["bytes"] = ckpt.total_bytes();
    for (const auto& s : ckpt.shards()) {
      j["shards"].push_back({{"file", fs::path(s->path()).filename().string()},
                             {"tensors", s->tensors().size()},
                             {"bytes", s->file_size()}});
    }
    for (const auto& name : ckpt.names()) {
      const auto& info = ckpt.info(name);
      j["tensors"][name] = {{"dtype", tensor::dtype_name(info.dtype)}, {"shape", info.shape}};
    }
    if (config) j["config"] = config->raw;
    if (problem) j["config_problem"] = *problem;
    fmt::print("{}\n", j.dump(2));
    refuse_if_contradicted();
    return;
  }
  if (opt.list) {
    size_t width = 0;
    for (const auto& name : ckpt.names()) width = std::max(width, name.size());
    for (const auto& name : ckpt.names()) {
      const auto& info = ckpt.info(name);
      fmt::print("{:<{}}  {:<5} {}\n", name, width, tensor::dtype_name(info.dtype),
                 tensor::shape_string(info.shape));
    }
    fmt::print("\n");
  }
  fmt::print("tensors     {}\n", ckpt.names().size());
  fmt::print("parameters  {} ({:.2f}M)\n", params, static_cast<double>(params) / 1e6);
  for (const auto& [dtype, n] : by_dtype) fmt::print("  {:<8}  {}\n", dtype, n);
  fmt::print("size        {}\n", core::human_bytes(static_cast<double>(ckpt.total_bytes())));
  fmt::print("shards      {}\n", ckpt.shards().size());
  for (const auto& s : ckpt.shards()) {
    fmt::print("  {}  {} tensors  {}\n", fs::path(s->path()).filename().string(),
               s->tensors().size(), core::human_bytes(static_cast<double>(s->file_size())));
  }
  if (config) {
    const auto& c = *config;
    fmt::print("config      {} ({}), {} layers, hidden {}, heads {}/{} kv, head_dim {}, "
               "intermediate {}, vocab {}, rope {} theta {}, dtype {}{}{}\n",
               c.architecture, c.model_type, c.num_layers, c.hidden_size, c.num_heads,
               c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size, c.rope.type,
               c.rope.theta, c.dtype.empty() ? "?" : c.dtype,
               c.tie_word_embeddings ? ", tied embeddings" : "",
               c.sliding_window ? fmt::format(", sliding window {}", *c.sliding_window) : "");
  }
  refuse_if_contradicted();
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto opt = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "Show tensors, dtypes, shapes, shards and config "
                                            "(reads headers only)");
  cmd->add_option("path", opt->path, "Model directory, .safetensors or pytorch_model .bin file")
      ->required();
  cmd->add_flag("--json", opt->json, "Print JSON");
  cmd->add_flag("!--summary", opt->list, "Only the summary, not every tensor");
  cmd->callback([opt] { run_inspect(*opt); });
}

}  // namespace amalgam::cli
