// YAML recipe text -> Recipe: mergekit's MergeConfiguration schema, checked key by key.
#include "core/log.h"
#include "recipe/schema.h"
#include "recipe/yaml_reader.h"

namespace amalgam::recipe {

namespace {

const std::vector<std::string> kTopLevelKeys = {
    "merge_method", "models",           "slices",    "base_model",    "parameters", "dtype",
    "out_dtype",    "tokenizer_source", "tokenizer", "chat_template", "modules",    "name"};

tensor::DType parse_dtype(const YamlReader& r, const yaml::Node& node, const std::string& key) {
  const std::string text = r.string(node, key);
  auto dtype = tensor::parse_torch_dtype(text);
  if (!dtype || !tensor::is_float_dtype(*dtype)) {
    fail_at(r.where(), YamlReader::location(node),
            "{}: '{}' is not a merge dtype; use bfloat16, float16 or float32", key, text);
  }
  return *dtype;
}

ModelDef parse_model_def(const YamlReader& r, const yaml::Node& node, const std::string& path) {
  ModelDef def;
  def.at = YamlReader::location(node);
  if (node.is_scalar()) {  // shorthand: a bare path
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

SourceDef parse_source(const YamlReader& r, const yaml::Node& node, const std::string& path) {
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

SliceDef parse_slice(const YamlReader& r, const yaml::Node& node, const std::string& path) {
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
      if (!e.value.is_null()) slice.base_model = r.model_ref(e.value, path + ".base_model");
    } else if (e.key == "parameters") {
      slice.parameters = r.parameters(e.value, path + ".parameters");
    } else if (!e.value.is_null()) {
      core::warn("{}{}.residual_weight is ignored (mergekit ignores it too)",
                 prefix(r.where(), e.at), path);
    }
  }
  if (!has_sources) fail_at(r.where(), slice.at, "{}: a slice needs at least one source", path);
  return slice;
}

// `models:` or `slices:` (under `path`) into the recipe's inputs.
void parse_inputs(const YamlReader& r, const YamlReader::Entry& e, const std::string& path,
                  Recipe& recipe) {
  recipe.inputs_at = e.at;
  if (e.key == "models") {
    auto models = r.sequence(e.value, path, "{model: ..., parameters: ...}");
    for (size_t i = 0; i < models.size(); ++i) {
      recipe.models.push_back(parse_model_def(r, models[i], fmt::format("{}[{}]", path, i)));
    }
  } else {
    auto slices = r.sequence(e.value, path, "{sources: [...]}");
    for (size_t i = 0; i < slices.size(); ++i) {
      recipe.slices.push_back(parse_slice(r, slices[i], fmt::format("{}[{}]", path, i)));
    }
  }
}

// mergekit's form for architectures with several modules (VLMs, encoder-decoders):
// modules: {NAME: {models|slices, parameters}}. Single-stack decoders have one module,
// `default`, which means the same as top-level models:/slices:. Returns its parameters.
ParamMap parse_modules(const YamlReader& r, const YamlReader::Entry& modules, Recipe& recipe) {
  auto items = r.entries(modules.value, "modules");
  if (items.empty()) {
    fail_at(r.where(), modules.at, "modules: is empty; give modules: {{default: {{slices: ...}}}}");
  }
  for (const auto& m : items) {
    if (m.key != "default") {
      fail_at(r.where(), m.at,
              "modules: module '{}' is not supported{}; amalgam merges single-stack decoder "
              "models, whose one module is 'default' (modules: {{default: {{slices: [...]}}}} "
              "means the same as top-level slices:); multi-module architectures (vision-language, "
              "encoder-decoder) are not supported yet",
              m.key, did_you_mean(m.key, {"default"}));
    }
  }
  const std::string path = "modules.default";
  auto entries = r.entries(items[0].value, path);
  r.check_keys(entries, {"models", "slices", "parameters"}, path);
  ParamMap parameters;
  for (const auto& e : entries) {
    if (e.value.is_null()) continue;
    if (e.key == "parameters") {
      parameters = r.parameters(e.value, path + ".parameters");
    } else {
      parse_inputs(r, e, path + "." + e.key, recipe);
    }
  }
  return parameters;
}

// Module parameters rank between slice and top-level parameters. A setting is a first-match list
// of conditions, so the module's conditions followed by the top level's give exactly that
// precedence, including the fall-through when no module filter matches.
void add_module_parameters(ParamMap module, ParamMap& top) {
  for (auto& [key, setting] : module) {
    auto it = top.find(key);
    if (it != top.end()) {
      setting.conditions.insert(setting.conditions.end(), it->second.conditions.begin(),
                                it->second.conditions.end());
      it->second = std::move(setting);
    } else {
      top.emplace(key, std::move(setting));
    }
  }
}

// union | base | a model ref; "model:PATH" is the older mergekit spelling of a model ref.
void parse_tokenizer_choice(const YamlReader& r, const yaml::Node& node, const std::string& path,
                            Recipe& recipe) {
  recipe.tokenizer_at = YamlReader::location(node);
  if (node.is_scalar() && node.scalar() == "union") {
    recipe.tokenizer = TokenizerChoice::kUnion;
    return;
  }
  if (node.is_scalar() && node.scalar() == "base") {
    recipe.tokenizer = TokenizerChoice::kBase;
    return;
  }
  recipe.tokenizer = TokenizerChoice::kModel;
  recipe.tokenizer_model = r.model_ref(node, path);
  if (node.is_scalar() && recipe.tokenizer_model->path.starts_with("model:")) {
    recipe.tokenizer_model->path = recipe.tokenizer_model->path.substr(6);
    if (recipe.tokenizer_model->path.empty()) {
      fail_at(r.where(), recipe.tokenizer_at, "{}: empty model path after 'model:'", path);
    }
  }
}

TokenSourceDef parse_token_source(const YamlReader& r, const yaml::Node& node,
                                  const std::string& path) {
  TokenSourceDef src;
  src.at = YamlReader::location(node);
  if (!node.is_map() || !node["kind"]) {
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
void parse_tokenizer(const YamlReader& r, const yaml::Node& node, Recipe& recipe) {
  recipe.tokenizer = TokenizerChoice::kUnion;  // mergekit's default source
  recipe.tokenizer_at = YamlReader::location(node);
  auto items = r.entries(node, "tokenizer");
  r.check_keys(items, {"source", "pad_to_multiple_of", "tokens"}, "tokenizer");
  for (const auto& e : items) {
    if (e.value.is_null()) continue;
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
        if (!t.value.is_null()) {
          auto fields = r.entries(t.value, p);
          r.check_keys(fields, {"source", "force"}, p);
          for (const auto& f : fields) {
            if (f.key == "source" && !f.value.is_null()) {
              def.source = parse_token_source(r, f.value, p + ".source");
            } else if (f.key == "force") {
              const yaml::Node& v = f.value;
              if (!v.is_scalar() || (v.scalar() != "true" && v.scalar() != "false")) {
                fail_at(r.where(), YamlReader::location(v), "{}.force must be true or false", p);
              }
              def.force = v.scalar() == "true";
            }
          }
        }
        recipe.tokens.push_back(std::move(def));
      }
    }
  }
}

Recipe parse_document(const YamlReader& r, const yaml::Node& root, Recipe recipe) {
  auto items = r.entries(root, "the recipe");
  r.check_keys(items, kTopLevelKeys, "the recipe");
  bool has_method = false;
  Location top_level_inputs, modules_at;
  ParamMap module_parameters;
  for (const auto& e : items) {
    const yaml::Node& v = e.value;
    if (e.key == "merge_method") {
      recipe.merge_method = r.string(v, "merge_method");
      recipe.merge_method_at = YamlReader::location(v);
      has_method = true;
    } else if (e.key == "models" || e.key == "slices") {
      if (v.is_null()) continue;
      parse_inputs(r, e, e.key, recipe);
      top_level_inputs = e.at;
    } else if (e.key == "modules") {
      if (v.is_null()) continue;
      module_parameters = parse_modules(r, e, recipe);
      modules_at = e.at;
    } else if (e.key == "name") {
      if (v.is_null()) continue;
      recipe.name = r.string(v, "name");
      recipe.name_at = YamlReader::location(v);
    } else if (e.key == "base_model") {
      if (!v.is_null()) recipe.base_model = r.model_ref(v, "base_model");
    } else if (e.key == "parameters") {
      recipe.parameters = r.parameters(v, "parameters");
    } else if (e.key == "dtype") {
      if (!v.is_null()) recipe.dtype = parse_dtype(r, v, "dtype");
    } else if (e.key == "out_dtype") {
      if (!v.is_null()) recipe.out_dtype = parse_dtype(r, v, "out_dtype");
    } else if (e.key == "tokenizer_source" || e.key == "tokenizer") {
      if (v.is_null()) continue;
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
    } else if (e.key == "chat_template") {
      if (v.is_null()) continue;
      const char* instead =
          "remove it: the donor's tokenizer files, chat template included, are copied as-is";
      fail_at(r.where(), e.at, "'{}' is not supported yet; {}", e.key, instead);
    }
  }
  if (modules_at.line > 0 && top_level_inputs.line > 0) {
    fail_at(r.where(), top_level_inputs,
            "give the models either at the top level or under 'modules: {{default: ...}}' (line "
            "{}), not both",
            modules_at.line);
  }
  add_module_parameters(std::move(module_parameters), recipe.parameters);
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

struct Document {
  yaml::Node root;
  std::string text;
};

// True for a line that starts a YAML document ("---", alone or followed by a space or comment).
bool is_document_start(std::string_view line) {
  return line.starts_with("---") && (line.size() == 3 || line[3] == ' ' || line[3] == '\t' ||
                                     line[3] == '\r' || line[3] == '#');
}

// The non-empty documents of the text, each with the lines from its "---" to the next one.
std::vector<Document> load_documents(const std::string& yaml_text, const std::string& where) {
  const std::vector<yaml::Node> nodes = yaml::load_all(yaml_text, where);
  std::vector<size_t> starts = {0};  // byte offsets of the lines that start documents
  std::vector<int> start_lines = {0};
  int line = 0;
  for (size_t pos = 0; pos < yaml_text.size(); ++line) {
    size_t end = yaml_text.find('\n', pos);
    if (end == std::string::npos) end = yaml_text.size();
    if (pos > 0 && is_document_start(std::string_view(yaml_text).substr(pos, end - pos))) {
      starts.push_back(pos);
      start_lines.push_back(line);
    }
    pos = end + 1;
  }
  std::vector<Document> out;
  for (const auto& node : nodes) {
    if (node.is_null()) continue;
    const int node_line = std::max(0, node.line() - 1);
    size_t k = 0;
    while (k + 1 < start_lines.size() && start_lines[k + 1] <= node_line) ++k;
    const size_t end = k + 1 < starts.size() ? starts[k + 1] : yaml_text.size();
    out.push_back(Document{node, yaml_text.substr(starts[k], end - starts[k])});
  }
  return out;
}

}  // namespace

Recipe parse_recipe(const std::string& yaml_text, const std::string& where) {
  YamlReader reader(where);
  std::vector<Document> documents = load_documents(yaml_text, where);
  if (documents.empty()) fail_at(where, {}, "empty recipe");
  if (documents.size() > 1) {
    fail_at(where, YamlReader::location(documents[1].root),
            "multi-stage recipes (several YAML documents separated by ---) run only with "
            "'amalgam merge', which writes each stage; here, give one stage's recipe");
  }
  Recipe recipe;
  recipe.where = where;
  recipe.text = yaml_text;
  return parse_document(reader, documents[0].root, std::move(recipe));
}

std::vector<Recipe> parse_recipe_documents(const std::string& yaml_text, const std::string& where) {
  YamlReader reader(where);
  std::vector<Recipe> out;
  for (auto& d : load_documents(yaml_text, where)) {
    Recipe recipe;
    recipe.where = where;
    recipe.text = std::move(d.text);
    out.push_back(parse_document(reader, d.root, std::move(recipe)));
  }
  if (out.empty()) fail_at(where, {}, "empty recipe");
  return out;
}

}  // namespace amalgam::recipe
