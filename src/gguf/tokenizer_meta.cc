#include "gguf/tokenizer_meta.h"

#include <fmt/format.h>

#include <map>
#include <regex>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"

namespace amalgam::gguf {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// llama.cpp's token types.
constexpr double kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;

// The Split regexes of Llama 3 and Qwen2 tokenizer.json files (spec/inference.md B.9).
constexpr std::string_view kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

bool is_type(const Json& j, const char* type) {
  return j.is_object() && j.contains("type") && j["type"] == type;
}

bool byte_level(const Json& j, bool use_regex) {
  return is_type(j, "ByteLevel") && j.value("use_regex", true) == use_regex &&
         !j.value("add_prefix_space", false);
}

std::optional<std::string> split_regex(const Json& j) {
  if (!is_type(j, "Split") || !j.contains("pattern") || !j["pattern"].is_object()) {
    return std::nullopt;
  }
  const Json& p = j["pattern"];
  if (!p.contains("Regex") || !p["Regex"].is_string()) return std::nullopt;
  if (j.value("behavior", "") != "Isolated" || j.value("invert", false)) return std::nullopt;
  return p["Regex"].get<std::string>();
}

std::string read_json_text(const fs::path& path) { return core::read_text_file(path); }

Json parse_json(const fs::path& path) {
  try {
    return Json::parse(read_json_text(path));
  } catch (const Json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
}

// gguf-py's does_token_look_special.
bool looks_special(const std::string& t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (t.starts_with("<|") && t.ends_with("|>") && t.size() >= 4) return true;
  if (t.starts_with("<\xef\xbd\x9c") && t.ends_with("\xef\xbd\x9c>")) return true;  // <｜ ｜>
  return t.size() >= 2 && t.front() == '<' && t.back() == '>';
}

// A special-token setting of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> token_content(const Json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const Json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

// The `single` template of the post-processor (TemplateProcessing, alone or inside a Sequence),
// when it has one and it is a non-empty array.
const Json* template_single(const Json& tok) {
  if (!tok.contains("post_processor")) return nullptr;
  const Json& post = tok["post_processor"];
  std::vector<const Json*> steps = {&post};
  if (is_type(post, "Sequence") && post.contains("processors") && post["processors"].is_array()) {
    steps.clear();
    for (const auto& p : post["processors"]) steps.push_back(&p);
  }
  for (const Json* p : steps) {
    if (!is_type(*p, "TemplateProcessing") || !p->contains("single")) continue;
    const Json& single = (*p)["single"];
    if (single.is_array() && !single.empty()) return &single;
  }
  return nullptr;
}

}  // namespace

std::optional<std::string> pre_tokenizer_name(const Json& tok) {
  const Json none;
  const Json& pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : none;
  const Json& norm = tok.contains("normalizer") ? tok["normalizer"] : none;
  std::vector<Json> steps;
  if (is_type(pre, "Sequence") && pre.contains("pretokenizers")) {
    for (const auto& s : pre["pretokenizers"]) steps.push_back(s);
  } else if (!pre.is_null()) {
    steps.push_back(pre);
  }
  // Qwen2 declares NFC, which llama.cpp does not apply either; anything else changes the text.
  const bool nfc = is_type(norm, "NFC");
  if (!norm.is_null() && !nfc) return std::nullopt;
  if (steps.size() == 1 && byte_level(steps[0], true) && !nfc) return "gpt-2";
  if (steps.size() == 2 && byte_level(steps[1], false)) {
    const auto re = split_regex(steps[0]);
    if (re && *re == kLlama3Regex && !nfc) return "llama-bpe";
    if (re && *re == kQwen2Regex) return "qwen2";
  }
  if (steps.size() == 2 && is_type(steps[0], "Digits") &&
      steps[0].value("individual_digits", false) && byte_level(steps[1], true) && !nfc) {
    return "refact";  // \p{N} alone, then GPT-2's regex
  }
  return std::nullopt;
}

Metadata tokenizer_metadata(const fs::path& dir, const io::ModelConfig& config,
                            const std::optional<std::string>& pre_override) {
  const fs::path tok_path = dir / "tokenizer.json";
  if (!fs::exists(tok_path)) {
    fail(
        "{}: no tokenizer.json; GGUF export needs the tokenizer (a tokenizer.model alone is not "
        "read)",
        dir.string());
  }
  const Json tok = parse_json(tok_path);
  const std::string where = tok_path.string();
  AMALGAM_CHECK(tok.contains("model") && tok["model"].is_object(), "{}: no model", where);
  const Json& model = tok["model"];
  AMALGAM_CHECK(is_type(model, "BPE") && model.contains("vocab") && model["vocab"].is_object(),
                "{}: model type {} is not exported to GGUF (BPE only)", where,
                model.value("type", "?"));
  Json cfg = Json::object();
  if (fs::exists(dir / "tokenizer_config.json")) cfg = parse_json(dir / "tokenizer_config.json");

  // id -> text, with added tokens (which may extend the vocabulary).
  std::map<int64_t, std::string> by_id;
  for (const auto& [text, id] : model["vocab"].items()) {
    AMALGAM_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0,
                  "{}: vocab entry '{}' has a bad id", where, text);
    by_id[id.get<int64_t>()] = text;
  }
  std::map<int64_t, const Json*> added;
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const auto& a : tok["added_tokens"]) {
      AMALGAM_CHECK(a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                        a["content"].is_string(),
                    "{}: an added token lacks id or content", where);
      const int64_t id = a["id"].get<int64_t>();
      AMALGAM_CHECK(id >= 0, "{}: added token id {} is negative", where, id);
      by_id[id] = a["content"].get<std::string>();
      added[id] = &a;
    }
  }
  const int64_t tokenizer_size = by_id.empty() ? 0 : by_id.rbegin()->first + 1;
  const int64_t vocab_size = std::max(config.vocab_size, tokenizer_size);
  auto id_of = [&](const std::string& text) -> std::optional<int64_t> {
    for (const auto& [id, t] : by_id) {
      if (t == text) return id;
    }
    return std::nullopt;
  };

  const bool spm = model.value("byte_fallback", false);
  std::optional<std::string> pre;
  if (!spm) {
    pre = pre_override ? pre_override : pre_tokenizer_name(tok);
    if (!pre) {
      fail(
          "{}: no llama.cpp pre-tokenizer matches this tokenizer's splitting rules "
          "(pre_tokenizer {}, normalizer {}); a wrong name would tokenise differently without "
          "any message. Give the name llama.cpp should use with --gguf-pre NAME if you know it",
          where, tok.contains("pre_tokenizer") ? tok["pre_tokenizer"].dump() : "null",
          tok.contains("normalizer") ? tok["normalizer"].dump() : "null");
    }
  }

  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges") && model["merges"].is_array()) {
    for (const auto& mg : model["merges"]) {
      if (mg.is_string() && mg.get<std::string>().find(' ') != std::string::npos) {
        const std::string t = mg.get<std::string>();
        merges.emplace_back(t.substr(0, t.find(' ')), t.substr(t.find(' ') + 1));
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        merges.emplace_back(mg[0].get<std::string>(), mg[1].get<std::string>());
      } else {
        fail("{}: merge {} is neither \"a b\" nor [a, b]", where, mg.dump());
      }
    }
  }
  // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined text is the token
  // with the highest score, where Hugging Face's BPE applies the merge of lowest rank: a token's
  // score is minus the rank of the merge that makes it. Tokens no merge makes come after all
  // merges, by id. (Scores of -id would rank "▁▁" before "▁S", which tokenizer.json does not.)
  std::unordered_map<std::string, size_t> merge_rank;
  if (spm) {
    for (size_t r = 0; r < merges.size(); ++r) {
      std::string j = merges[r].first;
      j.append(merges[r].second);
      merge_rank.try_emplace(std::move(j), r);
    }
  }

  std::vector<std::string> tokens;
  std::vector<double> types, scores;
  tokens.reserve(static_cast<size_t>(vocab_size));
  const std::regex byte_token("<0x[0-9A-Fa-f]{2}>");
  const auto unk = model.contains("unk_token") && model["unk_token"].is_string()
                       ? std::optional<std::string>(model["unk_token"].get<std::string>())
                       : std::nullopt;
  for (int64_t id = 0; id < vocab_size; ++id) {
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      tokens.push_back(fmt::format("[PAD{}]", id));
      types.push_back(kUnused);
      scores.push_back(-1000.0);
      continue;
    }
    std::string text = it->second;
    double type = kNormal;
    double score = 0.0;
    if (spm) {
      const auto r = merge_rank.find(text);
      score = -static_cast<double>(r != merge_rank.end() ? r->second
                                                         : merges.size() + static_cast<size_t>(id));
    }
    if (auto a = added.find(id); a != added.end()) {
      const bool special = a->second->value("special", false);
      if (spm) {
        type = special ? kControl : kUserDefined;
        if (unk && text == *unk) type = kUnknown;
        score = spm && !special ? -1000.0 : 0.0;
      } else if (special || looks_special(text)) {
        type = kControl;
      } else {
        // llama.cpp expects user-defined tokens pre-normalised: "▁" as a space.
        std::string spaced;
        for (size_t p = 0; p < text.size();) {
          if (text.compare(p, 3, "\xe2\x96\x81") == 0) {
            spaced.push_back(' ');
            p += 3;
          } else {
            spaced.push_back(text[p++]);
          }
        }
        text = std::move(spaced);
        type = kUserDefined;
      }
    } else if (spm && std::regex_match(text, byte_token)) {
      type = kByte;
      score = 0.0;
    } else if (spm && unk && text == *unk) {
      type = kUnknown;
      score = 0.0;
    }
    tokens.push_back(std::move(text));
    types.push_back(type);
    scores.push_back(score);
  }

  Metadata m;
  m.emplace_back("tokenizer.ggml.model", Value::str(spm ? "llama" : "gpt2"));
  if (pre) m.emplace_back("tokenizer.ggml.pre", Value::str(*pre));
  m.emplace_back("tokenizer.ggml.tokens", Value::string_array(std::move(tokens)));
  if (spm) m.emplace_back("tokenizer.ggml.scores", Value::number_array(ValueType::kF32, scores));
  m.emplace_back("tokenizer.ggml.token_type", Value::number_array(ValueType::kI32, types));
  if (!spm && !merges.empty()) {
    std::vector<std::string> joined;
    joined.reserve(merges.size());
    for (const auto& [a, b] : merges) {
      std::string j;
      j.reserve(a.size() + 1 + b.size());
      j.append(a).append(1, ' ').append(b);
      joined.push_back(std::move(j));
    }
    m.emplace_back("tokenizer.ggml.merges", Value::string_array(std::move(joined)));
  }
  // Special ids: tokenizer_config.json names them; config.json's ids fill the gaps.
  auto special = [&](const char* cfg_key, const char* gguf_key, std::optional<int64_t> fallback) {
    std::optional<int64_t> id;
    if (auto text = token_content(cfg, cfg_key)) id = id_of(*text);
    if (!id) id = fallback;
    if (id && *id >= 0 && *id < vocab_size) {
      m.emplace_back(gguf_key, Value::u32(static_cast<uint32_t>(*id)));
    }
  };
  special("bos_token", "tokenizer.ggml.bos_token_id", config.bos_token_id);
  special("eos_token", "tokenizer.ggml.eos_token_id",
          config.eos_token_ids.empty() ? std::nullopt
                                       : std::optional<int64_t>(config.eos_token_ids[0]));
  special("unk_token", "tokenizer.ggml.unknown_token_id",
          unk ? id_of(*unk) : std::optional<int64_t>());
  special("pad_token", "tokenizer.ggml.padding_token_id", std::nullopt);
  // add_bos / add_eos: tokenizer_config.json, else what the post-processor's template adds.
  std::optional<bool> add_bos, add_eos;
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
    add_bos = cfg["add_bos_token"].get<bool>();
  }
  if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) {
    add_eos = cfg["add_eos_token"].get<bool>();
  }
  if (const Json* single = template_single(tok)) {
    if (!add_bos) add_bos = single->front().contains("SpecialToken");
    if (!add_eos) add_eos = single->back().contains("SpecialToken");
  }
  // Always written: without the keys llama.cpp applies its own default per pre-tokenizer (a BOS
  // for llama-bpe and the SentencePiece model), which a tokenizer.json without a template that
  // adds one (npm's Llama 3 tokenizer) does not do.
  m.emplace_back("tokenizer.ggml.add_bos_token", Value::boolean(add_bos.value_or(false)));
  m.emplace_back("tokenizer.ggml.add_eos_token", Value::boolean(add_eos.value_or(false)));
  if (cfg.contains("chat_template") && cfg["chat_template"].is_string()) {
    m.emplace_back("tokenizer.chat_template", Value::str(cfg["chat_template"].get<std::string>()));
  }
  return m;
}

}  // namespace amalgam::gguf
