// One loader for every command (eval/model_source.h): eval opens GGUF files as perplexity and
// generate do, a GGUF export scores as its checkpoint does, and every command stops on the same
// tokens. The accuracies are checked against data/zoo/reference-results.json (made by PyTorch).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/model_args.h"
#include "core/json.h"
#include "eval/model_source.h"
#include "eval/suite.h"
#include "eval/task.h"
#include "gguf/export.h"
#include "test_util.h"

namespace amalgam::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::read_file;
using testing::run_amalgam;
using testing::source_dir;
using testing::TempDir;
using testing::write_file;
using testing::zoo;

constexpr size_t kItems = 60;  // the reference results' item count

fs::path export_f32(const std::string& model, const fs::path& out) {
  gguf::ExportOptions o;
  o.type = *gguf::parse_export_type("f32");
  gguf::export_gguf(zoo(model), out, o);
  return out;
}

TaskResult run_add(const LoadedModel& m) {
  Task add = load_task(zoo("eval/add.json"));
  limit_items(add, kItems);
  const Suite suite({add}, m.require_tokenizer(), m.stop_ids());
  return suite.run(*m.model, m.require_tokenizer(), {}, false).at(0);
}

TEST(ModelLoader, GgufExportScoresAsItsCheckpoint) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  const fs::path gguf = export_f32("add-expert", dir / "add.gguf");
  ModelLoader loader(1);
  const LoadedModel ckpt = loader.load(zoo("add-expert"));
  const LoadedModel file = loader.load(gguf);
  // The tokenizer rebuilt from the file's metadata, and the same stop tokens.
  ASSERT_TRUE(file.tokenizer.has_value());
  EXPECT_EQ(file.stop_ids(), ckpt.stop_ids());
  const TaskResult a = run_add(ckpt);
  const TaskResult b = run_add(file);
  const double reference =
      core::read_json_file(zoo("reference-results.json"))["models"]["add-expert"]["add"];
  const double acc = a.metric("exact_match").value;
  EXPECT_NEAR(acc, reference, 0.04);
  EXPECT_EQ(b.metric("exact_match").value, acc);
  ASSERT_EQ(a.outputs.size(), b.outputs.size());
  for (size_t i = 0; i < a.outputs.size(); ++i) EXPECT_EQ(a.outputs[i], b.outputs[i]) << i;
}

// The acceptance case: `amalgam eval MODEL.gguf` as one command, with the same table as the
// checkpoint's.
TEST(ModelLoader, EvalCommandOpensGguf) {
  TempDir dir;
  const fs::path gguf = export_f32("rev-expert", dir / "rev.gguf");
  const std::string task = zoo("eval/rev.json").string();
  auto run = [&](const fs::path& model, const std::string& out) {
    const auto r = run_amalgam(fmt::format("eval {} --task {} --limit 20 --threads 1 --json {}",
                                           model.string(), task, (dir / out).string()));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return json::parse(read_file(dir / out))["results"];
  };
  const json from_gguf = run(gguf, "g.json");
  const json from_ckpt = run(zoo("rev-expert"), "c.json");
  ASSERT_EQ(from_gguf.size(), 1u);
  EXPECT_EQ(from_gguf[0]["metrics"], from_ckpt[0]["metrics"]);
  EXPECT_EQ(from_gguf[0]["outputs"], from_ckpt[0]["outputs"]);
}

// generation_config.json's eos_token_id stops generate and eval alike (it used to stop only
// generate); without a tokenizer the config's ids alone.
TEST(ModelLoader, OneStopTokenPolicy) {
  TempDir dir;
  const fs::path m = dir / "m";
  fs::create_directories(m);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) {
    fs::copy_file(zoo("base") / f, m / f);
  }
  write_file(m / "generation_config.json", R"({"eos_token_id": [1, 7]})");
  const cli::LoadedModel generate = cli::open_model(m.string(), false);
  ModelLoader loader(1);
  const LoadedModel eval = loader.load(m);
  // </s> is 1 in the zoo's tokenizer; 7 only in generation_config.json.
  EXPECT_EQ(generate.stop_ids(), (std::vector<int32_t>{1, 7}));
  EXPECT_EQ(eval.stop_ids(), generate.stop_ids());
  fs::remove(m / "tokenizer.json");
  const cli::LoadedModel no_tokenizer = cli::open_model(m.string(), false);
  EXPECT_FALSE(no_tokenizer.tokenizer.has_value());
  EXPECT_EQ(no_tokenizer.stop_ids(), (std::vector<int32_t>{1, 7}));
  testing::expect_error([&] { cli::open_model(m.string(), true); }, "tokenizer.json");
}

// Weights copied into memory (generate --in-memory, infer::LoadOptions::in_memory) give the
// logits of the mapped files bit for bit, for a checkpoint and for GGUF files with plain and
// quantised matrices, and every copy starts on a 64-byte boundary.
TEST(ModelLoader, WeightsCopiedIntoMemoryGiveTheSameLogits) {
  TempDir dir;
  gguf::ExportOptions q8;
  q8.type = *gguf::parse_export_type("q8_0");
  gguf::export_gguf(zoo("add-expert"), dir / "q8.gguf", q8);
  const std::vector<fs::path> models = {zoo("add-expert"), export_f32("add-expert", dir / "f.gguf"),
                                        dir / "q8.gguf"};
  for (const fs::path& path : models) {
    ModelLoader mapped(1), copied(1, /*weights_in_memory=*/true);
    const LoadedModel a = mapped.load(path);
    const LoadedModel b = copied.load(path);
    for (const auto& [name, view] : b.model->tensor_views()) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data) % 64, 0u) << path << " " << name;
      EXPECT_NE(view.data, a.model->tensor_views().at(name).data) << path << " " << name;
    }
    for (size_t n : {size_t{5}, size_t{12}}) {  // decode (gemv) and prefill (gemm) products
      infer::Batch batch;
      std::vector<int32_t> ids(n);
      for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(3 + 37 * i % 500);
      batch.add_sequence(ids, 0, 0, true);
      auto ca = a.model->new_cache(), cb = b.model->new_cache();
      EXPECT_EQ(a.model->forward(batch, ca).logits, b.model->forward(batch, cb).logits)
          << path << " " << n;
    }
  }
}

// A model outlives the loader that opened it (cli::open_model's loader is gone on return).
TEST(ModelLoader, ModelOutlivesItsLoader) {
  std::unique_ptr<infer::Model> model;
  {
    ModelLoader loader(1);
    model = loader.load(zoo("base")).model;
  }
  infer::Batch b;
  b.add_sequence({0, 17, 301, 5}, 0, 0, true);
  auto cache = model->new_cache();
  const auto logits = model->forward(b, cache).logits;
  ASSERT_EQ(logits.size(), 4u * 1024u);  // every position
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
}

}  // namespace
}  // namespace amalgam::eval
