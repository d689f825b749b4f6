// GGUF: writer/reader round trip and defensive reading, the HF -> GGUF conversion (names, q/k
// permutation, stacked experts, metadata, tokenizer), and the engine running exported files with
// the safetensors logits.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "gguf/convert.h"
#include "gguf/export.h"
#include "gguf/import.h"
#include "gguf/reader.h"
#include "gguf/tokenizer_meta.h"
#include "gguf/writer.h"
#include "infer/model.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "synthetic_checkpoint.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::zoo;

std::vector<uint8_t> file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void put_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

TEST(GgufFile, WriterReaderRoundTrip) {
  TempDir dir;
  const fs::path path = dir / "t.gguf";
  std::vector<float> a(2 * 64), b(32);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.25f * static_cast<float>(i) - 3.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i);
  {
    gguf::GgufWriter w(path, false);
    w.set("general.architecture", gguf::Value::str("llama"));
    w.set("x.u32", gguf::Value::u32(7));
    w.set("x.i32", gguf::Value::i32(-5));
    w.set("x.f32", gguf::Value::f32(0.5f));
    w.set("x.bool", gguf::Value::boolean(true));
    w.set("x.strs", gguf::Value::string_array({"a", "", "ccc"}));
    w.set("x.nums", gguf::Value::number_array(gguf::ValueType::kI32, {1, -2, 3}));
    const size_t ia = w.add_tensor("a", {2, 64}, gguf::GgmlType::kF32);
    const size_t ib = w.add_tensor("b", {32}, gguf::GgmlType::kF32);
    w.begin();
    w.write(ib, 0, b.data(), b.size() * 4);  // any order
    w.write(ia, 64 * 4, a.data() + 64, 64 * 4);
    w.write(ia, 0, a.data(), 64 * 4);
    EXPECT_FALSE(fs::exists(path));  // staged until commit
    w.commit();
  }
  gguf::GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.require("general.architecture").s, "llama");
  EXPECT_EQ(f.require("x.u32").as_int("x.u32"), 7);
  EXPECT_EQ(f.require("x.i32").as_int("x.i32"), -5);
  EXPECT_EQ(f.require("x.f32").f, 0.5);
  EXPECT_EQ(f.require("x.bool").u, 1u);
  EXPECT_EQ(f.require("x.strs").strings, (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f.require("x.nums").numbers, (std::vector<double>{1, -2, 3}));
  EXPECT_EQ(f.require("general.alignment").as_int("general.alignment"), 32);
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto* ta = f.tensor("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (tensor::Shape{2, 64}));
  EXPECT_EQ(ta->offset % 32, 0u);
  EXPECT_EQ(std::memcmp(ta->data, a.data(), a.size() * 4), 0);
  EXPECT_EQ(std::memcmp(f.tensor("b")->data, b.data(), b.size() * 4), 0);
  EXPECT_EQ((f.data_offset() + f.tensor("b")->offset) % 32, 0u);
}

TEST(GgufFile, WriterLeavesNothingWithoutCommit) {
  TempDir dir;
  {
    gguf::GgufWriter w(dir / "t.gguf", false);
    w.add_tensor("a", {32}, gguf::GgmlType::kF32);
    w.begin();
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// A hand-made header (independent of GgufWriter): one key, one tensor.
std::vector<uint8_t> tiny_file(uint64_t n_kv, uint64_t n_tensors, uint32_t key_type,
                               uint64_t str_len, uint64_t tensor_offset, uint64_t dim0) {
  std::vector<uint8_t> b;
  auto pod = [&](auto v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(v));
  };
  auto str = [&](const std::string& s, uint64_t len) {
    pod(len);
    b.insert(b.end(), s.begin(), s.end());
  };
  pod(uint32_t{0x46554747});
  pod(uint32_t{3});
  pod(n_tensors);
  pod(n_kv);
  str("k", 1);
  pod(key_type);
  str("hello", str_len);  // a string value
  str("t", 1);
  pod(uint32_t{1});
  pod(dim0);
  pod(uint32_t{0});  // F32
  pod(tensor_offset);
  b.resize((b.size() + 31) / 32 * 32, 0);
  b.resize(b.size() + 128, 0);  // 32 floats of data
  return b;
}

TEST(GgufFile, RejectsCorruptHeaders) {
  TempDir dir;
  const fs::path p = dir / "bad.gguf";
  put_bytes(p, tiny_file(1, 1, 8, 5, 0, 32));
  EXPECT_NO_THROW(gguf::GgufFile{p});
  struct Case {
    std::vector<uint8_t> bytes;
    std::string error;
  };
  std::vector<Case> cases = {
      {tiny_file(1, 1, 8, 1u << 30, 0, 32), "truncated"},        // string length
      {tiny_file(1u << 30, 1, 8, 5, 0, 32), "metadata count"},   // count beyond the file
      {tiny_file(1, 1, 99, 5, 0, 32), "invalid value type 99"},  // value type
      {tiny_file(1, 1, 8, 5, 4, 32), "not aligned"},             // tensor offset
      {tiny_file(1, 1, 8, 5, 0, 64), "extends past the end"},    // tensor size
      {tiny_file(1, 1, 8, 5, 0, 0), "dimension 0"},              // empty dimension
  };
  auto bad_magic = tiny_file(1, 1, 8, 5, 0, 32);
  bad_magic[0] = 'X';
  cases.push_back({bad_magic, "bad magic"});
  auto cut = tiny_file(1, 1, 8, 5, 0, 32);
  cut.resize(30);
  cases.push_back({cut, "exceeds the file"});
  cut.resize(20);
  cases.push_back({cut, "truncated"});
  for (const auto& c : cases) {
    put_bytes(p, c.bytes);
    testing::expect_error([&] { gguf::GgufFile f(p); }, c.error);
  }
  // Duplicate keys: two kv with the same name.
  TempDir d2;
  {
    gguf::GgufWriter w(d2 / "d.gguf", false);
    w.set("a.key", gguf::Value::u32(1));
    w.set("b.key", gguf::Value::u32(2));
    w.begin();
    w.commit();
  }
  auto bytes = file_bytes(d2 / "d.gguf");
  const std::string needle = "b.key";
  auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  ASSERT_NE(it, bytes.end());
  *it = 'a';
  put_bytes(p, bytes);
  testing::expect_error([&] { gguf::GgufFile f(p); }, "duplicate metadata key 'a.key'");
}

// Spec B.0: in each head, HF row h * d/2 + r becomes row 2r + h.
TEST(GgufConvert, PermutationMatchesSpecAndInverts) {
  for (int64_t d : {2, 4, 32, 64}) {
    for (int64_t j = 0; j < 3 * d; ++j) {
      const int64_t head = j / d, h = (j % d) / (d / 2), r = (j % d) % (d / 2);
      EXPECT_EQ(gguf::permuted_dest_row(j, d), head * d + 2 * r + h);
      EXPECT_EQ(gguf::permuted_source_row(gguf::permuted_dest_row(j, d), d), j);
    }
  }
}

// The zoo tokenizer (Digits(individual) then GPT-2 ByteLevel) is llama.cpp's "refact" rule;
// an unknown rule is refused unless a name is given.
TEST(GgufTokenizer, PreTokenizerNameRule) {
  const nlohmann::json zoo_tok =
      nlohmann::json::parse(testing::read_file(zoo("base") / "tokenizer.json"));
  EXPECT_EQ(gguf::pre_tokenizer_name(zoo_tok), "refact");
  nlohmann::json other = zoo_tok;
  other["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_EQ(gguf::pre_tokenizer_name(other), std::nullopt);
  nlohmann::json gpt2 = zoo_tok;
  gpt2["pre_tokenizer"] = zoo_tok["pre_tokenizer"]["pretokenizers"][1];
  EXPECT_EQ(gguf::pre_tokenizer_name(gpt2), "gpt-2");

  TempDir dir;
  fs::copy(zoo("base"), dir / "m");
  testing::write_file(dir / "m" / "tokenizer.json", other.dump());
  const io::ModelConfig c = io::read_model_config(dir / "m");
  testing::expect_error([&] { gguf::tokenizer_metadata(dir / "m", c, std::nullopt); },
                        "--gguf-pre");
  const auto m = gguf::tokenizer_metadata(dir / "m", c, std::string("gpt-2"));
  EXPECT_EQ(gguf::find(m, "tokenizer.ggml.pre")->s, "gpt-2");
  // The CLI refuses too and leaves no file behind.
  auto r = testing::run_amalgam(
      fmt::format("export-gguf {} -o {}", (dir / "m").string(), (dir / "o.gguf").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--gguf-pre"), std::string::npos) << r.output;
  for (const auto& e : fs::directory_iterator(dir.path())) EXPECT_EQ(e.path().filename(), "m");
}

// add_bos/add_eos are always written, as the tokenizer behaves: llama.cpp's own defaults (a BOS
// for llama-bpe and SentencePiece files) apply only when the keys are absent.
TEST(GgufTokenizer, AddBosWrittenAsTheTokenizerBehaves) {
  nlohmann::json tok = nlohmann::json::parse(testing::read_file(zoo("base") / "tokenizer.json"));
  TempDir dir;
  fs::copy(zoo("base"), dir / "m");
  const io::ModelConfig c = io::read_model_config(dir / "m");
  auto flags = [&](const nlohmann::json& t, const std::string& config) {
    testing::write_file(dir / "m" / "tokenizer.json", t.dump());
    testing::write_file(dir / "m" / "tokenizer_config.json", config);
    const auto m = gguf::tokenizer_metadata(dir / "m", c, std::nullopt);
    auto flag = [&](const char* key) -> uint64_t {
      const gguf::Value* v = gguf::find(m, key);
      return v ? v->u : 99;  // 99: not written
    };
    return std::pair<uint64_t, uint64_t>{flag("tokenizer.ggml.add_bos_token"),
                                         flag("tokenizer.ggml.add_eos_token")};
  };
  // The zoo's template prepends <s>.
  EXPECT_EQ(flags(tok, "{}"), (std::pair<uint64_t, uint64_t>{1, 0}));
  // The same template inside a Sequence (Llama 3.1's layout).
  nlohmann::json seq = tok;
  seq["post_processor"] = {{"type", "Sequence"},
                           {"processors", {{{"type", "ByteLevel"}}, tok["post_processor"]}}};
  EXPECT_EQ(flags(seq, "{}"), (std::pair<uint64_t, uint64_t>{1, 0}));
  // No template (npm's Llama 3 tokenizer.json): nothing is added, and the file says so.
  nlohmann::json none = tok;
  none["post_processor"] = {{"type", "ByteLevel"}};
  EXPECT_EQ(flags(none, "{}"), (std::pair<uint64_t, uint64_t>{0, 0}));
  // tokenizer_config.json's flags come first, as in llama.cpp's converter.
  EXPECT_EQ(flags(tok, R"({"add_bos_token": false, "add_eos_token": true})"),
            (std::pair<uint64_t, uint64_t>{0, 1}));
}

// SentencePiece-style files: llama.cpp merges the pair whose joined token scores highest, so a
// token's score is minus the rank of the tokenizer.json merge that makes it; tokens no merge
// makes score below every merge. Here "▁▁" has a smaller id than "▁S" but a later merge.
TEST(GgufTokenizer, SentencePieceScoresFollowMergeRanks) {
  const std::string u = "\xe2\x96\x81";  // ▁
  const nlohmann::json vocab = {{"<unk>", 0}, {"<s>", 1},   {"</s>", 2}, {"<0x41>", 3},
                                {u, 4},       {"S", 5},     {u + u, 6},  {u + "S", 7},
                                {"o", 8},     {u + "So", 9}};
  const nlohmann::json tok = {{"model",
                               {{"type", "BPE"},
                                {"byte_fallback", true},
                                {"unk_token", "<unk>"},
                                {"vocab", vocab},
                                {"merges", {u + " S", u + "S o", u + " " + u}}}},
                              {"added_tokens",
                               {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                {{"id", 1}, {"content", "<s>"}, {"special", true}},
                                {{"id", 2}, {"content", "</s>"}, {"special", true}}}}};
  TempDir dir;
  fs::copy(zoo("base"), dir / "m");
  testing::write_file(dir / "m" / "tokenizer.json", tok.dump());
  testing::write_file(dir / "m" / "tokenizer_config.json", "{}");
  io::ModelConfig c = io::read_model_config(dir / "m");
  c.vocab_size = 10;
  const auto m = gguf::tokenizer_metadata(dir / "m", c, std::nullopt);
  EXPECT_EQ(gguf::find(m, "tokenizer.ggml.model")->s, "llama");
  const auto& scores = gguf::find(m, "tokenizer.ggml.scores")->numbers;
  ASSERT_EQ(scores.size(), 10u);
  EXPECT_EQ(scores[7], -0.0);        // ▁S: merge 0
  EXPECT_EQ(scores[9], -1.0);        // ▁So: merge 1
  EXPECT_EQ(scores[6], -2.0);        // ▁▁: merge 2
  EXPECT_EQ(scores[4], -(3.0 + 4));  // ▁: no merge makes it
  EXPECT_EQ(scores[8], -(3.0 + 8));
  EXPECT_GT(scores[7], scores[6]);
}

std::vector<float> logits(const infer::Model& m, const std::vector<int32_t>& ids) {
  infer::Batch b;
  b.add_sequence(ids, 0, 0, true);
  auto cache = m.new_cache();
  return m.forward(b, cache).logits;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

const std::vector<int32_t> kIds = {0, 17, 301, 5, 999, 42, 7, 64, 128, 3, 250, 11};

TEST(GgufZoo, F32ExportRunsWithSafetensorsLogits) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  for (const std::string name : {"base", "base-large"}) {
    const fs::path out = dir / (name + ".gguf");
    gguf::ExportOptions o;
    o.type = *gguf::parse_export_type("f32");
    gguf::export_gguf(zoo(name), out, o);
    // q rows are permuted in the file; undone they are the checkpoint's rows.
    gguf::GgufFile f(out);
    io::Checkpoint ck(zoo(name));
    const tensor::Tensor q = ck.load_f32("model.layers.1.self_attn.q_proj.weight");
    const auto* gq = f.tensor("blk.1.attn_q.weight");
    ASSERT_NE(gq, nullptr);
    const int64_t cols = q.shape[1], d = 32;
    const float* g = reinterpret_cast<const float*>(gq->data);
    for (int64_t row = 0; row < q.shape[0]; ++row) {
      const int64_t head = row / d, h = (row % d) / (d / 2), r = (row % d) % (d / 2);
      const int64_t grow = head * d + 2 * r + h;
      for (int64_t c = 0; c < cols; ++c) {
        ASSERT_EQ(g[grow * cols + c], q.data[row * cols + c]) << row;
      }
    }
    auto a = infer::load_model(zoo(name));
    auto b = infer::load_model(out);
    const float diff = max_diff(logits(*a, kIds), logits(*b, kIds));
    RecordProperty(name + "_max_logit_diff", std::to_string(diff));
    EXPECT_LT(diff, 1e-4f) << name;
    // The tokenizer rebuilt from the file encodes as tokenizer.json does.
    const auto json = gguf::tokenizer_json_from_gguf(f);
    ASSERT_TRUE(json.has_value());
    auto t1 = tokenizer::Tokenizer::from_directory(zoo(name));
    auto t2 = tokenizer::Tokenizer::from_json(*json, "gguf");
    const std::string text = "def f(x):\n    return x + 12345  # it's <s> done\n\n  ok";
    EXPECT_EQ(t1.encode(text), t2.encode(text));
  }
}

// Random-weight tiny models of every architecture and expert layout (the zoo is Llama only).
void write_random_model(const fs::path& dir, const testing::TinyModel& m, uint32_t seed) {
  fs::create_directories(dir);
  auto config = testing::tiny_config(m);
  testing::write_file(dir / "config.json", config.dump(2));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(zoo("base") / f, dir / f);
  }
  std::vector<io::OutputTensorSpec> specs;
  for (const auto& t : testing::tiny_tensors(m)) {
    specs.push_back({t.name, tensor::DType::kF32, t.shape});
  }
  io::SafetensorsWriter w(dir, specs, uint64_t{1} << 40);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<float> v(static_cast<size_t>(tensor::numel(specs[i].shape)));
    const bool norm = specs[i].name.find("norm") != std::string::npos;
    for (auto& x : v) x = norm ? 1.0f + 0.1f * normal(rng) : normal(rng);
    w.write(i, reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
  }
  w.finish();
}

TEST(GgufZoo, EveryArchitectureRoundTrips) {
  TempDir dir;
  struct Case {
    std::string label;
    testing::TinyModel m;
  };
  std::vector<Case> cases;
  cases.push_back({"llama", {}});
  cases.back().m.vocab = 1024;
  cases.push_back({"qwen2", cases[0].m});
  cases.back().m.architecture = "Qwen2ForCausalLM";
  cases.back().m.qkv_bias = true;
  cases.back().m.tied = true;
  cases.push_back({"mixtral_fused", cases[0].m});
  cases.back().m.architecture = "MixtralForCausalLM";
  cases.back().m.experts = 4;
  cases.push_back({"mixtral_classic", cases.back().m});
  cases.back().m.fused_experts = false;
  cases.push_back({"llama_bias", cases[0].m});
  cases.back().m.qkv_bias = true;  // permuted biases
  uint32_t seed = 1;
  for (const auto& c : cases) {
    const fs::path src = dir / c.label;
    write_random_model(src, c.m, seed++);
    gguf::ExportOptions o;
    o.type = *gguf::parse_export_type("f32");
    const fs::path out = dir / (c.label + ".gguf");
    gguf::export_gguf(src, out, o);
    gguf::GgufFile f(out);
    if (c.m.experts > 0) {
      const auto* g = f.tensor("blk.0.ffn_gate_exps.weight");
      ASSERT_NE(g, nullptr) << c.label;
      EXPECT_EQ(g->shape, (tensor::Shape{4, 16, 8}));
      EXPECT_NE(f.tensor("blk.1.ffn_gate_inp.weight"), nullptr);
    }
    EXPECT_EQ(f.tensor("output.weight") == nullptr, c.m.tied) << c.label;
    auto a = infer::load_model(src);
    auto b = infer::load_model(out);
    std::vector<int32_t> ids = {1, 5, 9, 200, 31, 7, 1000, 3};
    EXPECT_LT(max_diff(logits(*a, ids), logits(*b, ids)), 1e-4f) << c.label;
  }
}

TEST(GgufZoo, QuantisedExportsScoreCloseToF32) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  std::map<std::string, float> diffs;
  auto ref = infer::load_model(zoo("base"));
  const auto base_logits = logits(*ref, kIds);
  for (const std::string t : {"f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"}) {
    gguf::ExportOptions o;
    o.type = *gguf::parse_export_type(t);
    const fs::path out = dir / (t + ".gguf");
    gguf::export_gguf(zoo("base"), out, o);
    auto m = infer::load_model(out);
    diffs[t] = max_diff(base_logits, logits(*m, kIds));
    RecordProperty(t + "_max_logit_diff", std::to_string(diffs[t]));
  }
  EXPECT_LT(diffs["f16"], 2e-2f);  // the zoo's weights are bf16: f16 holds them nearly exactly
  EXPECT_EQ(diffs["bf16"], 0.0f);  // bf16 weights written as bf16 are exact
  // Logits of the zoo span about +-20; figures measured: q8_0 0.32, q4_0 3.6.
  EXPECT_LT(diffs["q8_0"], 0.6f);
  EXPECT_LT(diffs["q4_0"], 6.0f);
  EXPECT_GT(diffs["q4_0"], diffs["q8_0"]);
}

}  // namespace
}  // namespace amalgam

namespace amalgam {
namespace {

// merge --gguf writes the same tensors as export-gguf of the merged checkpoint; --gguf-only
// writes the GGUF file alone.
TEST(GgufMerge, SecondSinkEqualsExportOfTheMerge) {
  TempDir dir;
  testing::write_file(dir / "r.yaml",
                      fmt::format("merge_method: linear\nmodels:\n"
                                  "  - model: {}\n    parameters: {{weight: 0.5}}\n"
                                  "  - model: {}\n    parameters: {{weight: 0.5}}\n"
                                  "dtype: float32\n",
                                  zoo("add-expert").string(), zoo("rev-expert").string()));
  const std::string d = dir.path().string();
  auto r = testing::run_amalgam(
      fmt::format("-q merge {0}/r.yaml -o {0}/m --gguf {0}/m.gguf --type q4_k_m", d));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = testing::run_amalgam(fmt::format("-q export-gguf {0}/m -o {0}/e.gguf --type q4_k_m", d));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  gguf::GgufFile a(dir / "m.gguf"), b(dir / "e.gguf");
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& t : a.tensors()) {
    const auto* u = b.tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(t.type, u->type) << t.name;
    ASSERT_EQ(t.bytes, u->bytes) << t.name;
    EXPECT_EQ(std::memcmp(t.data, u->data, t.bytes), 0) << t.name;
  }
  EXPECT_EQ(a.require("tokenizer.ggml.pre").s, "refact");

  r = testing::run_amalgam(fmt::format(
      "-q merge {0}/r.yaml -o {0}/none --gguf-only --gguf {0}/only.gguf --type f32", d));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(dir / "none"));
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path())) names.insert(e.path().filename());
  EXPECT_EQ(names, (std::set<std::string>{"r.yaml", "m", "m.gguf", "e.gguf", "only.gguf"}));
  auto merged = infer::load_model(dir / "m");
  auto only = infer::load_model(dir / "only.gguf");
  EXPECT_LT(max_diff(logits(*merged, kIds), logits(*only, kIds)), 1e-4f);
}

}  // namespace
}  // namespace amalgam

namespace amalgam {
namespace {

// Every role's HF name parses back to that role, layer and expert; GGUF names are unique.
TEST(ArchRoles, NamesRoundTripAndGgufNamesAreUnique) {
  std::set<std::string> gguf_names;
  for (const auto& r : arch::tensor_roles()) {
    const int64_t layer = r.per_layer ? 17 : -1;
    const bool expert = std::string_view(r.hf).find("${expert_index}") != std::string_view::npos;
    const auto m = arch::match_hf_name(arch::hf_name(r.role, layer, expert ? 5 : -1));
    ASSERT_TRUE(m.has_value()) << r.hf;
    EXPECT_EQ(m->role, r.role) << r.hf;
    EXPECT_EQ(m->layer, layer) << r.hf;
    EXPECT_EQ(m->expert, expert ? 5 : -1) << r.hf;
    if (!r.gguf.empty() && r.role != arch::Role::kFusedRouter &&
        r.role != arch::Role::kFusedExpertsDown) {
      EXPECT_TRUE(gguf_names.insert(std::string(r.gguf)).second) << r.gguf;
    }
  }
  EXPECT_FALSE(arch::match_hf_name("model.layers.x.self_attn.q_proj.weight").has_value());
  EXPECT_EQ(arch::gguf_name(arch::Role::kAttnK, 3), "blk.3.attn_k.weight");
  EXPECT_EQ(arch::find_arch_spec("", "qwen2")->gguf_arch, "qwen2");
  EXPECT_FALSE(arch::find_arch_spec("Qwen2ForCausalLM", "")->permute_qk);
  EXPECT_TRUE(arch::find_arch_spec("MixtralForCausalLM", "")->permute_qk);
}

}  // namespace
}  // namespace amalgam
