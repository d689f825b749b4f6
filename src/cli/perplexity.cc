// amalgam perplexity MODEL --file TEXT: mean next-token NLL and perplexity of a text, in one of
// two labelled layouts:
//   chunks (default): llama.cpp's llama-perplexity convention (--ctx tokens per chunk, BOS in
//     place of each chunk's first token, the second half of each chunk scored);
//   document rows (--rows N): documents wrapped as [BOS] text EOS, concatenated, the first
//     N x (--row-tokens + 1) tokens cut into N rows, every prediction scored. This is how the
//     zoo's reference nll is defined (--rows 64 --row-tokens 128 on its held-out docstrings).
#include "infer/perplexity.h"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "infer/documents.h"

namespace amalgam::cli {

namespace {

struct PerplexityOptions {
  std::string model;
  std::string file;
  std::string jsonl;
  int64_t ctx = 0;  // 0: the model's context (512 where config.json states none)
  int64_t rows = 0;
  int64_t row_tokens = 128;
  std::string separator;
  bool json = false;
  int threads = 1;
};

// "\n\n" typed on a command line arrives as backslash-n; accept the usual escapes.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

void run_perplexity(const PerplexityOptions& opt) {
  apply_threads(opt.threads);
  LoadedModel m = open_model(opt.model, true);
  const tokenizer::Tokenizer& tok = m.require_tokenizer();
  const auto start = std::chrono::steady_clock::now();
  infer::NllResult result;
  std::string mode;
  if (opt.rows > 0) {
    std::vector<std::string> docs =
        opt.jsonl.empty()
            ? infer::split_documents(core::read_text_file(opt.file), unescape(opt.separator))
            : infer::read_jsonl_documents(opt.jsonl);
    auto eos = tok.eos_id();
    if (!eos) fail("{}: the tokenizer has no EOS token to end documents with", m.name);
    auto rows = infer::document_rows(tok, docs, *eos, opt.rows, opt.row_tokens);
    result = infer::rows_nll(*m.model, rows);
    mode = fmt::format("document rows: {} documents, {} rows x {} predictions", docs.size(),
                       opt.rows, opt.row_tokens);
  } else {
    if (!opt.jsonl.empty()) fail("perplexity: --jsonl documents need --rows (document rows mode)");
    int64_t ctx = opt.ctx;
    const int64_t model_ctx = m.model->context_length();
    if (ctx == 0) ctx = model_ctx > 0 ? model_ctx : 512;
    if (model_ctx > 0 && ctx > model_ctx) {
      fail("perplexity: --ctx {} is longer than the model's context of {}", ctx,
           m.model->context_description());
    }
    std::vector<int32_t> ids = tok.encode(core::read_text_file(opt.file), true);
    std::optional<int32_t> bos;
    if (tok.add_bos()) bos = tok.bos_id();
    result = infer::chunked_nll(*m.model, ids, ctx, bos);
    mode = fmt::format("chunks: {} tokens, {} chunks of {}, second halves scored", ids.size(),
                       static_cast<int64_t>(ids.size()) / ctx, ctx);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (opt.json) {
    nlohmann::ordered_json j;
    j["mode"] = opt.rows > 0 ? "document_rows" : "chunks";
    j["predictions"] = result.count;
    j["nll"] = result.mean();
    j["perplexity"] = result.perplexity();
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("{}\n", mode);
  fmt::print("mean nll    {:.4f}\nperplexity  {:.4f}\npredictions {}\n", result.mean(),
             result.perplexity(), result.count);
  core::info("{:.2f} s, {:.0f} predictions/s", seconds, result.count / std::max(seconds, 1e-9));
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto opt = std::make_shared<PerplexityOptions>();
  auto* cmd =
      app.add_subcommand("perplexity",
                         "Mean next-token NLL and perplexity of a text (llama.cpp chunks, or "
                         "document rows as the zoo reference uses)");
  cmd->add_option("model", opt->model,
                  "Model directory (config.json + safetensors + "
                  "tokenizer.json)")
      ->required();
  auto* file = cmd->add_option("-f,--file", opt->file, "Plain-text file")->check(CLI::ExistingFile);
  auto* jsonl = cmd->add_option("--jsonl", opt->jsonl,
                                "Documents, one per line ({\"text\": ...} or a JSON string)")
                    ->check(CLI::ExistingFile);
  file->excludes(jsonl);
  auto* ctx = cmd->add_option("--ctx", opt->ctx, "Chunks mode: tokens per chunk (default: the model's context)")
                  ->check(CLI::Range(int64_t{4}, int64_t{1} << 24));
  auto* rows =
      cmd->add_option("--rows", opt->rows, "Document rows mode: number of rows (the zoo uses 64)")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  rows->excludes(ctx);
  cmd->add_option("--row-tokens", opt->row_tokens, "Document rows mode: predictions per row")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24))
      ->needs(rows);
  cmd->add_option("--doc-separator", opt->separator,
                  "Document rows mode with --file: split documents at this string (\\n escapes "
                  "allowed); default: the whole file is one document")
      ->needs(rows)
      ->needs(file);
  cmd->add_flag("--json", opt->json, "Print {\"mode\", \"predictions\", \"nll\", \"perplexity\"}");
  add_threads_option(cmd, opt->threads);
  add_check_finite_option(cmd);
  cmd->callback([opt, file, jsonl] {
    if (file->count() == 0 && jsonl->count() == 0) fail("perplexity: give --file or --jsonl");
    run_perplexity(*opt);
  });
}

}  // namespace amalgam::cli
