// Tokenizer merging (tokenizer_source / tokenizer, mergekit's tests/test_tokenizer.py): models
// with different vocabularies are built here from data/zoo/base (chat tokens added with their
// own embedding rows, tokens beyond vocab_size, two ids swapped), merged with the amalgam CLI,
// and every row of the output embeddings is checked against the rows the rules of spec 4.7 pick,
// computed here in fp64 from the inputs.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/fs.h"
#include "core/half.h"
#include "eval/model_source.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "recipe/recipe.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using ::testing::HasSubstr;
using testing::run_amalgam;
using testing::TempDir;
using testing::zoo;

constexpr int64_t kVocab = 1024;  // data/zoo/base
constexpr int64_t kHidden = 128;
const char* const kEmbed = "model.embed_tokens.weight";
const char* const kHead = "lm_head.weight";

// A variant of zoo/base: `chat` tokens appended as special added tokens with new embedding rows,
// `unused` tokens appended beyond vocab_size (no rows), every embedding value shifted by
// perturb * ((row * 7 + col) % 5 - 2), optionally two ids swapped (vocab and rows) and lm_head
// left out (tied embeddings).
struct Variant {
  std::vector<std::string> chat;
  std::vector<std::string> unused;
  double perturb = 0;
  std::optional<std::pair<int64_t, int64_t>> swap;
  bool tied = false;
};

float new_row_value(int64_t row, int64_t col, bool head) {
  return static_cast<float>(0.05 * std::sin(0.37 * row + 0.11 * col + (head ? 1.0 : 0.0)));
}

void write_variant(const fs::path& dir, const Variant& v) {
  fs::create_directories(dir);
  const fs::path base = zoo("base");
  const int64_t rows = kVocab + static_cast<int64_t>(v.chat.size());
  io::Checkpoint in(base);
  std::vector<io::OutputTensorSpec> specs;
  for (const auto& name : in.names()) {
    if (v.tied && name == kHead) continue;
    io::TensorInfo info = in.info(name);
    if (name == kEmbed || name == kHead) info.shape[0] = rows;
    specs.push_back({name, info.dtype, info.shape});
  }
  io::SafetensorsWriter writer(dir, specs, uint64_t{1} << 40);
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string& name = specs[i].name;
    if (name != kEmbed && name != kHead) {
      const tensor::TensorView view = in.view(name);
      writer.write(i, view.data, view.nbytes());
      continue;
    }
    ASSERT_EQ(specs[i].dtype, tensor::DType::kBF16);
    const tensor::Tensor t = in.load_f32(name);
    std::vector<uint16_t> out(static_cast<size_t>(rows * kHidden));
    for (int64_t r = 0; r < rows; ++r) {
      int64_t from = r;
      if (v.swap && r == v.swap->first) from = v.swap->second;
      if (v.swap && r == v.swap->second) from = v.swap->first;
      for (int64_t c = 0; c < kHidden; ++c) {
        const float x = (r < kVocab ? t.data[static_cast<size_t>(from * kHidden + c)]
                                    : new_row_value(r, c, name == kHead)) +
                        static_cast<float>(v.perturb * ((r * 7 + c) % 5 - 2));
        out[static_cast<size_t>(r * kHidden + c)] = core::f32_to_bf16(x);
      }
    }
    writer.write(i, reinterpret_cast<const uint8_t*>(out.data()), out.size() * 2);
  }
  writer.finish();

  ordered_json config = ordered_json::parse(core::read_text_file(base / "config.json"));
  config["vocab_size"] = rows;
  config["tie_word_embeddings"] = v.tied;
  testing::write_file(dir / "config.json", config.dump(2));
  ordered_json tok = ordered_json::parse(core::read_text_file(base / "tokenizer.json"));
  int64_t id = rows;
  auto add = [&](const std::string& content, int64_t at) {
    tok["added_tokens"].push_back({{"id", at},
                                   {"content", content},
                                   {"single_word", false},
                                   {"lstrip", false},
                                   {"rstrip", false},
                                   {"normalized", false},
                                   {"special", true}});
  };
  for (size_t i = 0; i < v.chat.size(); ++i) add(v.chat[i], kVocab + static_cast<int64_t>(i));
  for (const auto& u : v.unused) add(u, id++);
  if (v.swap) {
    for (auto& [piece, value] : tok["model"]["vocab"].items()) {
      if (value == v.swap->first) {
        value = v.swap->second;
      } else if (value == v.swap->second) {
        value = v.swap->first;
      }
    }
  }
  testing::write_file(dir / "tokenizer.json", tok.dump(2));
  for (const char* f : {"tokenizer_config.json", "generation_config.json"}) {
    fs::copy_file(base / f, dir / f);
  }
}

using Rows = std::vector<std::vector<double>>;

Rows load_rows(const fs::path& model, const std::string& name) {
  io::Checkpoint c(model);
  const tensor::Tensor t = c.load_f32(name);
  Rows rows(static_cast<size_t>(t.shape[0]));
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].assign(t.data.begin() + static_cast<std::ptrdiff_t>(r * t.shape[1]),
                   t.data.begin() + static_cast<std::ptrdiff_t>((r + 1) * t.shape[1]));
  }
  return rows;
}

std::vector<double> mix(const std::vector<double>& a, double wa, const std::vector<double>& b,
                        double wb) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = wa * a[i] + wb * b[i];
  return out;
}

// Output rows equal `want` within one bf16 step (exactly when `exact`).
void expect_rows(const Rows& got, const Rows& want, const std::string& what, bool exact = false,
                 double abs_tol = 0) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t r = 0; r < want.size(); ++r) {
    ASSERT_EQ(got[r].size(), want[r].size()) << what;
    for (size_t c = 0; c < want[r].size(); ++c) {
      const double tol = exact ? 0.0 : std::max(std::fabs(want[r][c]) * 0x1p-7, abs_tol);
      if (std::fabs(got[r][c] - want[r][c]) <= tol) continue;
      if (bad++ < 3) {
        ADD_FAILURE() << what << " row " << r << " col " << c << ": got " << got[r][c] << " want "
                      << want[r][c];
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what;
}

class TokenizerMergeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_variant(path("chatml"), {.chat = {"<|im_start|>", "<|im_end|>"}, .perturb = 0.01});
    write_variant(path("chatml2"), {.chat = {"<|im_start|>", "<|im_end|>"}, .perturb = 0.03});
    write_variant(path("padded"),
                  {.unused = {"<UNUSED_0>", "<UNUSED_1>", "<UNUSED_2>", "<UNUSED_3>"}});
    write_variant(path("swapped"), {.perturb = 0.02, .swap = std::pair<int64_t, int64_t>{10, 20}});
    write_variant(path("base-tied"), {.tied = true});
    write_variant(path("base-dec"), {});
    testing::write_file(path("base-dec") / "tokenizer_config.json", R"({
  "added_tokens_decoder": {
    "0": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false,
          "single_word": false, "special": true}
  },
  "bos_token": "<s>",
  "eos_token": "</s>"
})");
    write_variant(path("chatml-tied"),
                  {.chat = {"<|im_start|>", "<|im_end|>"}, .perturb = 0.01, .tied = true});
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static fs::path path(const std::string& name) {
    return name == "base" ? zoo("base") : dir_->path() / name;
  }

  // Runs `amalgam merge` on `yaml` ($NAME replaced by a model path); returns the output.
  fs::path merge(const std::string& yaml, const std::string& name = "out") {
    std::string text = yaml;
    for (const char* m : {"base-tied", "base-dec", "chatml-tied", "chatml2", "chatml", "padded",
                          "swapped", "base"}) {
      const std::string key = std::string("$") + m;
      for (size_t at; (at = text.find(key)) != std::string::npos;) {
        text.replace(at, key.size(), path(m).string());
      }
    }
    const fs::path recipe = dir_->path() / (name + ".yaml");
    testing::write_file(recipe, text);
    const fs::path out = dir_->path() / name;
    auto r =
        run_amalgam(fmt::format("merge {} -o {} --quiet --force", recipe.string(), out.string()));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return out;
  }

  std::string merge_error(const std::string& yaml) {
    std::string text = yaml;
    for (const char* m : {"chatml", "base"}) {
      const std::string key = std::string("$") + m;
      for (size_t at; (at = text.find(key)) != std::string::npos;) {
        text.replace(at, key.size(), path(m).string());
      }
    }
    try {
      recipe::plan_from_yaml(text, "recipe.yaml", {});
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for:\n" << text;
    return "";
  }

  static nlohmann::json json_file(const fs::path& p) {
    return nlohmann::json::parse(core::read_text_file(p));
  }

  static TempDir* dir_;
};

TempDir* TokenizerMergeTest::dir_ = nullptr;

// Rows of `model` as its embedding has them, in the order of a union with base first:
// the base vocabulary, then the chat tokens.
std::vector<int32_t> encode(const fs::path& model, const std::string& text) {
  return tokenizer::Tokenizer::from_directory(model).encode(text, false);
}

TEST_F(TokenizerMergeTest, UnionAddsChatTokensWithTheirRows) {
  const fs::path out = merge(R"(merge_method: linear
models:
  - {model: $base, parameters: {weight: 0.5}}
  - {model: $chatml, parameters: {weight: 0.5}}
tokenizer_source: union
)");
  const nlohmann::json config = json_file(out / "config.json");
  EXPECT_EQ(config["vocab_size"], kVocab + 2);
  const nlohmann::json tok = json_file(out / "tokenizer.json");
  ASSERT_EQ(tok["added_tokens"].size(), 5u);  // <s>, </s>, <pad> and the two chat tokens
  EXPECT_EQ(tok["added_tokens"][3]["content"], "<|im_start|>");
  EXPECT_EQ(tok["added_tokens"][3]["id"], kVocab);
  EXPECT_EQ(tok["added_tokens"][4]["content"], "<|im_end|>");
  EXPECT_EQ(tok["added_tokens"][4]["special"], true);

  const Rows base = load_rows(path("base"), kEmbed), chat = load_rows(path("chatml"), kEmbed);
  const Rows got = load_rows(out, kEmbed);
  Rows shared, added;
  for (int64_t r = 0; r < kVocab; ++r) shared.push_back(mix(base[r], 0.5, chat[r], 0.5));
  // Only chatml has the chat tokens: both models take its rows, so the merge returns them.
  for (int64_t r = kVocab; r < kVocab + 2; ++r) added.push_back(chat[r]);
  expect_rows(Rows(got.begin(), got.begin() + kVocab), shared, "shared embed rows");
  expect_rows(Rows(got.begin() + kVocab, got.end()), added, "chat embed rows", true);
  const Rows head = load_rows(out, kHead), chat_head = load_rows(path("chatml"), kHead);
  expect_rows(Rows(head.begin() + kVocab, head.end()),
              Rows(chat_head.begin() + kVocab, chat_head.end()), "chat lm_head rows", true);

  // The output loads in amalgam and encodes the chat tokens to their new ids.
  auto inspect = run_amalgam("inspect " + out.string());
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  auto tokenize = run_amalgam(fmt::format(
      "tokenize {} -p '<|im_start|>user hi<|im_end|>' --json --no-special", out.string()));
  ASSERT_EQ(tokenize.exit_code, 0) << tokenize.output;
  const auto ids = nlohmann::json::parse(tokenize.output.substr(tokenize.output.find('{')))["ids"];
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), kVocab);
  EXPECT_EQ(ids.back(), kVocab + 1);
  EXPECT_EQ(encode(out, "user hi"), encode(path("base"), "user hi"));

  // The same recipe merged in memory (amalgam eval / evolve) has the built vocabulary too.
  eval::ModelLoader loader(2);
  const eval::LoadedModel m = loader.load(dir_->path() / "out.yaml");
  EXPECT_EQ(m.tokenizer->encode("<|im_end|>", false), std::vector<int32_t>{kVocab + 1});
  EXPECT_EQ(m.tokenizer->vocab_size(), kVocab + 2);
}

TEST_F(TokenizerMergeTest, TokenizerConfigListsTheNewAddedTokens) {
  const fs::path out = merge(R"(merge_method: linear
base_model: $base-dec
models:
  - {model: $base-dec, parameters: {weight: 0.5}}
  - {model: $chatml, parameters: {weight: 0.5}}
tokenizer_source: union
)");
  const nlohmann::json config = json_file(out / "tokenizer_config.json");
  EXPECT_EQ(config["bos_token"], "<s>");
  const nlohmann::json& decoder = config["added_tokens_decoder"];
  EXPECT_EQ(decoder.size(), 5u);
  EXPECT_EQ(decoder["1024"]["content"], "<|im_start|>");
  EXPECT_EQ(decoder["1025"]["special"], true);
  EXPECT_EQ(tokenizer::Tokenizer::from_directory(out).bos_id(), 0);
}

TEST_F(TokenizerMergeTest, TokensBeyondVocabSizeAreLeftOut) {
  // padded's tokenizer lists four tokens without embedding rows: the union skips them, and as
  // the base they are stripped from its tokenizer.
  const fs::path out = merge(R"(merge_method: linear
base_model: $padded
models:
  - {model: $padded, parameters: {weight: 0.5}}
  - {model: $chatml, parameters: {weight: 0.5}}
tokenizer_source: union
)");
  const nlohmann::json tok = json_file(out / "tokenizer.json");
  EXPECT_EQ(tok["added_tokens"].size(), 5u);
  EXPECT_EQ(tok.dump().find("UNUSED"), std::string::npos);
  EXPECT_EQ(json_file(out / "config.json")["vocab_size"], kVocab + 2);
  EXPECT_EQ(tokenizer::Tokenizer::from_directory(out).vocab_size(), kVocab + 2);

  const fs::path only_base = merge(R"(merge_method: linear
base_model: $padded
models:
  - {model: $padded, parameters: {weight: 0.5}}
  - {model: $chatml, parameters: {weight: 0.5}}
tokenizer_source: base
)",
                                   "out-base");
  EXPECT_EQ(json_file(only_base / "tokenizer.json")["added_tokens"].size(), 3u);
  EXPECT_EQ(json_file(only_base / "config.json")["vocab_size"], kVocab);
  const Rows got = load_rows(only_base, kEmbed);
  const Rows padded = load_rows(path("padded"), kEmbed), chat = load_rows(path("chatml"), kEmbed);
  Rows want;
  for (int64_t r = 0; r < kVocab; ++r) want.push_back(mix(padded[r], 0.5, chat[r], 0.5));
  expect_rows(got, want, "base vocabulary rows");
}

TEST_F(TokenizerMergeTest, ModelPathAsSourceInASlicesRecipe) {
  for (const char* spelling : {"$chatml", "model:$chatml", "{model: $chatml}"}) {
    const fs::path out = merge(fmt::format(R"(merge_method: linear
slices:
  - sources:
      - {{model: $base, layer_range: [0, 4], parameters: {{weight: 1.0}}}}
      - {{model: $chatml, layer_range: [0, 4], parameters: {{weight: 1.0}}}}
tokenizer_source: {}
)",
                                           spelling));
    EXPECT_EQ(json_file(out / "config.json")["vocab_size"], kVocab + 2) << spelling;
    EXPECT_EQ(json_file(out / "tokenizer.json"), json_file(path("chatml") / "tokenizer.json"))
        << spelling;
    EXPECT_EQ(io::Checkpoint(out).info(kEmbed).shape, (tensor::Shape{kVocab + 2, kHidden}));
  }
}

TEST_F(TokenizerMergeTest, ForcedModelTokenAndZeroSources) {
  const fs::path out = merge(R"(merge_method: linear
models:
  - {model: $base, parameters: {weight: 0.25}}
  - {model: $chatml, parameters: {weight: 0.75}}
tokenizer:
  source: union
  tokens:
    <s>: {source: $chatml, force: true}
    <|im_start|>: {source: {kind: model_token, model: $base, token_id: 5}}
    <|im_end|>: {source: {kind: model_token, model: $base, token: "</s>"}}
    <pad>: {source: {kind: zero}, force: true}
    <|new|>: {}
)");
  const Rows base = load_rows(path("base"), kEmbed), chat = load_rows(path("chatml"), kEmbed);
  const Rows got = load_rows(out, kEmbed);
  ASSERT_EQ(got.size(), static_cast<size_t>(kVocab + 3));  // <|new|> was added
  expect_rows({got[0]}, {chat[0]}, "forced <s>", true);
  expect_rows({got[2]}, {std::vector<double>(kHidden, 0.0)}, "forced zero <pad>", true);
  expect_rows({got[1]}, {mix(base[1], 0.25, chat[1], 0.75)}, "</s>");
  // base lacks the chat tokens: its row comes from the configured source.
  expect_rows({got[kVocab]}, {mix(base[5], 0.25, chat[kVocab], 0.75)}, "<|im_start|> by id");
  expect_rows({got[kVocab + 1]}, {mix(base[1], 0.25, chat[kVocab + 1], 0.75)},
              "<|im_end|> by token");
  // A token no model has: zeros, and a tokenizer that knows it.
  expect_rows({got[kVocab + 2]}, {std::vector<double>(kHidden, 0.0)}, "<|new|>", true);
  EXPECT_EQ(encode(out, "<|new|>"), std::vector<int32_t>{static_cast<int32_t>(kVocab + 2)});
}

TEST_F(TokenizerMergeTest, MissingRowsComeFromTheBaseElseTheMean) {
  const std::string models = R"(merge_method: linear
models:
  - {model: $base, parameters: {weight: 1}}
  - {model: $chatml, parameters: {weight: 1}}
  - {model: $chatml2, parameters: {weight: 1}}
tokenizer_source: union
)";
  const Rows c1 = load_rows(path("chatml"), kEmbed), c2 = load_rows(path("chatml2"), kEmbed);
  // base lacks the chat tokens; two models have them and the base model is not one: the mean.
  const Rows mean = load_rows(merge(models, "out-mean"), kEmbed);
  for (int64_t r = kVocab; r < kVocab + 2; ++r) {
    expect_rows({mean[r]}, {mix(c1[r], 0.5, c2[r], 0.5)}, fmt::format("mean row {}", r));
  }
  // With chatml as base_model, base takes chatml's rows.
  const Rows from_base =
      load_rows(merge(models + "base_model: $chatml\n", "out-from-base"), kEmbed);
  for (int64_t r = kVocab; r < kVocab + 2; ++r) {
    expect_rows({from_base[r]}, {mix(c1[r], 2.0 / 3, c2[r], 1.0 / 3)},
                fmt::format("base row {}", r));
  }
}

TEST_F(TokenizerMergeTest, PadToMultipleOfFillsTheMeanRow) {
  const fs::path out = merge(R"(merge_method: linear
models:
  - {model: $base, parameters: {weight: 0.5}}
  - {model: $chatml, parameters: {weight: 0.5}}
tokenizer:
  source: union
  pad_to_multiple_of: 64
)");
  EXPECT_EQ(json_file(out / "config.json")["vocab_size"], 1088);
  EXPECT_EQ(tokenizer::Tokenizer::from_directory(out).vocab_size(), kVocab + 2);
  const Rows got = load_rows(out, kEmbed);
  ASSERT_EQ(got.size(), 1088u);
  const Rows base = load_rows(path("base"), kEmbed), chat = load_rows(path("chatml"), kEmbed);
  // Each model's padding row is the mean of its mapped rows (base takes chatml's chat rows).
  std::vector<double> want(kHidden, 0.0);
  for (int64_t r = 0; r < kVocab + 2; ++r) {
    const auto& b = r < kVocab ? base[r] : chat[r];
    for (int64_t c = 0; c < kHidden; ++c) want[c] += (0.5 * b[c] + 0.5 * chat[r][c]) / (kVocab + 2);
  }
  expect_rows(Rows(got.begin() + kVocab + 2, got.end()), Rows(1088 - kVocab - 2, want),
              "padding rows");
}

TEST_F(TokenizerMergeTest, RowsFollowTokensWhenIdsDiffer) {
  // swapped has the tokens of ids 10 and 20 exchanged (and their rows): each output row merges
  // the rows of the same token.
  const fs::path out = merge(R"(merge_method: linear
base_model: $base
models:
  - {model: $base, parameters: {weight: 0.5}}
  - {model: $swapped, parameters: {weight: 0.5}}
tokenizer_source: union
)");
  const Rows base = load_rows(path("base"), kEmbed), sw = load_rows(path("swapped"), kEmbed);
  Rows want;
  for (int64_t r = 0; r < kVocab; ++r) {
    const int64_t s = r == 10 ? 20 : r == 20 ? 10 : r;
    want.push_back(mix(base[r], 0.5, sw[s], 0.5));
  }
  expect_rows(load_rows(out, kEmbed), want, "embed rows");
  EXPECT_EQ(core::read_text_file(out / "tokenizer.json"),
            core::read_text_file(path("base") / "tokenizer.json"));
}

TEST_F(TokenizerMergeTest, TaskArithmeticSeesMappedRows) {
  // The base takes chatml's rows for the chat tokens, so their task vector is zero.
  const fs::path out = merge(R"(merge_method: task_arithmetic
base_model: $base
models:
  - {model: $chatml, parameters: {weight: 1.0}}
tokenizer_source: union
dtype: float32
)");
  // fp32 arithmetic: base + (chatml - base) is chatml within the rounding of base's values.
  expect_rows(load_rows(out, kHead), load_rows(path("chatml"), kHead), "lm_head", false, 1e-6);
}

TEST_F(TokenizerMergeTest, TiedEmbeddings) {
  const fs::path out = merge(R"(merge_method: linear
models:
  - {model: $base-tied, parameters: {weight: 0.5}}
  - {model: $chatml-tied, parameters: {weight: 0.5}}
tokenizer_source: union
)");
  io::Checkpoint c(out);
  EXPECT_FALSE(c.has(kHead));
  const Rows base = load_rows(path("base-tied"), kEmbed);
  const Rows chat = load_rows(path("chatml-tied"), kEmbed);
  Rows want;
  for (int64_t r = 0; r < kVocab; ++r) want.push_back(mix(base[r], 0.5, chat[r], 0.5));
  want.push_back(chat[kVocab]);
  want.push_back(chat[kVocab + 1]);
  expect_rows(load_rows(out, kEmbed), want, "tied embed rows");
}

TEST_F(TokenizerMergeTest, SameVocabularyLeavesEmbeddingsAndFilesAlone) {
  const fs::path out = merge(R"(merge_method: linear
base_model: $base
models:
  - {model: $base, parameters: {weight: 0.5}}
  - {model: $padded, parameters: {weight: 0.5}}
tokenizer_source: base
)");
  EXPECT_EQ(core::read_text_file(out / "tokenizer.json"),
            core::read_text_file(path("base") / "tokenizer.json"));
  EXPECT_EQ(json_file(out / "config.json")["vocab_size"], kVocab);
  EXPECT_EQ(io::Checkpoint(out).info(kEmbed).shape, (tensor::Shape{kVocab, kHidden}));
}

TEST_F(TokenizerMergeTest, RecipeErrors) {
  const std::string models =
      "merge_method: linear\nmodels:\n  - {model: $base, parameters: {weight: 1}}\n"
      "  - {model: $chatml, parameters: {weight: 1}}\n";
  EXPECT_THAT(merge_error(models + "tokenizer_source: union\ntokenizer: {source: base}\n"),
              HasSubstr("not both"));
  EXPECT_THAT(merge_error(models + "tokenizer: {source: union, tokenz: {}}\n"),
              HasSubstr("unknown key 'tokenz' in tokenizer"));
  EXPECT_THAT(merge_error(models + "tokenizer: {pad_to_multiple_of: 0}\n"),
              HasSubstr("positive integer"));
  EXPECT_THAT(merge_error(models + "tokenizer:\n  tokens:\n    <x>: {source: /no/such/model}\n"),
              HasSubstr("not one of the recipe's models"));
  EXPECT_THAT(merge_error(models + "tokenizer:\n  tokens:\n    <x>: {source: {kind: model_token, "
                                   "model: $base, token: a, token_id: 1}}\n"),
              HasSubstr("exactly one of 'token' and 'token_id'"));
  EXPECT_THAT(merge_error(models + "tokenizer:\n  tokens:\n    <x>: {source: {kind: mean}}\n"),
              HasSubstr("use model_token or zero"));
  EXPECT_THAT(merge_error(models + "tokenizer:\n  tokens:\n    <|im_start|>: {source: $base}\n"),
              HasSubstr("has no token '<|im_start|>'"));
  EXPECT_THAT(
      merge_error(models + "tokenizer:\n  tokens:\n    <|im_start|>: {source: {kind: model_token, "
                           "model: $base, token_id: 5000}}\n"),
      HasSubstr("row 5000 of model"));
  EXPECT_THAT(merge_error(models + "tokenizer_source: model:/no/such/model\n"),
              HasSubstr("not one of the recipe's models"));
}

}  // namespace
}  // namespace amalgam
