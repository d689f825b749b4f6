// YAML recipe text -> Recipe: mergekit's MergeConfiguration schema, checked key by key.
#include "core/log.h"
#include "recipe/schema.h"
#include "recipe/yaml_reader.h"

namespace amalgam::recipe {

namespace {

const std::vector<std::string> kTopLevelKeys = {
    "merge_method", "models",           "slices",    "base_model",    "parameters", "dtype",
    "out_dtype",    "tokenizer_source", "tokenizer", "chat_template", "modules",    "name"};

tensor::DType parse_dtype(const YamlReader& r, const YAML::Node& node, const std::string& key) {
  const std::string text = r.string(node, key);
  auto dtype = tensor::parse_torch_dtype(text);
  if (!dtype || !tensor::is_float_dtype(*dtype)) {
    fail_at(r.where(), YamlReader::location(node),
            "{}: '{}' is not a merge dtype; use bfloat16, float16 or float32", key, text);
  }
  return *dtype;
}

ModelDef parse_model_def(const YamlReader& r, const YAML::Node& node, const std::string& path) {
  ModelDef def;
  def.at = YamlReader::location(node);
  if (node.IsScalar()) {  // shorthand: a bare path
    def.model = r.model_ref(node, path);
    return def;
  }
  auto items = r.entries(node, path);
  r.check_keys(items, {"model", "parameters"}, path);
  bool has_model = false;
  for (const auto& e : items) {
    if (e.key == "model") {
      def.model = r.model_ref(e.value, path + ".model");
      has_model = true;
    } else {
      def.parameters = r.parameters(e.value, path + ".parameters");
    }
  }
  if (!has_model) fail_at(r.where(), def.at, "{}: missing 'model' (the model's path)", path);
  return def;
}

SourceDef parse_source(const YamlReader& r, const YAML::Node& node, const std::string& path) {
  SourceDef src;
  src.at = YamlReader::location(node);
  auto items = r.entries(node, path);
  r.check_keys(items, {"model", "layer_range", "parameters"}, path);
  bool has_model = false, has_range = false;
  for (const auto& e : items) {
    if (e.key == "model") {
      src.model = r.model_ref(e.value, path + ".model");
      has_model = true;
    } else if (e.key == "layer_range") {
      const std::string p = path + ".layer_range";
      auto range = r.sequence(e.value, p, "two integers [start, end)");
      if (range.size() != 2) {
        fail_at(r.where(), YamlReader::location(e.value),
                "{} must be two integers [start, end) (end excluded), got {} values", p,
                range.size());
      }
      src.layer_range = {r.integer(range[0], p + "[0]"), r.integer(range[1], p + "[1]")};
      has_range = true;
    } else {
      src.parameters = r.parameters(e.value, path + ".parameters");
    }
  }
  if (!has_model) fail_at(r.where(), src.at, "{}: missing 'model' (the model's path)", path);
  if (!has_range) {
    fail_at(r.where(), src.at, "{}: missing 'layer_range: [start, end)' for model '{}'", path,
            src.model.path);
  }
  return src;
}

SliceDef parse_slice(const YamlReader& r, const YAML::Node& node, const std::string& path) {
  SliceDef slice;
  slice.at = YamlReader::location(node);
  auto items = r.entries(node, path);
  r.check_keys(items, {"sources", "base_model", "parameters", "residual_weight"}, path);
  bool has_sources = false;
  for (const auto& e : items) {
    if (e.key == "sources") {
      const std::string p = path + ".sources";
      auto sources = r.sequence(e.value, p, "{model: ..., layer_range: [start, end)}");
      for (size_t i = 0; i < sources.size(); ++i) {
        slice.sources.push_back(parse_source(r, sources[i], fmt::format("{}[{}]", p, i)));
      }
      has_sources = !slice.sources.empty();
    } else if (e.key == "base_model") {
      if (!e.value.IsNull()) slice.base_model = r.model_ref(e.value, path + ".base_model");
    } else if (e.key == "parameters") {
      slice.parameters = r.parameters(e.value, path + ".parameters");
    } else if (!e.value.IsNull()) {
      core::warn("{}{}.residual_weight is ignored (mergekit ignores it too)",
                 prefix(r.where(), e.at), path);
    }
  }
  if (!has_sources) fail_at(r.where(), slice.at, "{}: a slice needs at least one source", path);
  return slice;
}

// union | base | a model ref; "model:PATH" is the older mergekit spelling of a model ref.
void parse_tokenizer_choice(const YamlReader& r, const YAML::Node& node, const std::string& path,
                            Recipe& recipe) {
  recipe.tokenizer_at = YamlReader::location(node);
  if (node.IsScalar() && node.Scalar() == "union") {
    recipe.tokenizer = TokenizerChoice::kUnion;
    return;
  }
  if (node.IsScalar() && node.Scalar() == "base") {
    recipe.tokenizer = TokenizerChoice::kBase;
    return;
  }
  recipe.tokenizer = TokenizerChoice::kModel;
  recipe.tokenizer_model = r.model_ref(node, path);
  if (node.IsScalar() && recipe.tokenizer_model->path.starts_with("model:")) {
    recipe.tokenizer_model->path = recipe.tokenizer_model->path.substr(6);
    if (recipe.tokenizer_model->path.empty()) {
      fail_at(r.where(), recipe.tokenizer_at, "{}: empty model path after 'model:'", path);
    }
  }
}

TokenSourceDef parse_token_source(const YamlReader& r, const YAML::Node& node,
                                  const std::string& path) {
  TokenSourceDef src;
  src.at = YamlReader::location(node);
  if (!node.IsMap() || !node["kind"]) {
    src.model = r.model_ref(node, path);
    return src;
  }
  const std::string kind = r.string(node["kind"], path + ".kind");
  auto items = r.entries(node, path);
  if (kind == "zero") {
    r.check_keys(items, {"kind"}, path);
    src.kind = TokenSourceDef::Kind::kZero;
    return src;
  }
  if (kind != "model_token") {
    fail_at(r.where(), YamlReader::location(node["kind"]),
            "{}.kind: '{}' is not a token source kind; use model_token or zero (or give a model "
            "path as the source)",
            path, kind);
  }
  r.check_keys(items, {"kind", "model", "token", "token_id"}, path);
  src.kind = TokenSourceDef::Kind::kModelToken;
  bool has_model = false;
  for (const auto& e : items) {
    if (e.key == "model") {
      src.model = r.model_ref(e.value, path + ".model");
      has_model = true;
    } else if (e.key == "token") {
      src.token = r.string(e.value, path + ".token");
    } else if (e.key == "token_id") {
      src.token_id = r.integer(e.value, path + ".token_id");
    }
  }
  if (!has_model) fail_at(r.where(), src.at, "{}: model_token needs 'model'", path);
  if (src.token.has_value() == src.token_id.has_value()) {
    fail_at(r.where(), src.at, "{}: model_token needs exactly one of 'token' and 'token_id'", path);
  }
  return src;
}

// tokenizer: {source: union | base | MODEL, pad_to_multiple_of: N, tokens: {TOKEN: {...}}}
void parse_tokenizer(const YamlReader& r, const YAML::Node& node, Recipe& recipe) {
  recipe.tokenizer = TokenizerChoice::kUnion;  // mergekit's default source
  recipe.tokenizer_at = YamlReader::location(node);
  auto items = r.entries(node, "tokenizer");
  r.check_keys(items, {"source", "pad_to_multiple_of", "tokens"}, "tokenizer");
  for (const auto& e : items) {
    if (e.value.IsNull()) continue;
    if (e.key == "source") {
      parse_tokenizer_choice(r, e.value, "tokenizer.source", recipe);
    } else if (e.key == "pad_to_multiple_of") {
      const int64_t n = r.integer(e.value, "tokenizer.pad_to_multiple_of");
      if (n <= 0) {
        fail_at(r.where(), YamlReader::location(e.value),
                "tokenizer.pad_to_multiple_of must be a positive integer, got {}", n);
      }
      recipe.pad_to_multiple_of = n;
    } else {
      for (const auto& t : r.entries(e.value, "tokenizer.tokens")) {
        const std::string p = "tokenizer.tokens." + t.key;
        TokenDef def;
        def.token = t.key;
        def.at = t.at;
        if (!t.value.IsNull()) {
          auto fields = r.entries(t.value, p);
          r.check_keys(fields, {"source", "force"}, p);
          for (const auto& f : fields) {
            if (f.key == "source" && !f.value.IsNull()) {
              def.source = parse_token_source(r, f.value, p + ".source");
            } else if (f.key == "force") {
              const YAML::Node& v = f.value;
              if (!v.IsScalar() || (v.Scalar() != "true" && v.Scalar() != "false")) {
                fail_at(r.where(), YamlReader::location(v), "{}.force must be true or false", p);
              }
              def.force = v.Scalar() == "true";
            }
          }
        }
        recipe.tokens.push_back(std::move(def));
      }
    }
  }
}

Recipe parse_document(const YamlReader& r, const YAML::Node& root, Recipe recipe) {
  auto items = r.entries(root, "the recipe");
  r.check_keys(items, kTopLevelKeys, "the recipe");
  bool has_method = false;
  for (const auto& e : items) {
    const YAML::Node& v = e.value;
    if (e.key == "merge_method") {
      recipe.merge_method = r.string(v, "merge_method");
      recipe.merge_method_at = YamlReader::location(v);
      has_method = true;
    } else if (e.key == "models") {
      if (v.IsNull()) continue;
      recipe.inputs_at = e.at;
      auto models = r.sequence(v, "models", "{model: ..., parameters: ...}");
      for (size_t i = 0; i < models.size(); ++i) {
        recipe.models.push_back(parse_model_def(r, models[i], fmt::format("models[{}]", i)));
      }
    } else if (e.key == "slices") {
      if (v.IsNull()) continue;
      recipe.inputs_at = e.at;
      auto slices = r.sequence(v, "slices", "{sources: [...]}");
      for (size_t i = 0; i < slices.size(); ++i) {
        recipe.slices.push_back(parse_slice(r, slices[i], fmt::format("slices[{}]", i)));
      }
    } else if (e.key == "base_model") {
      if (!v.IsNull()) recipe.base_model = r.model_ref(v, "base_model");
    } else if (e.key == "parameters") {
      recipe.parameters = r.parameters(v, "parameters");
    } else if (e.key == "dtype") {
      if (!v.IsNull()) recipe.dtype = parse_dtype(r, v, "dtype");
    } else if (e.key == "out_dtype") {
      if (!v.IsNull()) recipe.out_dtype = parse_dtype(r, v, "out_dtype");
    } else if (e.key == "tokenizer_source" || e.key == "tokenizer") {
      if (v.IsNull()) continue;
      if (recipe.tokenizer != TokenizerChoice::kDonor) {
        fail_at(r.where(), e.at,
                "give either 'tokenizer_source' or 'tokenizer', not both (tokenizer.source "
                "replaces tokenizer_source)");
      }
      if (e.key == "tokenizer") {
        parse_tokenizer(r, v, recipe);
      } else {
        parse_tokenizer_choice(r, v, "tokenizer_source", recipe);
      }
    } else if (e.key == "chat_template" || e.key == "modules") {
      if (v.IsNull()) continue;
      const char* instead = e.key == "chat_template"
                                ? "remove it: the donor's tokenizer files, chat template included, "
                                  "are copied as-is"
                                : "use models: or slices: for single-stack decoder models";
      fail_at(r.where(), e.at, "'{}' is not supported yet; {}", e.key, instead);
    }
    // `name` only labels a stage of a multi-stage recipe; a single recipe ignores it.
  }
  if (!has_method) {
    fail_at(r.where(), {}, "missing 'merge_method' (e.g. merge_method: linear)");
  }
  if (!recipe.models.empty() && !recipe.slices.empty()) {
    fail_at(r.where(), recipe.inputs_at,
            "give either 'models' (merge whole models) or 'slices' (layer ranges), not both");
  }
  if (recipe.models.empty() && recipe.slices.empty()) {
    fail_at(r.where(), {},
            "the recipe lists no models: add a non-empty 'models:' or 'slices:' list");
  }
  return recipe;
}

}  // namespace

Recipe parse_recipe(const std::string& yaml_text, const std::string& where) {
  YamlReader reader(where);
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml_text);
  } catch (const YAML::Exception& e) {
    fail_at(where, {e.mark.line + 1, e.mark.column + 1}, "malformed YAML: {}", e.msg);
  }
  std::vector<YAML::Node> present;
  for (const auto& d : documents) {
    if (!d.IsNull()) present.push_back(d);
  }
  if (present.empty()) fail_at(where, {}, "empty recipe");
  if (present.size() > 1) {
    fail_at(where, YamlReader::location(present[1]),
            "multi-stage recipes (several YAML documents separated by ---) are not supported yet; "
            "run each stage as its own recipe");
  }
  Recipe recipe;
  recipe.where = where;
  recipe.text = yaml_text;
  return parse_document(reader, present[0], std::move(recipe));
}

}  // namespace amalgam::recipe
