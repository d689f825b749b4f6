// amalgam logits MODEL (-p TEXT | --ids 1,2,3) -o FILE.json: the logits of every position (and
// on request named intermediates, --dump attn_out.3) for comparison with other engines.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"

namespace amalgam::cli {

namespace {

struct LogitsOptions {
  std::string model;
  std::string prompt;
  std::string ids;
  std::string output;
  std::vector<std::string> dump;
  int threads = 1;
};

nlohmann::json rows_json(const float* data, int64_t rows, int64_t cols) {
  nlohmann::json out = nlohmann::json::array();
  for (int64_t r = 0; r < rows; ++r) {
    out.push_back(std::vector<float>(data + r * cols, data + (r + 1) * cols));
  }
  return out;
}

void run_logits(const LogitsOptions& opt) {
  apply_threads(opt.threads);
  LoadedModel m = open_model(opt.model, !opt.prompt.empty());
  std::vector<int32_t> ids =
      opt.ids.empty() ? m.require_tokenizer().encode(opt.prompt, true) : parse_id_list(opt.ids);
  if (ids.empty()) fail("logits: the prompt encodes to no tokens");
  infer::Dumper dumper(opt.dump);
  infer::ForwardOptions fo;
  if (!opt.dump.empty()) fo.dump = &dumper;
  infer::KVCache cache = m.model->new_cache();
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  infer::ForwardResult r = m.model->forward(batch, cache, fo);
  nlohmann::ordered_json j;
  j["ids"] = ids;
  j["logits"] = rows_json(r.logits.data(), static_cast<int64_t>(r.rows.size()), r.vocab);
  if (!opt.dump.empty()) {
    nlohmann::ordered_json dumps = nlohmann::ordered_json::object();
    for (const auto& [name, t] : dumper.tensors()) {
      dumps[name] = {{"shape", {t.rows, t.cols}},
                     {"data", rows_json(t.data.data(), t.rows, t.cols)}};
    }
    j["dumps"] = dumps;
  }
  core::write_file_atomic(opt.output, j.dump() + "\n");
  core::info("{}: logits of {} positions x {} vocab{}", opt.output, ids.size(), r.vocab,
             opt.dump.empty() ? "" : fmt::format(", {} dumped tensors", dumper.tensors().size()));
}

}  // namespace

void register_logits(CLI::App& app) {
  auto opt = std::make_shared<LogitsOptions>();
  auto* cmd = app.add_subcommand("logits",
                                 "Write the logits of every prompt position (and "
                                 "named intermediates) to a JSON file");
  cmd->add_option("model", opt->model, "Model directory (config.json + safetensors)")->required();
  auto* prompt = cmd->add_option("-p,--prompt", opt->prompt, "Prompt text");
  auto* ids = cmd->add_option("--ids", opt->ids, "Prompt as token ids: 1,2,3");
  prompt->excludes(ids);
  cmd->add_option("-o,--output", opt->output,
                  "Output JSON: {\"ids\": [...], \"logits\": "
                  "[[...] per position]}")
      ->required();
  cmd->add_option("--dump", opt->dump,
                  "Also write an intermediate: attn_out.3 (one layer), attn_out (all layers), "
                  "all; names: embd attn_norm q k v q_rope k_rope attn attn_out ffn_inp "
                  "ffn_norm gate up ffn_act router ffn_out l_out result_norm logits");
  add_threads_option(cmd, opt->threads);
  add_check_finite_option(cmd);
  cmd->callback([opt, prompt, ids] {
    if (prompt->count() == 0 && ids->count() == 0) fail("logits: give a prompt with -p or --ids");
    run_logits(*opt);
  });
}

}  // namespace amalgam::cli
