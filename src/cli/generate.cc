// amalgam generate MODEL -p TEXT -n N: greedy or sampled continuation, streamed to stdout as it
// is decoded; stops at an end-of-sequence token. --json prints ids and text at the end instead.
// --proxy-expert E --proxy-anti A [--proxy-alpha X]: proxy tuning, MODEL's logits plus
// X * (E's logits - A's logits) at every step (infer/proxy.h). --in-memory runs on copies of the
// weights in memory instead of the files' mappings.
#include "infer/generate.h"

#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/proxy.h"

namespace amalgam::cli {

namespace {

struct GenerateCliOptions {
  std::string model;
  std::string prompt;
  std::string ids;
  int64_t max_new_tokens = 64;
  bool greedy = false;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool json = false;
  int threads = 1;
  bool in_memory = false;
  std::string proxy_expert;
  std::string proxy_anti;
  float proxy_alpha = 1.0f;
};

void run_generate(const GenerateCliOptions& opt, bool sampled) {
  apply_threads(opt.threads);
  LoadedModel m = open_model(opt.model, !opt.prompt.empty(), opt.in_memory);
  std::vector<int32_t> prompt =
      opt.ids.empty() ? m.require_tokenizer().encode(opt.prompt, true) : parse_id_list(opt.ids);
  if (prompt.empty()) fail("generate: the prompt encodes to no tokens");
  infer::GenerateOptions g;
  g.max_new_tokens = opt.max_new_tokens;
  g.stop_ids = m.stop_ids();
  g.sampler.greedy = !sampled;
  g.sampler.temperature = sampled ? opt.temperature : 0.0f;
  g.sampler.top_k = opt.top_k;
  g.sampler.top_p = opt.top_p;
  g.sampler.seed = opt.seed;
  const tokenizer::Tokenizer* tok = m.tokenizer ? &*m.tokenizer : nullptr;
  std::vector<int32_t> so_far;
  std::string printed;
  auto stream = [&](int32_t id) {
    if (opt.json) return true;
    so_far.push_back(id);
    if (tok == nullptr) {
      fmt::print("{}{}", so_far.size() > 1 ? " " : "", id);
    } else {
      // Decode everything so far and print what is new: a token can end inside a UTF-8
      // character, which then appears with the next token.
      std::string text = tok->decode(so_far);
      if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0 &&
          text.find("\xEF\xBF\xBD", printed.size()) == std::string::npos) {
        fmt::print("{}", text.substr(printed.size()));
        printed = text;
      }
    }
    std::fflush(stdout);
    return true;
  };
  infer::Generation out;
  if (opt.proxy_expert.empty()) {
    out = infer::generate(*m.model, prompt, g, stream);
  } else {
    LoadedModel expert = open_model(opt.proxy_expert, false, opt.in_memory);
    LoadedModel anti = open_model(opt.proxy_anti, false, opt.in_memory);
    infer::ProxyLogits proxy(*m.model, *expert.model, *anti.model, opt.proxy_alpha);
    out = infer::generate(proxy, prompt, g, stream);
  }
  if (opt.json) {
    nlohmann::ordered_json j;
    j["prompt_ids"] = prompt;
    j["ids"] = out.ids;
    if (tok != nullptr) j["text"] = tok->decode(out.ids);
    j["stopped"] = out.stopped;
    j["context_full"] = out.context_full;
    fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  if (tok != nullptr) {
    std::string text = tok->decode(out.ids);
    if (text.size() > printed.size()) fmt::print("{}", text.substr(printed.size()));
  }
  fmt::print("\n");
  if (out.context_full) {
    core::warn("stopped after {} tokens: the model's context of {} is full", out.ids.size(),
               m.model->context_description());
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto opt = std::make_shared<GenerateCliOptions>();
  auto* cmd = app.add_subcommand("generate",
                                 "Continue a prompt with the model (greedy or "
                                 "sampled), streaming the text");
  cmd->add_option("model", opt->model, "Model directory (config.json + safetensors)")->required();
  auto* prompt = cmd->add_option("-p,--prompt", opt->prompt,
                                 "Prompt text (BOS added as the "
                                 "tokenizer's post-processor does)");
  auto* ids = cmd->add_option("--ids", opt->ids, "Prompt as token ids: 1,2,3");
  prompt->excludes(ids);
  cmd->add_option("-n,--max-new-tokens", opt->max_new_tokens, "Tokens to generate at most")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  auto* greedy = cmd->add_flag("--greedy", opt->greedy, "Argmax decoding (the default)");
  auto* temp =
      cmd->add_option("--temperature", opt->temperature, "Sample with this temperature (> 0)")
          ->check(CLI::Range(1e-6, 1e6));
  temp->excludes(greedy);
  cmd->add_option("--top-k", opt->top_k, "Sample among the k most likely tokens (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30))
      ->needs(temp);
  cmd->add_option("--top-p", opt->top_p, "Sample from the smallest set with this mass")
      ->check(CLI::Range(0.0f, 1.0f))
      ->needs(temp);
  cmd->add_option("--seed", opt->seed, "Random seed for sampling");
  cmd->add_flag("--json", opt->json,
                "Print {\"prompt_ids\": [...], \"ids\": [...], \"text\": \"...\"} at the end");
  auto* expert = cmd->add_option("--proxy-expert", opt->proxy_expert,
                                 "Proxy tuning: small tuned model whose logits, minus the "
                                 "anti-expert's, are added to MODEL's");
  auto* anti = cmd->add_option("--proxy-anti", opt->proxy_anti,
                               "Proxy tuning: small untuned model (the expert's base)");
  expert->needs(anti);
  anti->needs(expert);
  cmd->add_option("--proxy-alpha", opt->proxy_alpha,
                  "Proxy tuning: scale of (expert - anti) logits (default 1)")
      ->needs(expert);
  cmd->add_flag("--in-memory", opt->in_memory,
                "Copy the weights of model files into memory (huge pages) instead of running "
                "them from the files' mappings: a slower start, faster and steadier decoding "
                "(as llama.cpp's --no-mmap)");
  add_threads_option(cmd, opt->threads);
  add_check_finite_option(cmd);
  cmd->callback([opt, prompt, ids, temp] {
    if (prompt->count() == 0 && ids->count() == 0) fail("generate: give a prompt with -p or --ids");
    run_generate(*opt, temp->count() > 0);
  });
}

}  // namespace amalgam::cli
