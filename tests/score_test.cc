// amalgam score (Rho-1): MODEL base with REF add-expert on add items ranks what the reference
// learnt (format and answer tokens) above the operands; losses checked against a log-softmax
// computed here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/token_loss.h"
#include "infer/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::zoo;

// What the add-expert learnt shows as excess loss: the format tokens ('+', '=', and the first
// digit right after BOS, where the base expects prose) score highest, then the answer digits; the
// operand digits, random for both models, score lowest.
TEST(ScoreTest, AddExpertTokensScoreAboveOperands) {
  testing::TempDir dir;
  const auto items = nlohmann::json::parse(testing::read_file(zoo("eval") / "add.json"));
  std::string lines;
  for (int i = 0; i < 40; ++i) lines += items[i].dump() + "\n";
  testing::write_file(dir / "add.jsonl", lines);
  const auto r = testing::run_amalgam(
      "score " + zoo("base").string() + " --reference " + zoo("add-expert").string() + " --file " +
      (dir / "add.jsonl").string() + " -o " + (dir / "s.jsonl").string() + " --keep 0.3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  std::istringstream in(testing::read_file(dir / "s.jsonl"));
  std::string line;
  enum Kind { kFormat, kAnswer, kOperand };
  std::vector<std::pair<double, Kind>> all;
  int docs = 0;
  size_t selected = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    // Answer tokens: those after BOS + the prompt's tokens.
    const size_t prompt_len =
        1 + tok.encode(items[docs]["prompt"].get<std::string>(), false).size();
    for (const auto& t : j["tokens"]) {
      const size_t pos = t["position"].get<size_t>();
      const std::string piece = t["piece"].get<std::string>();
      const Kind kind = pos >= prompt_len                            ? kAnswer
                        : (pos == 1 || piece == "+" || piece == "=") ? kFormat
                                                                     : kOperand;
      all.push_back({t["excess"].get<double>(), kind});
      selected += t["selected"].get<bool>();
      EXPECT_NEAR(t["excess"].get<double>(), t["loss"].get<double>() - t["ref_loss"].get<double>(),
                  1e-9);
    }
    ++docs;
  }
  ASSERT_EQ(docs, 40);
  EXPECT_EQ(selected, static_cast<size_t>(0.3 * all.size() + 0.5));
  double mean[3] = {0, 0, 0};
  size_t count[3] = {0, 0, 0};
  for (const auto& [e, k] : all) mean[k] += e, ++count[k];
  for (int k = 0; k < 3; ++k) mean[k] /= count[k];
  EXPECT_GT(mean[kFormat], mean[kAnswer]);
  EXPECT_GT(mean[kAnswer], 1.5 * mean[kOperand]) << mean[kAnswer] << " vs " << mean[kOperand];
  // The highest-scored (format + answer count) tokens are mostly format and answer tokens.
  std::stable_sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.first > b.first; });
  const size_t n = count[kFormat] + count[kAnswer];
  size_t learnt = 0;
  for (size_t i = 0; i < n; ++i) learnt += all[i].second != kOperand;
  EXPECT_GT(static_cast<double>(learnt) / n, 0.8) << learnt << " of " << n;
}

TEST(ScoreTest, TokenLossesAreNegativeLogSoftmax) {
  const auto m = infer::load_model(zoo("base"));
  const std::vector<int32_t> ids = {0, 300, 45, 12, 700};
  const std::vector<double> got = eval::token_losses(*m, ids);
  infer::KVCache cache = m->new_cache();
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  const auto r = m->forward(batch, cache);
  ASSERT_EQ(got.size(), ids.size() - 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    double sum = 0.0;
    for (float z : r.row(i)) sum += std::exp(static_cast<double>(z));
    EXPECT_NEAR(got[i], std::log(sum) - r.row(i)[ids[i + 1]], 1e-6);
  }
}

TEST(ScoreTest, Errors) {
  testing::TempDir dir;
  const auto r = testing::run_amalgam(
      "score " + zoo("base").string() + " --reference " + zoo("add-expert").string() + " --file " +
      (dir / "missing.txt").string() + " -o " + (dir / "s.jsonl").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("missing.txt"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "s.jsonl"));
}

}  // namespace
}  // namespace amalgam
