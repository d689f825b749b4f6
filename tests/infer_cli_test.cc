// End-to-end tests of the generate, logits and perplexity commands on the zoo models.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "infer/generate.h"
#include "infer/model.h"
#include "infer/perplexity.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

using testing::q;
using testing::run_amalgam;
using testing::TempDir;
using testing::zoo;

TEST(LogitsCommand, WritesLogitsAndDumpsMatchingTheApi) {
  TempDir dir;
  auto r = run_amalgam("logits " + q(zoo("base")) + " --ids 0,35,261,327 -o " +
                       q(dir / "out.json") + " --dump attn_out.1 --dump logits -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(core::read_text_file(dir / "out.json"));
  EXPECT_EQ(j["ids"], nlohmann::json({0, 35, 261, 327}));
  ASSERT_EQ(j["logits"].size(), 4u);
  ASSERT_EQ(j["logits"][0].size(), 1024u);
  EXPECT_EQ(j["dumps"]["attn_out.1"]["shape"], nlohmann::json({4, 128}));
  EXPECT_EQ(j["dumps"]["logits"]["data"], j["logits"]);
  auto model = infer::load_model(zoo("base"));
  infer::KVCache cache = model->new_cache();
  infer::Batch b;
  b.add_sequence({0, 35, 261, 327}, 0, 0, true);
  auto expected = model->forward(b, cache);
  for (size_t t = 0; t < 4; ++t) {
    for (size_t v = 0; v < 1024; v += 97) {
      EXPECT_FLOAT_EQ(j["logits"][t][v].get<float>(), expected.row(t)[v]);
    }
  }
}

TEST(LogitsCommand, TextPromptIsEncodedWithBos) {
  TempDir dir;
  auto r = run_amalgam("logits " + q(zoo("base")) + " -p 'Return the' -o " + q(dir / "o.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(core::read_text_file(dir / "o.json"));
  auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), tok.encode("Return the", true));
}

TEST(GenerateCommand, GreedyJsonMatchesTheApiAndStopsAtEos) {
  auto r = run_amalgam("generate " + q(zoo("add-expert")) + " -p '589+276=' -n 10 --json -t 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  auto tok = tokenizer::Tokenizer::from_directory(zoo("add-expert"));
  auto model = infer::load_model(zoo("add-expert"));
  infer::GenerateOptions g;
  g.max_new_tokens = 10;
  g.stop_ids = {1};
  auto expected = infer::generate(*model, tok.encode("589+276=", true), g);
  EXPECT_EQ(j["prompt_ids"].get<std::vector<int32_t>>(), tok.encode("589+276=", true));
  EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), expected.ids);
  EXPECT_EQ(j["text"], tok.decode(expected.ids));
  EXPECT_TRUE(j["stopped"].get<bool>());  // the add expert ends its answer with </s>
  EXPECT_LT(expected.ids.size(), 10u);
  // The weights copied into memory decode the same tokens as the mapped files.
  auto copied = run_amalgam("generate " + q(zoo("add-expert")) +
                            " -p '589+276=' -n 10 --json -t 1 --in-memory");
  ASSERT_EQ(copied.exit_code, 0) << copied.output;
  EXPECT_EQ(nlohmann::json::parse(copied.output)["ids"], j["ids"]);
}

TEST(GenerateCommand, StreamsTextAndSamplesReproducibly) {
  auto greedy = run_amalgam("generate " + q(zoo("rev-expert")) + " -p 'reverse word ->' -n 6");
  ASSERT_EQ(greedy.exit_code, 0) << greedy.output;
  EXPECT_EQ(greedy.output, " drow\n");  // the rev expert's answer (its accuracy is 1.0)
  const std::string sample = "generate " + q(zoo("base")) +
                             " -p 'Return the' -n 12 --temperature 0.9 --top-k 40 --top-p 0.95 "
                             "--seed 5 --json";
  auto a = run_amalgam(sample), b = run_amalgam(sample);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
  auto other = run_amalgam("generate " + q(zoo("base")) +
                           " -p 'Return the' -n 12 --temperature 0.9 --seed 6 --json");
  EXPECT_NE(a.output, other.output);
}

TEST(PerplexityCommand, DocumentRowsReproduceTheZooReference) {
  auto r = run_amalgam("perplexity " + q(zoo("base")) + " --jsonl " +
                       q(testing::source_dir() / "data" / "eval" / "zoo-heldout-docs.jsonl") +
                       " --rows 64 --row-tokens 128 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["mode"], "document_rows");
  EXPECT_EQ(j["predictions"], 64 * 128);
  EXPECT_NEAR(j["nll"].get<double>(), 1.7808, 1e-3);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(1.7808), 1e-2);
}

TEST(PerplexityCommand, ChunksAndSeparatedDocuments) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Return the cumulative product of the array elements.\n\n";
  testing::write_file(dir / "t.txt", text);
  auto chunks =
      run_amalgam("perplexity " + q(zoo("base")) + " -f " + q(dir / "t.txt") + " --ctx 64 --json");
  ASSERT_EQ(chunks.exit_code, 0) << chunks.output;
  auto c = nlohmann::json::parse(chunks.output);
  EXPECT_EQ(c["mode"], "chunks");
  EXPECT_GT(c["predictions"].get<int>(), 0);
  EXPECT_EQ(c["predictions"].get<int>() % 31, 0);  // 64 - 32 - 1 per chunk
  auto model = infer::load_model(zoo("base"));
  auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  auto expected = infer::chunked_nll(*model, tok.encode(text, true), 64, 0);
  EXPECT_EQ(c["predictions"].get<int64_t>(), expected.count);
  EXPECT_NEAR(c["nll"].get<double>(), expected.mean(), 1e-9);
  auto docs = run_amalgam("perplexity " + q(zoo("base")) + " -f " + q(dir / "t.txt") +
                          " --rows 4 --row-tokens 32 --doc-separator '\\n\\n' --json");
  ASSERT_EQ(docs.exit_code, 0) << docs.output;
  EXPECT_EQ(nlohmann::json::parse(docs.output)["predictions"], 128);
}

TEST(InferCommands, BadInputGivesOneClearError) {
  auto r = run_amalgam("logits " + q(zoo("base")) + " --ids 1,x,3 -o /tmp/never.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("'x' is not a token id"), std::string::npos) << r.output;
  r = run_amalgam("logits " + q(zoo("base")) + " --ids 1,5000 -o /tmp/never.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("outside the vocabulary"), std::string::npos) << r.output;
  r = run_amalgam("generate " + q(zoo("base")) + " -n 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("give a prompt"), std::string::npos) << r.output;
  r = run_amalgam("perplexity " + q(zoo("base")) + " --jsonl " +
                  q(testing::source_dir() / "data" / "eval" / "zoo-heldout-docs.jsonl") +
                  " --rows 1000");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("rows of 128 + 1 tokens need"), std::string::npos) << r.output;
  r = run_amalgam("generate /nonexistent -p x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/nonexistent"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace amalgam
