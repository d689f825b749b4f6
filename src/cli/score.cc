// amalgam score MODEL --reference REF --file TEXT -o OUT.jsonl [--keep 0.6]: Rho-1 token scores.
// Every token's excess loss, loss under MODEL minus loss under REF (Lin et al. 2024: the tokens a
// reference trained on good data finds easy and the model finds hard are the ones worth
// training on); the top `keep` fraction of all tokens of the file is marked selected.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/progress.h"
#include "eval/token_loss.h"
#include "moe/calibrate.h"
#include "moe/router.h"

namespace amalgam::cli {

namespace {

struct ScoreArgs {
  std::string model;
  std::string reference;
  std::string file;
  std::string out;
  double keep = 0.6;
  int threads = 0;
};

// Written beside the target and renamed: a failure leaves no partial file.
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  core::write_text_file(tmp, text);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("{}: cannot write the output", path);
  }
}

struct Scored {
  int32_t id;
  double loss, ref_loss;
  bool selected = false;
};

void run_score(const ScoreArgs& a) {
  apply_threads(a.threads);
  if (!(a.keep > 0 && a.keep <= 1)) fail("--keep must be in (0, 1], got {}", a.keep);
  const std::vector<std::string> texts = moe::read_samples(a.file);
  LoadedModel model = open_model(a.model, true);
  LoadedModel ref = open_model(a.reference, false);
  if (ref.model->vocab_size() != model.model->vocab_size()) {
    fail("{}: vocabulary of {} tokens, the model's has {}; scoring needs one vocabulary",
         a.reference, ref.model->vocab_size(), model.model->vocab_size());
  }
  const tokenizer::Tokenizer& tok = model.require_tokenizer();
  std::vector<std::vector<Scored>> docs;
  core::ProgressBar progress("score", texts.size(), "texts");
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = moe::prompt_tokens(tok, text);
    const std::vector<double> lm = eval::token_losses(*model.model, ids);
    const std::vector<double> lr = eval::token_losses(*ref.model, ids);
    std::vector<Scored> d;
    for (size_t i = 0; i < lm.size(); ++i) d.push_back({ids[i + 1], lm[i], lr[i]});
    docs.push_back(std::move(d));
    progress.advance(1);
  }
  progress.finish();
  // Top `keep` of all tokens by excess loss (ties: earlier tokens first).
  std::vector<std::pair<size_t, size_t>> all;
  for (size_t d = 0; d < docs.size(); ++d) {
    for (size_t t = 0; t < docs[d].size(); ++t) all.push_back({d, t});
  }
  if (all.empty()) fail("{}: no token to score (every text is a single token)", a.file);
  auto excess = [&](const std::pair<size_t, size_t>& p) {
    const Scored& s = docs[p.first][p.second];
    return s.loss - s.ref_loss;
  };
  std::stable_sort(all.begin(), all.end(),
                   [&](const auto& x, const auto& y) { return excess(x) > excess(y); });
  const size_t selected = std::max<size_t>(1, static_cast<size_t>(a.keep * all.size() + 0.5));
  for (size_t i = 0; i < selected && i < all.size(); ++i) {
    docs[all[i].first][all[i].second].selected = true;
  }
  std::string out;
  double sum_sel = 0, sum_rest = 0;
  std::map<std::string, int64_t> pieces;
  for (size_t d = 0; d < docs.size(); ++d) {
    nlohmann::ordered_json j;
    j["text"] = texts[d];
    j["tokens"] = nlohmann::ordered_json::array();
    for (size_t t = 0; t < docs[d].size(); ++t) {
      const Scored& s = docs[d][t];
      const std::string piece = tok.decode(std::vector<int32_t>{s.id}, false);
      j["tokens"].push_back({{"position", t + 1},
                             {"id", s.id},
                             {"piece", piece},
                             {"loss", s.loss},
                             {"ref_loss", s.ref_loss},
                             {"excess", s.loss - s.ref_loss},
                             {"selected", s.selected}});
      (s.selected ? sum_sel : sum_rest) += s.loss - s.ref_loss;
      if (s.selected) ++pieces[piece];
    }
    out += j.dump() + "\n";
  }
  write_file_atomically(a.out, out);
  const size_t rest = all.size() - selected;
  core::info(
      "{}: {} tokens of {} texts; {} selected (keep {}), mean excess loss {:.3f} selected, "
      "{:.3f} not",
      a.out, all.size(), docs.size(), selected, a.keep, sum_sel / selected,
      rest ? sum_rest / rest : 0.0);
  std::vector<std::pair<int64_t, std::string>> common;
  for (const auto& [piece, n] : pieces) common.push_back({n, piece});
  std::sort(common.rbegin(), common.rend());
  std::string line;
  for (size_t i = 0; i < common.size() && i < 10; ++i) {
    line += fmt::format(" '{}' x{}", common[i].second, common[i].first);
  }
  core::info("most selected tokens:{}", line);
}

}  // namespace

void register_score(CLI::App& app) {
  auto args = std::make_shared<ScoreArgs>();
  auto* cmd = app.add_subcommand(
      "score",
      "Rho-1 token scores: excess loss of MODEL over a reference model, top fraction selected");
  cmd->add_option("model", args->model, "Model directory (the model being trained)")->required();
  cmd->add_option("--reference", args->reference, "Reference model (trained on good data)")
      ->required();
  cmd->add_option("--file", args->file,
                  "Texts: one per line, or .json / .jsonl items (string, {\"text\"} or "
                  "{\"prompt\", \"answer\"})")
      ->required();
  cmd->add_option("-o,--out", args->out, "Output JSON Lines, one line per text")->required();
  cmd->add_option("--keep", args->keep, "Fraction of all tokens selected (default 0.6)");
  add_threads_option(cmd, args->threads);
  cmd->callback([args] { run_score(*args); });
}

}  // namespace amalgam::cli
