#include "tokenizer/tokenizer.h"

#include "core/error.h"
#include "core/fs.h"
#include "core/interrupt.h"
#include "core/json.h"
#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unicode.h"

namespace amalgam::tokenizer {

namespace fs = std::filesystem;

struct Tokenizer::Impl {
  Impl(const Json& j, const std::string& where)
      : where(where),
        normalizer(parse_normalizer(j.value("normalizer", Json()), where + ": normalizer")),
        pre_tokenizer(
            parse_pre_tokenizer(j.value("pre_tokenizer", Json()), where + ": pre_tokenizer")),
        model(require_field(j, "model", where), where + ": model"),
        added(j.value("added_tokens", Json()), normalizer.get(), where),
        post_processor(j.value("post_processor", Json()), where + ": post_processor"),
        decoder(parse_decoder(j.value("decoder", Json()), where + ": decoder")) {}

  std::string where;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  BpeModel model;
  AddedVocabulary added;
  PostProcessor post_processor;
  std::unique_ptr<Decoder> decoder;
  std::optional<int32_t> bos;
  std::optional<int32_t> eos;
};

namespace {

// tokenizer_config.json writes a token as a string, as {"content": ...}, or as null.
// Returns false when the key is absent; `content` is empty for null.
bool config_token(const Json& config, const char* key, std::string& content,
                  const std::string& where) {
  auto it = config.find(key);
  if (it == config.end()) return false;
  content.clear();
  if (it->is_string()) {
    content = it->get<std::string>();
  } else if (it->is_object()) {
    content = string_field(*it, "content", where + ": " + key);
  } else {
    AMALGAM_CHECK(it->is_null(), "{}: '{}' must be a string, an object or null", where, key);
  }
  return true;
}

std::optional<int32_t> lookup(const Tokenizer::Impl& m, std::string_view piece) {
  if (auto id = m.added.token_id(piece)) return id;
  return m.model.token_id(piece);
}

std::optional<int32_t> first_known(const Tokenizer::Impl& m,
                                   std::initializer_list<const char*> names) {
  for (const char* name : names) {
    if (auto id = lookup(m, name)) return id;
  }
  return std::nullopt;
}

std::shared_ptr<Tokenizer::Impl> load(const std::string& text, const std::string& where) {
  Json j = core::parse_json_strict(text, where);
  AMALGAM_CHECK(j.is_object(), "{}: expected a JSON object", where);
  auto impl = std::make_shared<Tokenizer::Impl>(j, where);
  // Without tokenizer_config.json: BOS is what the post-processor puts first, else a usual name.
  auto prefix = impl->post_processor.prefix();
  impl->bos = !prefix.empty()
                  ? std::optional<int32_t>(prefix.front())
                  : first_known(*impl, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
  impl->eos =
      first_known(*impl, {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"});
  return impl;
}

}  // namespace

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json_text, const std::string& where) {
  return Tokenizer(load(tokenizer_json_text, where));
}

Tokenizer Tokenizer::from_directory(const fs::path& model_dir) {
  fs::path json_path = model_dir;
  fs::path dir = model_dir;
  if (fs::is_directory(model_dir)) {
    json_path = model_dir / "tokenizer.json";
  } else {
    dir = model_dir.parent_path();
  }
  if (!fs::exists(json_path)) {
    if (fs::exists(dir / "tokenizer.model")) {
      fail(
          "{}: only a SentencePiece tokenizer.model is present; amalgam reads tokenizer.json. "
          "Convert it once with transformers (AutoTokenizer.from_pretrained(dir)"
          ".save_pretrained(dir)), which writes tokenizer.json",
          dir.string());
    }
    fail("{}: no tokenizer.json found", model_dir.string());
  }
  auto impl = load(core::read_text_file(json_path), json_path.string());
  fs::path config_path = dir / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    Json config = core::read_json_file(config_path);
    std::string content;
    for (auto [key, slot] :
         {std::pair{"bos_token", &impl->bos}, std::pair{"eos_token", &impl->eos}}) {
      if (!config_token(config, key, content, config_path.string())) continue;
      if (content.empty()) {
        *slot = std::nullopt;  // explicitly none (Qwen2 has no BOS)
        continue;
      }
      auto id = lookup(*impl, content);
      AMALGAM_CHECK(id.has_value(), "{}: {} '{}' is not a token of {}", config_path.string(), key,
                    content, json_path.string());
      *slot = id;
    }
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  const Impl& m = *impl_;
  size_t bad = find_invalid_utf8(text);
  AMALGAM_CHECK(bad == std::string_view::npos, "text to encode is not valid UTF-8 (byte {})", bad);
  AMALGAM_CHECK(text.size() < (size_t{1} << 31), "text to encode is larger than 2 GiB");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Piece> pieces;
  for (auto& segment : m.added.extract_and_normalize(text, m.normalizer.get())) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    pieces.clear();
    pieces.push_back(std::move(segment.piece));
    if (m.pre_tokenizer) m.pre_tokenizer->pre_tokenize(pieces);
    // A huge text (perplexity on a whole corpus) takes minutes: Ctrl-C is honoured between words.
    for (size_t i = 0; i < pieces.size(); ++i) {
      if ((i & 4095) == 4095) core::check_interrupted();
      m.model.tokenize(pieces[i].text, ids);
    }
    core::check_interrupted();
  }
  if (add_special) ids = m.post_processor.process(std::move(ids));
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* added = m.added.find(id)) {
      if (!(skip_special && added->special)) tokens.push_back(added->content);
    } else if (const std::string* p = m.model.piece(id)) {
      tokens.push_back(*p);
    }
  }
  if (m.decoder) tokens = m.decoder->decode_chain(std::move(tokens));
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0 && !m.decoder) out += ' ';
    out += tokens[i];
  }
  return out;
}

std::string Tokenizer::piece(int32_t id) const {
  if (const AddedToken* added = impl_->added.find(id)) return added->content;
  if (const std::string* p = impl_->model.piece(id)) return *p;
  fail("{}: no token has id {} (vocab size {})", impl_->where, id, vocab_size());
}

std::optional<int32_t> Tokenizer::token_id(std::string_view piece) const {
  return lookup(*impl_, piece);
}

int32_t Tokenizer::vocab_size() const {
  int32_t max_id = impl_->model.max_id();
  for (const auto& t : impl_->added.tokens()) max_id = std::max(max_id, t.id);
  return max_id + 1;
}

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* added = impl_->added.find(id);
  return added != nullptr && added->special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

bool Tokenizer::add_bos() const {
  auto prefix = impl_->post_processor.prefix();
  return impl_->bos && !prefix.empty() && prefix.front() == *impl_->bos;
}

}  // namespace amalgam::tokenizer
