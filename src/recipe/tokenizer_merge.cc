#include "recipe/tokenizer_merge.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "core/fs.h"
#include "core/json.h"
#include "core/log.h"
#include "recipe/diagnostics.h"

namespace amalgam::recipe {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// One tokenizer.json: every token (model vocabulary and added tokens) with its id.
struct Vocabulary {
  fs::path file;
  Json json;
  std::unordered_map<std::string, int64_t> ids;
  std::vector<std::pair<int64_t, std::string>> model_tokens;  // model.vocab, by id
  std::vector<Json> added;                                    // added_tokens entries, by id
  std::set<int64_t> added_ids;
  int64_t limit = 0;  // ids from here on have no embedding row (the config's vocab_size)
};

int64_t max_id(const Vocabulary& v) {
  int64_t m = -1;
  for (const auto& [tok, id] : v.ids) m = std::max(m, id);
  return m;
}

Vocabulary read_vocabulary(const Recipe& recipe, const InputModel& m) {
  Vocabulary v;
  v.file = m.checkpoint->directory() / "tokenizer.json";
  if (!fs::exists(v.file)) {
    fail_at(recipe.where, m.at,
            "model '{}' has no tokenizer.json ({}); tokenizer merging (tokenizer_source / "
            "tokenizer) maps every model's embedding rows by its vocabulary",
            m.name, v.file.string());
  }
  const std::string where = v.file.string();
  v.json = core::read_json_file(v.file);
  if (!v.json.is_object() || !v.json.contains("model") || !v.json["model"].is_object()) {
    fail("{}: no 'model' object", where);
  }
  auto id_of = [&](const Json& id, const std::string& token) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      fail("{}: token '{}' has no valid id", where, token);
    }
    return id.get<int64_t>();
  };
  const Json& model = v.json["model"];
  const auto vocab = model.find("vocab");
  if (vocab != model.end() && vocab->is_object()) {
    for (const auto& [tok, id] : vocab->items()) v.model_tokens.emplace_back(id_of(id, tok), tok);
  } else if (vocab != model.end() && vocab->is_array()) {  // Unigram: [piece, score] by id
    for (size_t i = 0; i < vocab->size(); ++i) {
      const Json& e = (*vocab)[i];
      if (!e.is_array() || e.empty() || !e[0].is_string()) {
        fail("{}: model.vocab[{}] is not [piece, score]", where, i);
      }
      v.model_tokens.emplace_back(static_cast<int64_t>(i), e[0].get<std::string>());
    }
  } else {
    fail("{}: model.vocab is missing or neither an object nor a list", where);
  }
  std::sort(v.model_tokens.begin(), v.model_tokens.end());
  for (const auto& [id, tok] : v.model_tokens) v.ids[tok] = id;
  if (v.json.contains("added_tokens")) {
    const Json& added = v.json["added_tokens"];
    if (!added.is_array()) fail("{}: added_tokens is not a list", where);
    for (const auto& a : added) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string()) {
        fail("{}: an added_tokens entry has no string 'content'", where);
      }
      const std::string content = a["content"].get<std::string>();
      const int64_t id = id_of(a.value("id", Json()), content);
      v.ids[content] = id;
      v.added_ids.insert(id);
      v.added.push_back(a);
    }
    std::sort(v.added.begin(), v.added.end(),
              [](const Json& a, const Json& b) { return a["id"] < b["id"]; });
  }
  v.limit = m.config.vocab_size > 0 ? m.config.vocab_size : max_id(v) + 1;
  return v;
}

// mergekit's get_stripped_tokenizer: drops the tokens with ids >= the config's vocab_size (they
// have no embedding row) and the merges that use them. Returns whether anything was dropped.
bool strip(Vocabulary& v, const std::string& model_name) {
  std::unordered_set<std::string> removed;
  for (const auto& [tok, id] : v.ids) {
    if (id >= v.limit) removed.insert(tok);
  }
  if (removed.empty()) return false;
  const std::string where = v.file.string();
  Json& model = v.json["model"];
  if (model.value("type", "") != "BPE") {
    fail(
        "{}: {} token(s) of model '{}' have ids >= its vocab_size {}; removing them is supported "
        "for BPE tokenizers only (as in mergekit)",
        where, removed.size(), model_name, v.limit);
  }
  for (const auto& tok : removed) {
    model["vocab"].erase(tok);
    v.ids.erase(tok);
  }
  std::erase_if(v.model_tokens, [&](const auto& t) { return t.first >= v.limit; });
  std::erase_if(v.added, [&](const Json& a) { return a["id"].get<int64_t>() >= v.limit; });
  std::erase_if(v.added_ids, [&](int64_t id) { return id >= v.limit; });
  Json kept_added = Json::array();
  for (const auto& a : v.json["added_tokens"]) {
    if (a["id"].get<int64_t>() < v.limit) kept_added.push_back(a);
  }
  v.json["added_tokens"] = std::move(kept_added);
  if (model.contains("merges") && model["merges"].is_array()) {
    Json kept = Json::array();
    for (const auto& merge : model["merges"]) {
      std::vector<std::string> parts;
      if (merge.is_string()) {
        const std::string s = merge.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          fail("{}: merge '{}' is not two tokens separated by one space", where, s);
        }
        parts = {s.substr(0, space), s.substr(space + 1)};
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        parts = {merge[0].get<std::string>(), merge[1].get<std::string>()};
      } else {
        fail("{}: a merge is neither \"a b\" nor [a, b]", where);
      }
      const bool uses_removed =
          removed.count(parts[0]) || removed.count(parts[1]) || removed.count(parts[0] + parts[1]);
      if (!uses_removed) kept.push_back(merge);
    }
    model["merges"] = std::move(kept);
  }
  core::info("{}: {} token(s) beyond vocab_size {} of model '{}' left out of the vocabulary", where,
             removed.size(), v.limit, model_name);
  return true;
}

// An added token as Hugging Face's add_tokens(str) makes it: not special, normalized.
Json plain_added_token() {
  return Json{{"single_word", false},
              {"lstrip", false},
              {"rstrip", false},
              {"normalized", true},
              {"special", false}};
}

Json flags_of(const Json& added) {
  Json f = added;
  f.erase("id");
  return f;
}

// Rows of the embedding tensors (embed_tokens, lm_head and their aliases) a model holds.
std::set<int64_t> embedding_rows(const arch::Architecture& arch, const InputModel& m) {
  std::set<int64_t> rows;
  auto add = [&](const arch::WeightSpec& w) {
    if (!w.is_embed) return;
    std::vector<std::string> names = {w.name};
    names.insert(names.end(), w.aliases.begin(), w.aliases.end());
    for (const auto& n : names) {
      if (!m.checkpoint->has(n)) continue;
      const tensor::Shape& shape = m.checkpoint->info(n).shape;
      if (shape.size() == 2) rows.insert(shape[0]);
    }
  };
  for (const auto& w : arch.pre_weights) add(w);
  for (const auto& w : arch.post_weights) add(w);
  return rows;
}

}  // namespace

// Where an output token's row comes from for a model without it (or for all, when forced).
struct DefaultRow {
  enum class Kind { kMean, kZero, kRow } kind = Kind::kMean;
  size_t model = 0;
  int64_t row = 0;
  const TokenDef* def = nullptr;  // set when the recipe chose it: fail rather than fall back
};

struct VocabMerge::Impl {
  const Recipe& recipe;
  const ModelSet& models;
  std::vector<Vocabulary> vocabs;          // per model
  std::vector<std::string> tokens;         // by output id; empty for an id no token has
  std::vector<std::vector<int64_t>> perm;  // per model: output id -> its id, or -1
  std::vector<DefaultRow> defaults;        // by output id
  std::vector<bool> forced;                // by output id
  int64_t real = 0;                        // output vocabulary size (1 + largest id)
  int64_t rows = 0;                        // embedding rows written
  bool changes = true;
  std::shared_ptr<merge::BuiltTokenizer> built;

  Impl(const Recipe& r, const ModelSet& m) : recipe(r), models(m) {}
  void resolve_defaults(std::optional<size_t> base);
  void add_default(int64_t id, const std::vector<size_t>& sources,
                   const std::vector<int64_t>& input_rows, const std::string& tensor,
                   std::vector<merge::RowPick>& picks) const;
};

VocabMerge::VocabMerge(const Recipe& recipe, const ModelSet& models, std::optional<size_t> base,
                       size_t donor, size_t source)
    : impl_(std::make_unique<Impl>(recipe, models)) {
  Impl& s = *impl_;
  for (size_t i = 0; i < models.size(); ++i) s.vocabs.push_back(read_vocabulary(recipe, models[i]));
  const size_t start = recipe.tokenizer == TokenizerChoice::kModel ? source : base.value_or(donor);
  Vocabulary out = s.vocabs[start];
  // mergekit strips the base tokenizer; a model named as the source is taken as it is.
  bool modified = recipe.tokenizer != TokenizerChoice::kModel && strip(out, models[start].name);
  int64_t next_id = max_id(out) + 1;
  auto append = [&](const std::string& content, Json info) {
    info["id"] = next_id;
    info["content"] = content;
    if (!out.json.contains("added_tokens")) out.json["added_tokens"] = Json::array();
    out.json["added_tokens"].push_back(std::move(info));
    out.ids[content] = next_id++;
    modified = true;
  };

  if (recipe.tokenizer == TokenizerChoice::kUnion) {
    std::vector<size_t> order = {start};
    for (size_t i = 0; i < models.size(); ++i) {
      if (i != start) order.push_back(i);
    }
    std::vector<std::string> plain;  // non-added tokens, first seen first
    std::unordered_set<std::string> seen_plain;
    std::vector<Json> added;  // added tokens: the first definition wins
    std::unordered_map<std::string, size_t> added_index;
    std::set<std::string> warned;
    for (size_t i : order) {
      const Vocabulary& v = s.vocabs[i];
      for (const auto& [id, tok] : v.model_tokens) {
        if (id >= v.limit || v.added_ids.count(id)) continue;
        if (seen_plain.insert(tok).second) plain.push_back(tok);
      }
      for (const auto& a : v.added) {
        if (a["id"].get<int64_t>() >= v.limit) continue;
        const std::string content = a["content"].get<std::string>();
        auto [it, inserted] = added_index.emplace(content, added.size());
        if (inserted) {
          added.push_back(a);
        } else if (flags_of(added[it->second]) != flags_of(a) && warned.insert(content).second) {
          core::warn(
              "{}added token '{}' has different settings in model '{}'; the first "
              "definition is kept",
              prefix(recipe.where, {}), content, models[i].name);
        }
      }
    }
    for (const auto& tok : plain) {
      if (!added_index.count(tok) && !out.ids.count(tok)) append(tok, plain_added_token());
    }
    for (const auto& a : added) {
      const std::string content = a["content"].get<std::string>();
      if (!out.ids.count(content)) append(content, flags_of(a));
    }
  }
  for (const auto& def : recipe.tokens) {
    if (!out.ids.count(def.token)) append(def.token, plain_added_token());
  }

  s.real = max_id(out) + 1;
  s.tokens.assign(static_cast<size_t>(s.real), std::string());
  for (const auto& [tok, id] : out.ids) s.tokens[static_cast<size_t>(id)] = tok;
  bool identity = !modified;
  for (size_t m = 0; m < models.size(); ++m) {
    const Vocabulary& v = s.vocabs[m];
    std::vector<int64_t>& p = s.perm.emplace_back(static_cast<size_t>(s.real), -1);
    size_t mapped = 0;
    for (int64_t id = 0; id < s.real; ++id) {
      const std::string& tok = s.tokens[static_cast<size_t>(id)];
      auto it = tok.empty() ? v.ids.end() : v.ids.find(tok);
      if (it != v.ids.end() && it->second < v.limit) {
        p[static_cast<size_t>(id)] = it->second;
        ++mapped;
      }
      identity = identity && p[static_cast<size_t>(id)] == (tok.empty() ? -1 : id);
    }
    size_t own = 0;  // the model's tokens that have a row
    for (const auto& [tok, id] : v.ids) own += id < v.limit;
    identity = identity && own == mapped;
  }
  s.resolve_defaults(base);
  for (bool f : s.forced) identity = identity && !f;

  // The same vocabulary everywhere: embeddings are left as they are (padding rows included,
  // which mergekit would cut to the tokenizer's length, its issue #425).
  std::set<int64_t> all_rows;
  for (size_t m = 0; m < models.size(); ++m) {
    const std::set<int64_t> r = embedding_rows(models.architecture(), models[m]);
    all_rows.insert(r.begin(), r.end());
  }
  const int64_t pad = recipe.pad_to_multiple_of.value_or(1);
  if (identity && all_rows.size() == 1 && *all_rows.begin() >= s.real &&
      *all_rows.begin() % pad == 0) {
    s.changes = false;
    s.rows = *all_rows.begin();
    return;
  }
  s.rows = (s.real + pad - 1) / pad * pad;
  s.built = std::make_shared<merge::BuiltTokenizer>();
  s.built->vocab_size = s.rows;
  s.built->tokenizer_json =
      modified ? out.json.dump(2) + "\n" : core::read_text_file(s.vocabs[start].file);
  const fs::path config_path = models[start].checkpoint->directory() / "tokenizer_config.json";
  if (modified && fs::exists(config_path)) {
    nlohmann::ordered_json config;
    try {
      config = nlohmann::ordered_json::parse(core::read_text_file(config_path));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: malformed JSON: {}", config_path.string(), e.what());
    }
    if (config.is_object() && config.contains("added_tokens_decoder") &&
        config["added_tokens_decoder"].is_object()) {
      nlohmann::ordered_json decoder = nlohmann::ordered_json::object();
      for (const auto& a : out.json["added_tokens"]) {
        nlohmann::ordered_json e;
        e["content"] = a["content"];
        for (const char* key : {"lstrip", "normalized", "rstrip", "single_word", "special"}) {
          e[key] = a.value(key, false);
        }
        decoder[std::to_string(a["id"].get<int64_t>())] = std::move(e);
      }
      config["added_tokens_decoder"] = std::move(decoder);
      s.built->tokenizer_config_json = config.dump(2) + "\n";
    }
  }
  core::info("{}tokenizer: {} tokens, {} embedding rows", prefix(recipe.where, {}), s.real, s.rows);
}

VocabMerge::~VocabMerge() = default;

void VocabMerge::Impl::resolve_defaults(std::optional<size_t> base) {
  defaults.assign(static_cast<size_t>(real), DefaultRow{});
  forced.assign(static_cast<size_t>(real), false);
  std::unordered_map<std::string, int64_t> out_ids;
  for (int64_t id = 0; id < real; ++id) {
    if (!tokens[static_cast<size_t>(id)].empty()) out_ids[tokens[static_cast<size_t>(id)]] = id;
  }
  std::vector<bool> configured(static_cast<size_t>(real), false);
  for (const auto& def : recipe.tokens) {
    const auto id = static_cast<size_t>(out_ids.at(def.token));
    forced[id] = def.force;
    if (!def.source) continue;
    configured[id] = true;
    DefaultRow& d = defaults[id];
    d.def = &def;
    const TokenSourceDef& src = *def.source;
    if (src.kind == TokenSourceDef::Kind::kZero) {
      d.kind = DefaultRow::Kind::kZero;
      continue;
    }
    const std::optional<size_t> m = models.find(src.model);
    if (!m) {
      fail_at(recipe.where, src.at,
              "tokenizer.tokens.{}: model '{}' is not one of the recipe's models; a token's "
              "embedding can come only from a model of the merge",
              def.token, src.model.path);
    }
    d.kind = DefaultRow::Kind::kRow;
    d.model = *m;
    if (src.kind == TokenSourceDef::Kind::kModel) {
      d.row = perm[*m][id];
      if (d.row < 0) {
        fail_at(recipe.where, src.at,
                "tokenizer.tokens.{}: model '{}' has no token '{}' (with an embedding row); "
                "use {{kind: model_token, model: ..., token: ...}} to take another token's row",
                def.token, src.model.path, def.token);
      }
    } else if (src.token_id) {
      d.row = *src.token_id;
    } else {
      const auto& ids = vocabs[*m].ids;
      auto it = ids.find(*src.token);
      if (it == ids.end()) {
        fail_at(recipe.where, src.at, "tokenizer.tokens.{}: model '{}' has no token '{}'",
                def.token, src.model.path, *src.token);
      }
      d.row = it->second;
    }
  }
  size_t unknown = 0;
  std::string examples;
  for (int64_t id = 0; id < real; ++id) {
    const auto i = static_cast<size_t>(id);
    if (configured[i]) continue;
    size_t present = 0, last = 0;
    for (size_t m = 0; m < perm.size(); ++m) {
      if (perm[m][i] >= 0) ++present, last = m;
    }
    DefaultRow& d = defaults[i];
    if (present == 1) {
      d = {DefaultRow::Kind::kRow, last, perm[last][i], nullptr};
    } else if (present == 0) {
      d.kind = DefaultRow::Kind::kZero;
      if (!tokens[i].empty() && unknown++ < 3)
        examples += (examples.empty() ? "'" : ", '") + tokens[i] + "'";
    } else if (base && perm[*base][i] >= 0) {
      d = {DefaultRow::Kind::kRow, *base, perm[*base][i], nullptr};
    }
  }
  if (unknown > 0) {
    core::warn(
        "{}{} token(s) of the output vocabulary are in no model ({}); their embedding rows "
        "are zeros",
        prefix(recipe.where, {}), unknown, examples);
  }
}

void VocabMerge::Impl::add_default(int64_t id, const std::vector<size_t>& sources,
                                   const std::vector<int64_t>& input_rows,
                                   const std::string& tensor,
                                   std::vector<merge::RowPick>& picks) const {
  const auto i = static_cast<size_t>(id);
  const DefaultRow& d = defaults[i];
  if (d.kind == DefaultRow::Kind::kZero) return;
  if (d.kind == DefaultRow::Kind::kRow) {
    for (size_t s = 0; s < sources.size(); ++s) {
      if (sources[s] != d.model) continue;
      if (d.row < input_rows[s]) {
        picks.push_back({static_cast<uint32_t>(s), d.row});
        return;
      }
      if (d.def) {
        fail_at(recipe.where, d.def->source->at,
                "tokenizer.tokens.{}: row {} of model '{}' does not exist: its '{}' has {} rows",
                d.def->token, d.row, models[d.model].name, tensor, input_rows[s]);
      }
      break;
    }
    if (d.def) {
      fail_at(recipe.where, d.def->source->at,
              "tokenizer.tokens.{}: model '{}' gives no '{}' to this merge, so the token's row "
              "cannot come from it",
              d.def->token, models[d.model].name, tensor);
    }
  }
  for (size_t s = 0; s < sources.size(); ++s) {  // the mean over the models that have it
    const int64_t row = perm[sources[s]][i];
    if (row >= 0 && row < input_rows[s]) picks.push_back({static_cast<uint32_t>(s), row});
  }
}

bool VocabMerge::changes_embeddings() const { return impl_->changes; }
int64_t VocabMerge::rows() const { return impl_->rows; }

std::vector<std::shared_ptr<const merge::RowMap>> VocabMerge::row_maps(
    const std::vector<size_t>& models, const std::vector<int64_t>& input_rows,
    const std::string& tensor) const {
  const Impl& s = *impl_;
  std::vector<std::shared_ptr<const merge::RowMap>> out;
  for (size_t src = 0; src < models.size(); ++src) {
    auto map = std::make_shared<merge::RowMap>();
    map->real_rows = s.real;
    map->offsets.reserve(static_cast<size_t>(s.real) + 1);
    map->offsets.push_back(0);
    map->picks.reserve(static_cast<size_t>(s.real));
    const std::vector<int64_t>& p = s.perm[models[src]];
    for (int64_t id = 0; id < s.real; ++id) {
      const auto i = static_cast<size_t>(id);
      if (p[i] >= 0 && p[i] < input_rows[src] && !s.forced[i]) {
        map->picks.push_back({static_cast<uint32_t>(src), p[i]});
      } else {
        s.add_default(id, models, input_rows, tensor, map->picks);
      }
      map->offsets.push_back(static_cast<uint32_t>(map->picks.size()));
    }
    out.push_back(std::move(map));
  }
  return out;
}

std::shared_ptr<const merge::BuiltTokenizer> VocabMerge::built_tokenizer() const {
  return impl_->built;
}

}  // namespace amalgam::recipe
