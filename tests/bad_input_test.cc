// The bad-input suite (docs/reliability.md): every command fed broken files, contradicting
// configs, hostile recipes and wrong options. Each case asserts a non-zero exit that is not a
// crash, one clear message naming the file, tensor or key at fault, and that nothing was left
// behind (neither the requested output nor a hidden staging directory).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gguf/export.h"
#include "gguf/reader.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using testing::read_file;
using testing::run_amalgam;
using testing::TempDir;
using testing::write_file;
using testing::zoo;

// ---- checkpoint surgery ----------------------------------------------------------------------

struct Safetensors {
  ordered_json header;
  std::string data;
};

Safetensors read_safetensors(const fs::path& path) {
  const std::string bytes = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {ordered_json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

void write_raw(const fs::path& path, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  write_file(path, out + header + data);
}

void write_safetensors(const fs::path& path, const Safetensors& s) {
  write_raw(path, s.header.dump(), s.data);
}

// Overwrites element `index` of a bf16 tensor with a NaN.
void poison(const fs::path& file, const std::string& tensor, size_t index) {
  Safetensors s = read_safetensors(file);
  const size_t at = s.header[tensor]["data_offsets"][0].get<size_t>() + 2 * index;
  s.data[at] = '\xc0';
  s.data[at + 1] = '\x7f';
  write_safetensors(file, s);
}

void edit_config(const fs::path& model, const std::function<void(ordered_json&)>& edit) {
  ordered_json j = ordered_json::parse(read_file(model / "config.json"));
  edit(j);
  write_file(model / "config.json", j.dump(2));
}

// ---- the cases -------------------------------------------------------------------------------

struct Case {
  std::string name;
  // Prepares files under the case directory; "M" is a copy of the zoo's base model.
  std::function<void(const fs::path& dir)> prepare;
  // Arguments, with {D} for the case directory and {Z} for data/zoo.
  std::string args;
  std::string message;  // part of the one error message expected
  std::string output;   // what must not exist afterwards (relative to the case directory)
};

std::string expand(std::string s, const fs::path& dir) {
  for (auto [key, value] : {std::pair<std::string, std::string>{"{D}", dir.string()},
                            {"{Z}", zoo("").string()}}) {
    for (size_t at = s.find(key); at != std::string::npos; at = s.find(key, at + value.size())) {
      s.replace(at, key.size(), value);
    }
  }
  return s;
}

void nothing(const fs::path&) {}

fs::path model(const fs::path& dir) { return dir / "M"; }
fs::path weights(const fs::path& dir) { return dir / "M" / "model.safetensors"; }

const char* kLinear = R"(merge_method: linear
models:
  - model: {D}/M
    parameters: {weight: 1}
  - model: {Z}/add-expert
    parameters: {weight: 1}
)";

std::function<void(const fs::path&)> recipe(const std::string& text) {
  return [text](const fs::path& dir) { write_file(dir / "r.yaml", expand(text, dir)); };
}

std::vector<Case> cases() {
  std::vector<Case> c;
  auto config = [](std::function<void(ordered_json&)> edit) {
    return [edit](const fs::path& dir) { edit_config(model(dir), edit); };
  };
  auto header = [](std::function<void(Safetensors&)> edit) {
    return [edit](const fs::path& dir) {
      Safetensors s = read_safetensors(weights(dir));
      edit(s);
      write_safetensors(weights(dir), s);
    };
  };

  // safetensors files
  c.push_back({"truncated_file",
               [](const fs::path& dir) {
                 std::string b = read_file(weights(dir));
                 write_file(weights(dir), b.substr(0, b.size() / 2));
               },
               "inspect {D}/M", "truncated", ""});
  c.push_back({"tiny_file", [](const fs::path& dir) { write_file(weights(dir), "abc"); },
               "inspect {D}/M", "not a safetensors file", ""});
  c.push_back({"yaml_as_model",
               [](const fs::path& dir) { write_file(dir / "x.safetensors", kLinear); },
               "inspect {D}/x.safetensors", "not a safetensors file", ""});
  c.push_back({"header_not_json",
               [](const fs::path& dir) { write_raw(weights(dir), "{\"a\": [1, 2", ""); },
               "inspect {D}/M", "malformed JSON", ""});
  c.push_back({"header_not_object", [](const fs::path& dir) { write_raw(weights(dir), "[]", ""); },
               "inspect {D}/M", "not a safetensors file", ""});
  c.push_back({"duplicate_tensor",
               [](const fs::path& dir) {
                 Safetensors s = read_safetensors(weights(dir));
                 std::string text = s.header.dump();
                 const std::string entry = "\"model.norm.weight\":" +
                                           s.header["model.norm.weight"].dump();
                 text.insert(1, entry + ",");
                 write_raw(weights(dir), text, s.data);
               },
               "inspect {D}/M", "duplicate key 'model.norm.weight'", ""});
  c.push_back({"bytes_after_last_tensor",
               [](const fs::path& dir) {
                 Safetensors s = read_safetensors(weights(dir));
                 write_raw(weights(dir), s.header.dump(), s.data + "trailing");
               },
               "inspect {D}/M", "8 bytes after the last tensor", ""});
  c.push_back({"empty_tensor_name", header([](Safetensors& s) {
                 s.header[""] = s.header["model.norm.weight"];
                 s.header.erase("model.norm.weight");
               }),
               "inspect {D}/M", "empty name", ""});
  c.push_back({"unknown_dtype",
               header([](Safetensors& s) { s.header["model.norm.weight"]["dtype"] = "Q9"; }),
               "inspect {D}/M", "unknown dtype", ""});
  c.push_back({"shape_disagrees_with_bytes",
               header([](Safetensors& s) { s.header["model.norm.weight"]["shape"] = {64}; }),
               "inspect {D}/M", "model.norm.weight", ""});
  c.push_back({"offsets_past_end", header([](Safetensors& s) {
                 s.header["model.norm.weight"]["data_offsets"][1] = 1ull << 40;
               }),
               "inspect {D}/M", "model.norm.weight", ""});
  c.push_back({"negative_shape",
               header([](Safetensors& s) { s.header["model.norm.weight"]["shape"] = {-1}; }),
               "inspect {D}/M", "model.norm.weight", ""});
  c.push_back({"no_weights", [](const fs::path& dir) { fs::remove(weights(dir)); },
               "inspect {D}/M", "{D}/M", ""});
  c.push_back({"missing_model", nothing, "inspect {D}/nope", "{D}/nope", ""});

  // config.json against the tensors
  c.push_back({"layers_1e9", config([](ordered_json& j) { j["num_hidden_layers"] = 1000000000; }),
               "generate {D}/M -p hi -n 2", "num_hidden_layers = 1000000000 is out of range", ""});
  c.push_back({"layers_fewer", config([](ordered_json& j) { j["num_hidden_layers"] = 3; }),
               "inspect {D}/M", "num_hidden_layers = 3", ""});
  c.push_back({"layers_negative", config([](ordered_json& j) { j["num_hidden_layers"] = -1; }),
               "inspect {D}/M", "num_hidden_layers = -1", ""});
  c.push_back({"vocab_larger", config([](ordered_json& j) { j["vocab_size"] = 2048; }),
               "inspect {D}/M", "vocab_size = 2048", ""});
  c.push_back({"hidden_zero", config([](ordered_json& j) { j["hidden_size"] = 0; }),
               "inspect {D}/M", "hidden_size = 0", ""});
  c.push_back({"heads_zero", config([](ordered_json& j) { j["num_attention_heads"] = 0; }),
               "inspect {D}/M", "num_attention_heads x head_dim = 0", ""});
  c.push_back({"kv_heads_wrong", config([](ordered_json& j) { j["num_key_value_heads"] = 4; }),
               "logits {D}/M --ids 1,2 -o {D}/l.json", "num_key_value_heads x head_dim = 128", ""});
  c.push_back({"intermediate_wrong", config([](ordered_json& j) { j["intermediate_size"] = 512; }),
               "eval {D}/M --task {Z}/eval/add.json --limit 2", "intermediate_size = 512", ""});
  c.push_back({"config_duplicate_key",
               [](const fs::path& dir) {
                 std::string text = read_file(model(dir) / "config.json");
                 text.insert(1, "\"hidden_size\": 64,");
                 write_file(model(dir) / "config.json", text);
               },
               "inspect {D}/M", "duplicate key 'hidden_size'", ""});
  c.push_back({"config_malformed",
               [](const fs::path& dir) { write_file(model(dir) / "config.json", "{\"a\": "); },
               "inspect {D}/M", "config.json: malformed JSON", ""});
  c.push_back({"config_not_object",
               [](const fs::path& dir) { write_file(model(dir) / "config.json", "[1]"); },
               "inspect {D}/M", "not a JSON object", ""});
  c.push_back({"config_string_count",
               config([](ordered_json& j) { j["hidden_size"] = "128"; }), "inspect {D}/M",
               "'hidden_size' must be a number", ""});
  // Found by fuzzing (config_fuzz, UBSan): a float count too large for an integer.
  c.push_back({"config_count_not_integer",
               config([](ordered_json& j) { j["hidden_size"] = 1e30; }), "inspect {D}/M",
               "'hidden_size' must be an integer", ""});
  c.push_back({"config_missing",
               [](const fs::path& dir) { fs::remove(model(dir) / "config.json"); },
               "generate {D}/M -p hi", "missing config.json", ""});
  c.push_back({"unsupported_architecture",
               config([](ordered_json& j) { j["architectures"] = {"GPT2LMHeadModel"}; }),
               "generate {D}/M -p hi", "GPT2LMHeadModel", ""});

  // NaN weights, context length, token ids
  auto nan_model = [](const fs::path& dir) {
    poison(weights(dir), "model.layers.2.mlp.down_proj.weight", 77);
  };
  c.push_back({"nan_generate", nan_model, "generate {D}/M -p hi",
               "tensor 'model.layers.2.mlp.down_proj.weight' element 77 is NaN", ""});
  c.push_back({"nan_eval", nan_model, "eval {D}/M --task {Z}/eval/add.json --limit 2 --json "
               "{D}/out.json", "element 77 is NaN", "out.json"});
  c.push_back({"nan_perplexity", nan_model, "perplexity {D}/M --file {Z}/eval/heldout.txt",
               "element 77 is NaN", ""});
  c.push_back({"nan_logits", nan_model, "logits {D}/M --ids 0,5 -o {D}/l.json", "is NaN",
               "l.json"});
  c.push_back({"perplexity_window_past_context", nothing,
               "perplexity {Z}/base --file {Z}/eval/heldout.txt --ctx 512",
               "longer than the model's context of 256", ""});
  c.push_back({"prompt_past_context",
               [](const fs::path& dir) {
                 std::string ids = "0";
                 for (int i = 0; i < 300; ++i) ids += ",5";
                 write_file(dir / "ids.txt", ids);
               },
               "generate {Z}/base --ids $(cat {D}/ids.txt)", "the prompt has 301 tokens", ""});
  c.push_back({"token_outside_vocab", nothing, "logits {Z}/base --ids 0,5000 -o {D}/l.json",
               "id 5000 outside the vocabulary", ""});
  c.push_back({"token_not_a_number", nothing, "generate {Z}/base --ids 1,x", "'x' is not a token id",
               ""});
  c.push_back({"no_tokenizer",
               [](const fs::path& dir) { fs::remove(model(dir) / "tokenizer.json"); },
               "generate {D}/M -p hi", "tokenizer.json", ""});
  c.push_back({"tokenizer_malformed",
               [](const fs::path& dir) { write_file(model(dir) / "tokenizer.json", "{]"); },
               "generate {D}/M -p hi", "tokenizer.json", ""});

  // GGUF files given to eval (the loader every command shares): an F32 export of M, then surgery
  auto gguf = [](std::function<void(std::string&, const gguf::GgufFile&)> edit) {
    return [edit](const fs::path& dir) {
      gguf::ExportOptions o;
      o.type = *gguf::parse_export_type("f32");
      gguf::export_gguf(model(dir), dir / "m.gguf", o);
      std::string bytes = read_file(dir / "m.gguf");
      {
        const gguf::GgufFile f(dir / "m.gguf");
        edit(bytes, f);
      }
      write_file(dir / "m.gguf", bytes);
    };
  };
  const std::string eval_gguf =
      "eval {D}/m.gguf --task {Z}/eval/add.json --limit 2 --json {D}/o.json";
  c.push_back({"gguf_truncated",
               gguf([](std::string& b, const gguf::GgufFile&) { b.resize(b.size() * 3 / 5); }),
               eval_gguf, "{D}/m.gguf: tensor", "o.json"});
  c.push_back({"gguf_metadata_garbage",
               gguf([](std::string& b, const gguf::GgufFile&) {
                 for (size_t i = 24; i < 4096 && i < b.size(); ++i) b[i] = static_cast<char>(0xA5);
               }),
               eval_gguf, "{D}/m.gguf: truncated", "o.json"});
  c.push_back({"gguf_nan_weight",
               gguf([](std::string& b, const gguf::GgufFile& f) {
                 const uint64_t at =
                     f.data_offset() + f.tensor("token_embd.weight")->offset + 4 * 77;
                 const float nan = std::numeric_limits<float>::quiet_NaN();
                 std::memcpy(b.data() + at, &nan, 4);
               }),
               eval_gguf, "tensor 'model.embed_tokens.weight' element 77 is NaN", "o.json"});
  c.push_back({"gguf_tokenizer_not_runnable",
               gguf([](std::string& b, const gguf::GgufFile&) {
                 // The pre-tokenizer name amalgam matched ("refact") becomes one it does not know.
                 const size_t at = b.find("refact");
                 if (at != std::string::npos) b.replace(at, 6, "zzzzzz");
               }),
               eval_gguf, "cannot be run by amalgam", "o.json"});

  // tasks
  c.push_back({"task_missing", nothing, "eval {Z}/base --task {D}/none.json", "{D}/none.json", ""});
  c.push_back({"task_is_directory", nothing, "eval {Z}/base --task {D}", "{D}", ""});
  c.push_back({"task_malformed",
               [](const fs::path& dir) { write_file(dir / "t.json", "[{\"prompt\": 1"); },
               "eval {Z}/base --task {D}/t.json", "{D}/t.json", ""});
  c.push_back({"task_item_without_answer",
               [](const fs::path& dir) { write_file(dir / "t.json", "[{\"prompt\": \"1+1=\"}]"); },
               "eval {Z}/base --task {D}/t.json", "{D}/t.json", ""});
  c.push_back({"limit_zero", nothing, "eval {Z}/base --task {Z}/eval/add.json --limit 0",
               "--limit", ""});
  c.push_back({"eval_json_into_missing_directory", nothing,
               "eval {Z}/base --task {Z}/eval/add.json --limit 1 --json {D}/no/such/dir/x.json",
               "{D}/no/such/dir/x.json", "no"});

  // recipes
  c.push_back({"recipe_missing", nothing, "merge {D}/none.yaml -o {D}/out", "{D}/none.yaml", "out"});
  c.push_back({"recipe_is_directory", nothing, "merge {D} -o {D}/out", "{D}", "out"});
  c.push_back({"recipe_bad_yaml", recipe("merge_method: [linear\n"), "merge {D}/r.yaml -o {D}/out",
               "r.yaml", "out"});
  c.push_back({"recipe_unknown_method",
               recipe("merge_method: linaer\nmodels:\n  - model: {Z}/base\n"),
               "merge {D}/r.yaml -o {D}/out", "linear", "out"});
  c.push_back({"recipe_missing_model",
               recipe("merge_method: linear\nmodels:\n  - model: {D}/nope\n    parameters: "
                      "{weight: 1}\n"),
               "merge {D}/r.yaml -o {D}/out", "{D}/nope", "out"});
  c.push_back({"recipe_invalid_utf8", recipe("merge_method: linear\n# caf\xe9\nmodels: []\n"),
               "merge {D}/r.yaml -o {D}/out", "r.yaml", "out"});
  c.push_back({"recipe_yaml_bomb",
               recipe("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c]\n"
                      "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nmerge_method: linear\n"),
               "merge {D}/r.yaml -o {D}/out", "r.yaml", "out"});
  // Found by fuzzing (recipe_fuzz): yaml-cpp 0.7, the previous reader, never returned on this.
  c.push_back({"recipe_hangs_the_yaml_reader", recipe("{a: 1}\n  , b: c\n"),
               "merge {D}/r.yaml -o {D}/out", "r.yaml:2:3: malformed YAML", "out"});
  c.push_back({"recipe_weight_out_of_range",
               recipe("merge_method: ties\nbase_model: {Z}/base\nmodels:\n  - model: "
                      "{Z}/add-expert\n    parameters: {weight: 1, density: 2.5}\n"),
               "merge {D}/r.yaml -o {D}/out", "density", "out"});
  c.push_back({"recipe_zero_weight_sum",
               recipe("merge_method: linear\nmodels:\n  - model: {Z}/base\n    parameters: "
                      "{weight: 1}\n  - model: {Z}/add-expert\n    parameters: {weight: -1}\n"),
               "merge {D}/r.yaml -o {D}/out", "weight", "out"});
  c.push_back({"recipe_slice_past_end",
               recipe("merge_method: passthrough\nslices:\n  - sources:\n      - model: {Z}/base\n"
                      "        layer_range: [0, 9]\n"),
               "merge {D}/r.yaml -o {D}/out", "layer_range", "out"});
  c.push_back({"recipe_empty_slice",
               recipe("merge_method: passthrough\nslices:\n  - sources:\n      - model: {Z}/base\n"
                      "        layer_range: [2, 2]\n"),
               "merge {D}/r.yaml -o {D}/out", "has no layer tensors", "out"});
  c.push_back({"recipe_slices_of_different_widths",
               recipe("merge_method: passthrough\nslices:\n  - sources:\n      - model: {Z}/base\n"
                      "        layer_range: [0, 2]\n  - sources:\n      - model: {Z}/base-large\n"
                      "        layer_range: [2, 6]\n"),
               "merge {D}/r.yaml -o {D}/out", "contradicts its tensors", "out"});
  c.push_back({"merge_nan_input",
               [](const fs::path& dir) {
                 poison(weights(dir), "model.layers.1.self_attn.q_proj.weight", 3);
                 write_file(dir / "r.yaml", expand(kLinear, dir));
               },
               "merge {D}/r.yaml -o {D}/out", "model.layers.1.self_attn.q_proj.weight", "out"});
  c.push_back({"merge_truncated_input",
               [](const fs::path& dir) {
                 std::string b = read_file(weights(dir));
                 write_file(weights(dir), b.substr(0, b.size() - 1000));
                 write_file(dir / "r.yaml", expand(kLinear, dir));
               },
               "merge {D}/r.yaml -o {D}/out", "model.safetensors", "out"});
  c.push_back({"merge_contradicting_config",
               [](const fs::path& dir) {
                 edit_config(model(dir), [](ordered_json& j) { j["vocab_size"] = 2048; });
                 write_file(dir / "r.yaml", expand(kLinear, dir));
               },
               "merge {D}/r.yaml -o {D}/out", "vocab_size = 2048", "out"});
  c.push_back({"merge_output_is_input", recipe(kLinear), "merge {D}/r.yaml -o {D}/M --force",
               "input of the merge", ""});
  c.push_back({"merge_output_exists",
               [](const fs::path& dir) {
                 write_file(dir / "r.yaml", expand(kLinear, dir));
                 fs::create_directory(dir / "taken");
                 write_file(dir / "taken" / "keep.txt", "mine");
               },
               "merge {D}/r.yaml -o {D}/taken", "--force", ""});

  // other commands
  c.push_back({"average_unknown_method", nothing,
               "average {Z}/base {Z}/add-expert --method mean -o {D}/out", "--method", "out"});
  c.push_back({"average_different_shapes", nothing,
               "average {Z}/base {Z}/base-large -o {D}/out", "base-large", "out"});
  c.push_back({"average_decay_with_uniform", nothing,
               "average {Z}/add-traj/step-0300 {Z}/add-traj/step-0400 --decay 0.9 -o {D}/out",
               "--decay", "out"});
  c.push_back({"soup_missing_task", nothing,
               "soup {Z}/base {Z}/add-expert --task {D}/none.json -o {D}/out", "{D}/none.json",
               "out"});
  c.push_back({"evolve_config_missing", nothing, "evolve {D}/none.yaml -o {D}/run", "{D}/none.yaml", "run"});
  c.push_back({"evolve_config_unknown_key",
               [](const fs::path& dir) {
                 write_file(dir / "e.yaml", "modles: []\n");
               },
               "evolve {D}/e.yaml -o {D}/run", "modles", "run"});
  c.push_back({"extract_lora_shapes_differ", nothing,
               "extract-lora --model {Z}/base-large --base {Z}/base --rank 4 -o {D}/out", "base", "out"});
  c.push_back({"extract_lora_rank_zero", nothing,
               "extract-lora --model {Z}/add-expert --base {Z}/base --rank 0 -o {D}/out", "rank",
               "out"});
  c.push_back({"methods_unknown", nothing, "methods tise", "ties", ""});
  c.push_back({"tokenize_no_tokenizer",
               [](const fs::path& dir) { fs::remove(model(dir) / "tokenizer.json"); },
               "tokenize {D}/M -p hello", "tokenizer.json", ""});
  return c;
}

// gtest prints a parameter that fails; the name is enough.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class BadInput : public ::testing::TestWithParam<Case> {};

// Hidden staging directories and files (".NAME.tmp-...") left in `dir`.
std::vector<std::string> leftovers(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(".") && name.find(".tmp-") != std::string::npos) out.push_back(name);
  }
  return out;
}

TEST_P(BadInput, FailsClearlyAndLeavesNothing) {
  const Case& c = GetParam();
  TempDir tmp;
  const fs::path dir = tmp.path();
  fs::copy(zoo("base"), model(dir), fs::copy_options::recursive);
  c.prepare(dir);
  const auto r = run_amalgam("-q " + expand(c.args, dir));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_LT(r.exit_code, 128) << "killed by a signal?\n" << r.output;
  EXPECT_NE(r.output.find(expand(c.message, dir)), std::string::npos)
      << "expected '" << expand(c.message, dir) << "' in:\n"
      << r.output;
  EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
  if (!c.output.empty()) {
    EXPECT_FALSE(fs::exists(dir / c.output)) << c.output << " was written";
  }
  EXPECT_TRUE(leftovers(dir).empty()) << "staging left behind: " << leftovers(dir)[0];
}

INSTANTIATE_TEST_SUITE_P(AllCommands, BadInput, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(BadInputSuite, HasAtLeastSixtyCases) { EXPECT_GE(cases().size(), 60u); }

}  // namespace
}  // namespace amalgam
