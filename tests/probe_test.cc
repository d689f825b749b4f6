// amalgam embed and amalgam probe: features checked against the engine's hidden-state output
// (transformers' output_hidden_states semantics) for each model of a concatenation, and a probe
// that must tell the zoo's tasks apart from their prompts.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "infer/model.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::zoo;

void write_items(const fs::path& path, int first, int last) {
  std::string lines;
  const char* tasks[] = {"add", "rev", "sort"};
  for (int label = 0; label < 3; ++label) {
    const auto items = nlohmann::json::parse(
        testing::read_file(zoo("eval") / (std::string(tasks[label]) + ".json")));
    for (int i = first; i < last; ++i) {
      lines += nlohmann::json{{"text", items[i]["prompt"]}, {"label", label}}.dump() + "\n";
    }
  }
  testing::write_file(path, lines);
}

TEST(ProbeTest, EmbedConcatenatesLastTokenStates) {
  testing::TempDir dir;
  write_items(dir / "items.jsonl", 0, 3);
  const auto r = testing::run_amalgam(
      "-q embed " + zoo("base").string() + "," + zoo("rev-expert").string() + " --file " +
      (dir / "items.jsonl").string() + " --layer 2 -o " + (dir / "f.safetensors").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  io::SafetensorsFile f((dir / "f.safetensors").string());
  const auto x = f.view(*f.find("features"));
  const auto y = f.view(*f.find("labels"));
  ASSERT_EQ(x.shape, (tensor::Shape{9, 256}));
  const auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  const auto items = testing::read_file(dir / "items.jsonl");
  std::istringstream in(items);
  std::string line;
  for (int i = 0; std::getline(in, line); ++i) {
    const auto j = nlohmann::json::parse(line);
    int64_t label;
    std::memcpy(&label, y.data + 8 * i, 8);
    EXPECT_EQ(label, j["label"].get<int64_t>());
    int m = 0;
    for (const char* model : {"base", "rev-expert"}) {
      const auto mdl = infer::load_model(zoo(model));
      infer::KVCache cache = mdl->new_cache();
      infer::Batch batch;
      batch.add_sequence(tok.encode(j["text"].get<std::string>(), true), 0, 0, false);
      infer::ForwardOptions o;
      o.hidden_states = true;
      const auto res = mdl->forward(batch, cache, o);
      const std::vector<float>& h = res.hidden.at(0);  // (L + 1, D): row 2 = input of layer 2
      const float* got = reinterpret_cast<const float*>(x.data) + i * 256 + m * 128;
      for (int k = 0; k < 128; ++k) ASSERT_FLOAT_EQ(got[k], h[2 * 128 + k]) << model << " " << k;
      ++m;
    }
  }
}

TEST(ProbeTest, ProbeTellsTasksApart) {
  testing::TempDir dir;
  write_items(dir / "train.jsonl", 0, 30);
  write_items(dir / "test.jsonl", 100, 130);
  for (const char* s : {"train", "test"}) {
    const auto r =
        testing::run_amalgam("-q embed " + zoo("base").string() + " --pool mean --file " +
                             (dir / (std::string(s) + ".jsonl")).string() + " -o " +
                             (dir / (std::string(s) + ".safetensors")).string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const auto r = testing::run_amalgam("probe " + (dir / "train.safetensors").string() + " --eval " +
                                      (dir / "test.safetensors").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("eval accuracy 1.0000 (90 items)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("confusion"), std::string::npos) << r.output;
}

TEST(ProbeTest, Errors) {
  testing::TempDir dir;
  testing::write_file(dir / "bad.jsonl", "{\"text\": \"x\"}\n");
  const auto r = testing::run_amalgam("embed " + zoo("base").string() + " --file " +
                                      (dir / "bad.jsonl").string() + " -o " +
                                      (dir / "f.safetensors").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("bad.jsonl:1"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "f.safetensors"));
}

}  // namespace
}  // namespace amalgam
